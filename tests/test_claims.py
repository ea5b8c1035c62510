"""Pairing by row id, comparisons from the config, the comparisons / summary / claims tables, and
the config check of `compare` and `claims`, on hand-made metrics.json files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ctsft.errors import CtsftError
from ctsft.report.claims import ROLES, claim_rows
from ctsft.report.compare import Comparisons, resolve
from ctsft.report.pairing import align
from ctsft.report.records import read_records
from ctsft.report.tables import build_tables

REPO = Path(__file__).resolve().parents[1]
N = 400
LABELS = ["negative", "neutral", "positive"]
GOLD = [i % 3 for i in range(N)]
IDS = [f"row{i:03d}" for i in range(N)]
ROLES_DEFAULT = {
    "method": "ctsft", "full_ft": "full_ft", "near_zero": "near_zero", "zero_shot": "zero_shot",
    "sparse_random": "sparse_random", "random_heads": "random_heads",
}  # fmt: skip


def outcomes(accuracy: float, seed: int) -> np.ndarray:
    """0/1 per row, exactly `accuracy * N` ones in a shuffled order."""
    out = np.zeros(N, dtype=int)
    out[np.random.default_rng(seed).permutation(N)[: int(round(accuracy * N))]] = 1
    return out


def preds_of(right: np.ndarray, gold=GOLD) -> list[int]:
    return [g if r else (g + 1) % 3 for g, r in zip(gold, right, strict=True)]


def write_run(
    root: Path,
    target: str,
    variant: str,
    seed: int,
    right: np.ndarray,
    *,
    k: str | None = None,
    proxy_right: np.ndarray | None = None,
    order: np.ndarray | None = None,
    ids: list[str] | None = IDS,
    task: str = "nusax",
    proxy: str = "ind",
    pct: float = 0.3,
    pct_trainable: float | None = 1.7,
) -> Path:
    """A metrics.json as the evaluate step writes it; `order` stores the rows permuted."""
    before = outcomes(0.8, 999)
    proxy_right = before if proxy_right is None else proxy_right
    preds, gold, row_ids = preds_of(right), list(GOLD), list(ids) if ids is not None else None
    if order is not None:
        preds, gold = [preds[i] for i in order], [gold[i] for i in order]
        row_ids = [row_ids[i] for i in order] if row_ids is not None else None
    folder = f"{variant}/k{k}" if k else variant
    path = root / task / "m" / f"{proxy}-{target}" / folder / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "grid": {"task": task, "model": "m", "proxy": proxy, "target": target,
                 "variant": variant, "k": k, "seed": seed},
        "accuracy": float(np.mean(right)), "macro_f1": float(np.mean(right)) - 0.01,
        "labels": LABELS, "proxy_accuracy": float(np.mean(proxy_right)),
        "baseline_proxy_accuracy": float(np.mean(before)),
        "forgetting": float(np.mean(proxy_right) - np.mean(before)),
        "params_updated": 3, "params_total": 1000, "params_updated_pct": pct,
        "predictions": preds, "gold": gold,
        "proxy_predictions": preds_of(proxy_right), "proxy_gold": list(GOLD),
        "baseline_proxy_predictions": preds_of(before),
    }  # fmt: skip
    if row_ids is not None:
        record["test_ids"] = row_ids
    if pct_trainable is not None:
        record.update(params_trainable_total=180, params_updated_pct_trainable=pct_trainable)
    path.write_text(json.dumps(record))
    return path


def flip(right: np.ndarray, points: float, seed: int, up: bool = True) -> np.ndarray:
    """`right` with `points` (fraction of N) rows turned wrong -> right (or right -> wrong)."""
    out = right.copy()
    pool = np.flatnonzero(out == (0 if up else 1))
    out[np.random.default_rng(seed).permutation(pool)[: int(round(points * N))]] = 1 if up else 0
    return out


# ---------------------------------------------------------------- pairing
def test_runs_are_paired_by_row_id_whatever_the_order(tmp_path: Path) -> None:
    right = outcomes(0.7, 1)
    shuffled = np.random.default_rng(5).permutation(N)
    paths = [
        write_run(tmp_path, "jav", "full_ft", 0, right),
        write_run(tmp_path, "jav", "ctsft", 0, right, k="0.05", order=shuffled),
    ]
    records = read_records(paths)
    a, b = align([records[records.method == "ctsft"], records[records.method == "full_ft"]])
    assert a.ids == b.ids == tuple(sorted(IDS)) and np.array_equal(a.preds, b.preds)
    # the same predictions row by row: no difference in any resample
    (pair,) = resolve(records, {"ctsft": ["full_ft"]})
    test, samples = Comparisons(records).target("nusax", "ind", "jav", pair)
    assert test["difference"] == 0 and test["ci_lo"] == test["ci_hi"] == 0
    assert test["p_value"] == 1.0 and np.all(samples == 0)


def test_equal_gold_labels_do_not_make_the_same_rows(tmp_path: Path) -> None:
    """Runs whose gold lists are equal but whose ids differ share no row: no paired test; runs
    of another row set are paired on the rows they share."""
    right = outcomes(0.7, 1)
    other_ids = [f"other{i}" for i in range(N)]
    a = write_run(tmp_path, "jav", "full_ft", 0, right)
    b = write_run(tmp_path, "jav", "ctsft", 0, right, k="0.05", ids=other_ids)
    records = read_records([a, b])
    assert align([records.iloc[[0]], records.iloc[[1]]]) is None
    half = IDS[:200] + other_ids[200:]
    c = write_run(tmp_path, "sun", "full_ft", 0, right)
    d = write_run(tmp_path, "sun", "ctsft", 0, right, k="0.05", ids=half)
    records = read_records([c, d])
    x, y = align([records.iloc[[0]], records.iloc[[1]]])
    assert len(x.ids) == 200 and np.array_equal(x.preds, y.preds)


def test_records_without_ids_pair_by_position_only_on_equal_gold(tmp_path: Path) -> None:
    right = outcomes(0.7, 1)
    a = write_run(tmp_path, "jav", "full_ft", 0, right, ids=None)
    b = write_run(tmp_path, "jav", "ctsft", 0, right, k="0.05", ids=None)
    records = read_records([a, b])
    x, y = align([records.iloc[[0]], records.iloc[[1]]])
    assert x.ids == tuple(range(N)) and np.array_equal(x.preds, y.preds)
    c = write_run(tmp_path, "sun", "ctsft", 0, right, k="0.05", ids=None, order=np.arange(N)[::-1])  # fmt: skip
    records = read_records([a, c])
    assert align([records.iloc[[0]], records.iloc[[1]]]) is None


def test_one_row_id_with_two_gold_labels_is_an_error(tmp_path: Path) -> None:
    right = outcomes(0.7, 1)
    a = write_run(tmp_path, "jav", "full_ft", 0, right)
    b = write_run(tmp_path, "jav", "ctsft", 0, right, k="0.05")
    record = json.loads(b.read_text())
    record["gold"][0] = (record["gold"][0] + 1) % 3
    b.write_text(json.dumps(record))
    records = read_records([a, b])
    with pytest.raises(CtsftError, match="test row row000 different gold labels"):
        align([records.iloc[[0]], records.iloc[[1]]])


# ---------------------------------------------------------------- comparisons from the config
def _pair_grid(root: Path, variant: str, seeds=(0, 1), targets=("jav", "sun")) -> list[Path]:
    """`variant` (k 0.05) 15 points above full_ft on every target and seed."""
    paths = []
    for t, target in enumerate(targets):
        for seed in seeds:
            base = outcomes(0.55, 10 * t + seed)
            paths.append(write_run(root, target, "full_ft", seed, base, pct=18.4, pct_trainable=100.0))  # fmt: skip
            paths.append(write_run(root, target, variant, seed, flip(base, 0.15, seed), k="0.05"))
    return paths


def test_compare_from_the_config_marks_a_renamed_variant(tmp_path: Path) -> None:
    paths = _pair_grid(tmp_path, "ctsft_frozen_kv")
    build_tables(paths, tmp_path / "t", compare={"ctsft_frozen_kv": ["full_ft"]})
    t1 = pd.read_csv(tmp_path / "t/table1_nusax.csv")
    mine = t1[t1.method == "ctsft_frozen_kv"]
    assert (mine.p_holm_vs_full_ft < 0.05).all() and mine.p_vs_full_ft.notna().all()
    md = (tmp_path / "t/table1_nusax.md").read_text()
    assert md.count("†") == 1 + 2  # the caption's legend and the two targets' cells
    assert "a cell of ctsft_frozen_kv that differs from full_ft" in md
    assert "over the 2 tests of this table" in md
    comparisons = pd.read_csv(tmp_path / "t/comparisons.csv")
    row = comparisons.iloc[0]
    assert (row.method, row.rival, row.n_targets, row.n_positive) == ("ctsft_frozen_kv", "full_ft", 2, 2)  # fmt: skip
    assert row.difference == pytest.approx(0.15) and 0 < row.ci_lo < 0.15 < row.ci_hi
    # no compare: no marks, no comparisons table
    build_tables(paths, tmp_path / "none")
    assert "†" not in (tmp_path / "none/table1_nusax.md").read_text().split("\n", 1)[1]
    assert not (tmp_path / "none/comparisons.csv").exists()


def test_marks_use_holm_adjusted_p_values(tmp_path: Path) -> None:
    """Three targets, each a difference of unadjusted p about 0.03: Holm over the three tests
    of the table leaves none below 0.05, so no cell is marked."""
    paths = []
    for t, target in enumerate(["jav", "sun", "bug"]):
        base = outcomes(0.5, t)
        better = base.copy()
        rng = np.random.default_rng(100 + t)
        wrong, right = np.flatnonzero(base == 0), np.flatnonzero(base == 1)
        better[rng.permutation(wrong)[:61]] = 1  # 61 rows gained, 39 lost: +5.5 points
        better[rng.permutation(right)[:39]] = 0
        paths.append(write_run(tmp_path, target, "full_ft", 0, base))
        paths.append(write_run(tmp_path, target, "ctsft", 0, better, k="0.05"))
    build_tables(paths, tmp_path / "t", compare={"ctsft": ["full_ft"]})
    ct = pd.read_csv(tmp_path / "t/table1_nusax.csv").query("method == 'ctsft'")
    assert (ct.p_vs_full_ft < 0.05).all()
    assert (ct.p_holm_vs_full_ft >= 0.05).all()
    assert ct.p_holm_vs_full_ft.max() == pytest.approx(min(1, 3 * ct.p_vs_full_ft.min()), rel=0.5)  # fmt: skip
    body = (tmp_path / "t/table1_nusax.md").read_text().split("\n", 1)[1]
    assert "†" not in body


def test_a_circuit_size_meets_the_rival_of_the_same_size(tmp_path: Path) -> None:
    base = outcomes(0.5, 0)
    paths = [
        write_run(tmp_path, "jav", "full_ft", 0, base),
        write_run(tmp_path, "jav", "ctsft", 0, flip(base, 0.1, 1), k="0.05"),
        write_run(tmp_path, "jav", "ctsft", 0, flip(base, 0.1, 2), k="10"),
        write_run(tmp_path, "jav", "near_zero", 0, base, k="0.05"),
        write_run(tmp_path, "jav", "near_zero", 0, base, k="10"),
    ]
    pairs = resolve(read_records(paths), {"ctsft": ["full_ft", "near_zero", "not_run_here"]})
    assert [(p.method, p.rival) for p in pairs] == [
        ("ctsft (k=0.05)", "full_ft"),
        ("ctsft (k=0.05)", "near_zero (k=0.05)"),
        ("ctsft (k=10)", "full_ft"),
        ("ctsft (k=10)", "near_zero (k=10)"),
    ]


# ---------------------------------------------------------------- summary and claims
def _claims_grid(root: Path) -> list[Path]:
    """Four targets x two seeds: ctsft 10 points above full_ft, sparse_random 10 points above
    ctsft, random_heads equal to ctsft on other rows; full_ft forgets (proxy -15 points),
    ctsft does not; near_zero's gap to ctsft grows as the zero-shot accuracy falls."""
    paths = []
    before = outcomes(0.8, 999)
    forgot = flip(before, 0.15, 7, up=False)
    zero_shot = {"jav": 0.70, "sun": 0.62, "bug": 0.45, "mad": 0.55}
    gap = {"jav": -0.04, "sun": 0.0, "bug": 0.10, "mad": 0.05}  # ctsft - near_zero
    for t, target in enumerate(zero_shot):
        paths.append(write_run(root, target, "zero_shot", 0, outcomes(zero_shot[target], 50 + t)))  # fmt: skip
        for seed in (0, 1):
            ft = outcomes(0.5, 10 * t + seed)
            ct = flip(ft, 0.10, seed)
            paths.append(write_run(root, target, "full_ft", seed, ft, proxy_right=forgot))
            paths.append(write_run(root, target, "ctsft", seed, ct, k="0.05"))
            paths.append(write_run(root, target, "sparse_random", seed, flip(ct, 0.10, 3), k="0.05"))  # fmt: skip
            paths.append(
                write_run(
                    root,
                    target,
                    "random_heads",
                    seed,
                    outcomes(ct.mean(), 70 + 10 * t + seed),
                    k="0.05",
                )  # fmt: skip
            )
            nz = flip(ct, gap[target], 5, up=False) if gap[target] > 0 else flip(ct, -gap[target], 5)  # fmt: skip
            paths.append(write_run(root, target, "near_zero", seed, nz, k="0.05"))
    return paths


def test_claims_verdicts_follow_the_rule(tmp_path: Path) -> None:
    paths = _claims_grid(tmp_path)
    written = build_tables(
        paths, tmp_path / "t", compare={"ctsft": ["full_ft", "near_zero"]}, claims=ROLES_DEFAULT
    )
    assert {"comparisons", "summary", "claims"} <= set(written)
    claims = pd.read_csv(tmp_path / "t/claims.csv").set_index("claim")
    assert claims.loc["beats_full_ft", "verdict"] == "supported"
    assert claims.loc["beats_full_ft", "estimate"] == pytest.approx(0.10)
    assert claims.loc["forgets_less", "verdict"] == "supported"
    assert claims.loc["forgets_less", "estimate"] == pytest.approx(0.15)
    assert claims.loc["beats_sparse_random", "verdict"] == "contradicted"
    assert claims.loc["beats_random_heads", "verdict"] == "inconclusive"
    rho = claims.loc["harder_favours_circuit"]
    assert rho.estimate == pytest.approx(-1.0) and rho.n_targets == 4
    assert rho.p_value == pytest.approx(2 / 24, abs=0.01)  # 2 of the 4! orders reach |rho| = 1
    md = (tmp_path / "t/claims.md").read_text()
    assert "| ctsft beats continued full fine-tuning (full_ft) on target accuracy | supported |" in md  # fmt: skip
    assert "ρ = −1.00 [" in md
    tex = (tmp_path / "t/claims.tex").read_text()
    assert r"\begin{tabular}{p{5cm}lrrrp{6cm}}" in tex and r"$\rho$ = $-$1.00 [" in tex

    summary = pd.read_csv(tmp_path / "t/summary.csv").set_index("method")
    assert list(summary.index) == ["zero_shot", "full_ft", "ctsft", "near_zero", "random_heads", "sparse_random"]  # fmt: skip
    assert summary.loc["full_ft", "difference"] == pytest.approx(-0.10)
    assert summary.loc["full_ft", "wins"] == 0 and summary.loc["sparse_random", "wins"] == 4
    assert summary.loc["full_ft", "forgetting_mean"] == pytest.approx(-0.15)
    assert summary.loc["ctsft", "pct_params_updated_trainable_mean"] == pytest.approx(1.7)
    assert "| ctsft | 4 × 2 |" in (tmp_path / "t/summary.md").read_text()


def test_a_claim_whose_method_did_not_run_is_not_run(tmp_path: Path) -> None:
    paths = [p for p in _claims_grid(tmp_path) if "/sparse_random/" not in str(p)]
    records = read_records(paths)
    rows = claim_rows(Comparisons(records), {**ROLES_DEFAULT, "random_heads": None}).set_index("claim")  # fmt: skip
    assert rows.loc["beats_sparse_random", "verdict"] == "not run"
    assert "sparse_random did not run" in rows.loc["beats_sparse_random", "note"]
    assert rows.loc["beats_random_heads", "verdict"] == "not run"
    assert rows.loc["beats_full_ft", "verdict"] == "supported"


def test_the_tables_do_not_depend_on_the_order_of_the_files(tmp_path: Path) -> None:
    paths = _claims_grid(tmp_path)
    settings = {"compare": {"ctsft": ["full_ft", "near_zero"]}, "claims": ROLES_DEFAULT}
    a = build_tables(paths, tmp_path / "a", **settings)
    b = build_tables(list(reversed(paths)), tmp_path / "b", **settings)
    for name, files in a.items():
        for x, y in zip(files, b[name], strict=True):
            assert x.read_text() == y.read_text(), x.name


def test_both_denominators_of_the_parameters_updated(tmp_path: Path) -> None:
    base = outcomes(0.5, 0)
    paths = [
        write_run(tmp_path, "jav", "ctsft", 0, base, k="0.05", pct=0.31, pct_trainable=1.68),
        write_run(tmp_path, "jav", "full_ft", 0, base, pct=18.4, pct_trainable=None),  # older file
    ]
    build_tables(paths, tmp_path / "t")
    md = (tmp_path / "t/table1_nusax.md").read_text()
    assert "| % params updated (of all weights) | 18.40 | 0.31 |" in md
    assert "| % params updated (of trainable weights) | – | 1.68 |" in md
    assert "of the weights a method could train" in md


# ---------------------------------------------------------------- the config
def _config(**changes) -> dict:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config.update(changes)
    return config


def test_the_config_check_rejects_an_unknown_name_in_compare_or_claims() -> None:
    from snakemake.exceptions import WorkflowError

    from ctsft.workflow_config import check_config

    check_config(_config())
    # a method of config/hydra/method this config does not run is skipped, not an error
    check_config(_config(compare={"ctsft": ["norms_only"]}))
    with pytest.raises(WorkflowError, match="compare.ctsft names 'ful_ft', which is no method"):
        check_config(_config(compare={"ctsft": ["ful_ft"]}))
    with pytest.raises(WorkflowError, match="claims.full_ft names 'fullft'"):
        check_config(_config(claims={**ROLES_DEFAULT, "full_ft": "fullft"}))
    check_config(_config(claims={**ROLES_DEFAULT, "random_heads": None}))


def test_the_schema_lists_the_claims_roles() -> None:
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]["claims"]["properties"]) == set(ROLES)
    defaults = yaml.safe_load((REPO / "config/config.yaml").read_text())
    assert set(defaults["claims"]) == set(ROLES)
