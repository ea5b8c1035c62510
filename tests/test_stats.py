"""Bootstrap intervals and paired tests (ctsft.report.stats), and the tables that show them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctsft.report.stats import accuracy_interval, macro_f1_interval, paired_difference
from ctsft.report.tables import build_tables

N = 400
GOLD = [i % 3 for i in range(N)]


def predictions(accuracy: float, seed: int) -> list[int]:
    """Predictions right on the first `accuracy * N` rows of a shuffled order, wrong elsewhere."""
    rng = np.random.default_rng(seed)
    right = set(rng.permutation(N)[: int(round(accuracy * N))].tolist())
    return [g if i in right else (g + 1) % 3 for i, g in enumerate(GOLD)]


def test_accuracy_interval_is_the_binomial_width_around_the_accuracy() -> None:
    lo, hi = accuracy_interval([predictions(0.7, 0)], GOLD)
    assert lo < 0.7 < hi
    se = (0.7 * 0.3 / N) ** 0.5  # normal approximation: half-width 1.96 se = 4.5 points
    assert (hi - lo) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert accuracy_interval([predictions(0.7, 0)], GOLD) == (lo, hi)  # seeded


def test_seed_spread_widens_the_interval() -> None:
    same = accuracy_interval([predictions(0.7, 0)] * 4, GOLD)
    spread = accuracy_interval(
        [predictions(a, s) for s, a in enumerate((0.6, 0.8, 0.6, 0.8))], GOLD
    )
    assert (spread[1] - spread[0]) > 1.5 * (same[1] - same[0])


def test_macro_f1_interval_contains_the_macro_f1() -> None:
    preds = predictions(0.7, 1)
    p, g = np.array(preds), np.array(GOLD)
    f1 = np.mean(
        [2 * np.sum((p == c) & (g == c)) / (np.sum(p == c) + np.sum(g == c)) for c in range(3)]
    )
    lo, hi = macro_f1_interval([preds], GOLD, 3, n_boot=500)
    assert lo < f1 < hi and hi - lo < 0.15


def test_paired_test_sees_a_small_difference_on_the_same_rows() -> None:
    base = predictions(0.70, 2)
    better = list(base)
    wrong = [i for i in range(N) if base[i] != GOLD[i]]
    for i in wrong[:24]:  # 6 points better on the same rows, nothing worse
        better[i] = GOLD[i]
    diff = paired_difference([better], [base], GOLD)
    assert diff["difference"] == pytest.approx(0.06)
    assert diff["p_value"] < 0.01 and diff["ci_lo"] > 0
    # unpaired, the two 95% intervals overlap: the pairing is what detects it
    a, b = accuracy_interval([better], GOLD), accuracy_interval([base], GOLD)
    assert a[0] < b[1]
    same = paired_difference([base], [base], GOLD)
    assert same["difference"] == 0 and same["p_value"] == 1.0


def _write(root: Path, variant: str, acc: float, seed: int) -> Path:
    path = root / f"nusax/m/ind-jav/{variant}/seed0/metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    preds = predictions(acc, seed)
    before = predictions(0.80, 99)
    after = before if variant == "ctsft/k0.05" else predictions(0.60, seed + 50)
    path.write_text(
        json.dumps(
            {
                "accuracy": float(np.mean(np.array(preds) == GOLD)), "macro_f1": acc - 0.02,
                "proxy_accuracy": float(np.mean(np.array(after) == GOLD)),
                "baseline_proxy_accuracy": 0.80, "method": variant.split("/")[0], "seed": 0,
                "labels": ["negative", "neutral", "positive"], "predictions": preds, "gold": GOLD,
                "proxy_predictions": after, "proxy_gold": GOLD, "baseline_proxy_predictions": before,
                "forgetting": float(np.mean(np.array(after) == GOLD)) - 0.80,
            }
        )
    )  # fmt: skip
    return path


def test_tables_show_intervals_and_mark_significant_ctsft_cells(tmp_path: Path) -> None:
    paths = [
        _write(tmp_path, "full_ft", 0.60, 0),
        _write(tmp_path, "ctsft/k0.05", 0.75, 1),
        _write(tmp_path, "near_zero/k0.05", 0.745, 1),  # nearly the same predictions as ctsft
    ]
    build_tables(paths, tmp_path / "tables")
    t1 = pd.read_csv(tmp_path / "tables/table1_nusax.csv")
    ct = t1[t1.method == "ctsft"].iloc[0]
    assert ct.accuracy_ci_lo < ct.accuracy_mean < ct.accuracy_ci_hi
    assert ct.p_vs_full_ft < 0.001 and ct.p_vs_near_zero > 0.05
    md = (tmp_path / "tables/table1_nusax.md").read_text()
    assert "75.0† [" in md and "‡" not in md.split("\n", 1)[1]
    t3 = pd.read_csv(tmp_path / "tables/table3_forgetting.csv")
    ct3 = t3[t3.method == "ctsft"].iloc[0]
    assert ct3.change_ci_lo == 0 == ct3.change_ci_hi  # same predictions as theta_1: no change
    ft3 = t3[t3.method == "full_ft"].iloc[0]
    assert ft3.change_ci_hi < 0 < ft3.proxy_accuracy_before  # forgotten, and significantly so
