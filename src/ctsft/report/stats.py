"""Uncertainty of the table cells: bootstrap intervals and paired tests on the same test rows.

Every method of a pair is evaluated on the same test rows (`ctsft.evaluate.EVAL_SEED`), so the
rows are the unit of resampling; with several seeds (or, in Table 3, several runs) the runs are
resampled too (a two-level bootstrap: runs, then rows), so an interval covers both the test-set
noise and the seed-to-seed spread. A comparison of two methods resamples the *same* rows for both
(paired), which is much sharper than comparing two intervals. numpy only, seeded: the same
metrics files always give the same intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ctsft.errors import CtsftError

N_BOOT = 2000
LEVEL = 0.95
SEED = 0


def _rows_and_runs(n_runs: int, n_rows: int, n_boot: int, rng: np.random.Generator):
    runs = rng.integers(0, n_runs, size=(n_boot, n_runs))
    rows = rng.integers(0, n_rows, size=(n_boot, n_rows))
    return runs, rows


def _accuracy_samples(correct: np.ndarray, runs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Mean accuracy of each bootstrap sample: `correct` `[runs, rows]` (0/1)."""
    per_run = np.stack([correct[:, r].mean(axis=1) for r in rows])  # [B, runs]
    return np.take_along_axis(per_run, runs, axis=1).mean(axis=1)


def _macro_f1_samples(
    preds: np.ndarray, gold: np.ndarray, n_labels: int, runs: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Mean macro-F1 of each bootstrap sample (absent labels count as 0, as in the tables)."""
    out = np.empty(len(rows))
    for b, (rr, idx) in enumerate(zip(runs, rows, strict=True)):
        g = gold[idx]
        scores = []
        for run in rr:
            p = preds[run, idx]
            f1 = []
            for label in range(n_labels):
                tp = np.sum((p == label) & (g == label))
                denom = np.sum(p == label) + np.sum(g == label)
                f1.append(2 * tp / denom if denom else 0.0)
            scores.append(np.mean(f1))
        out[b] = np.mean(scores)
    return out


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap samples."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    return float(lo), float(hi)


def accuracy_interval(
    preds: Sequence[Sequence[int]], gold: Sequence[int], n_boot: int = N_BOOT, seed: int = SEED
) -> tuple[float, float]:
    """95% interval of the mean accuracy of runs `preds` (one prediction list per run)."""
    p, g = np.asarray(preds), np.asarray(gold)
    runs, rows = _rows_and_runs(len(p), len(g), n_boot, np.random.default_rng(seed))
    return interval(_accuracy_samples((p == g).astype(float), runs, rows))


def macro_f1_interval(
    preds: Sequence[Sequence[int]],
    gold: Sequence[int],
    n_labels: int,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> tuple[float, float]:
    p, g = np.asarray(preds), np.asarray(gold)
    runs, rows = _rows_and_runs(len(p), len(g), n_boot, np.random.default_rng(seed))
    return interval(_macro_f1_samples(p, g, n_labels, runs, rows))


def paired_difference(
    preds_a: Sequence[Sequence[int]],
    preds_b: Sequence[Sequence[int]],
    gold: Sequence[int],
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> dict[str, float]:
    """Accuracy of a minus b on the same rows: the difference, its 95% interval and the
    two-sided bootstrap p-value (twice the smaller tail of the differences around 0)."""
    a, b, g = np.asarray(preds_a), np.asarray(preds_b), np.asarray(gold)
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(g), size=(n_boot, len(g)))
    runs_a = rng.integers(0, len(a), size=(n_boot, len(a)))
    runs_b = rng.integers(0, len(b), size=(n_boot, len(b)))
    diff = _accuracy_samples((a == g).astype(float), runs_a, rows) - _accuracy_samples(
        (b == g).astype(float), runs_b, rows
    )
    p = 2 * min(np.mean(diff <= 0), np.mean(diff >= 0))
    lo, hi = interval(diff)
    return {
        "difference": float((a == g).mean() - (b == g).mean()),
        "ci_lo": lo,
        "ci_hi": hi,
        "p_value": float(min(1.0, p)),
    }


def spearman(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Spearman's rho (and its p) of two score grids, flattened; NaN when one is constant (the
    faithfulness report's scores vs ablation, the mechanism comparisons)."""
    from scipy.stats import spearmanr  # scipy only for this one statistic

    a, b = np.ravel(np.asarray(a, float)), np.ravel(np.asarray(b, float))
    if a.shape != b.shape:
        raise CtsftError(f"cannot correlate {a.size} head scores with {b.size}")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"rho": math.nan, "p_value": math.nan}
    rho, p = spearmanr(a, b)
    return {"rho": float(rho), "p_value": float(p)}
