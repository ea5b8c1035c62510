"""Uncertainty of the table cells: hierarchical bootstrap intervals, paired tests, Holm's
correction, Spearman's rho with a permutation p, and the verdict rule of the claims.

Every method of a pair is evaluated on the same test rows (`ctsft.evaluate.EVAL_SEED`; the tables
align them by their recorded ids, `ctsft.report.pairing`), so the rows are the unit of resampling;
with several seeds the seeds are resampled too, and across languages the languages as well (a
hierarchical bootstrap: languages, then seeds, then rows), so an interval covers the test-set
noise, the seed-to-seed spread and which languages happened to be targets. A comparison of two
methods resamples the *same* rows for both (paired), and the same seeds when both ran the same
seeds (paired by seed number): much sharper than comparing two intervals.

A resample of n items is drawn as counts (how often each item was drawn, `resample_counts`), so
a mean over resampled rows is one matrix product: every bootstrap below is vectorised.

p-values are two-sided, from the bootstrap's normal approximation (the estimate over the standard
deviation of its bootstrap samples): unlike counting the samples beyond 0, it resolves p below
1/N_BOOT, which Holm's correction over tens of tests needs. A difference's interval comes from the
same approximation (estimate ± 1.96 sd), so it excludes 0 exactly when p < 0.05; the intervals of
a single method's accuracy, and of Spearman's rho, are percentile intervals.
numpy only (scipy's rankdata for ranks), seeded per comparison (`rng_for`): the same metrics files
always give the same numbers, in whatever order they are read.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from ctsft.errors import CtsftError

N_BOOT = 2000
N_PERM = 10000
LEVEL = 0.95
SEED = 0

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"


def rng_for(*key: object) -> np.random.Generator:
    """A generator seeded by SEED and `key` (e.g. task, proxy, target, the two methods): each
    comparison draws its own stream, independent of which others are computed or in what order."""
    return np.random.default_rng([SEED, zlib.crc32("\x1f".join(map(str, key)).encode())])


def resample_counts(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """`[n_boot, n]`: how often each of n items is drawn in each of n_boot resamples of size n."""
    small = n_boot * n < np.iinfo(np.int32).max
    dtype = np.int32 if small else np.int64  # int32 draws: twice as fast
    draws = rng.integers(0, n, size=(n_boot, n), dtype=dtype)
    draws += (np.arange(n_boot, dtype=dtype) * n)[:, None]  # one bin per (resample, item)
    return np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(float)


def interval(samples: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap samples (NaN samples ignored; NaN when none)."""
    samples = np.asarray(samples, float)
    samples = samples[~np.isnan(samples)]
    if samples.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    return float(lo), float(hi)


def bootstrap_p(estimate: float, samples: np.ndarray) -> float:
    """Two-sided p of `estimate` = 0, by the normal approximation of its bootstrap samples."""
    se = float(np.nanstd(samples))
    if math.isnan(estimate):
        return math.nan
    if se == 0:
        return 1.0 if estimate == 0 else 0.0
    return float(math.erfc(abs(estimate) / se / math.sqrt(2)))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted among the m tests):
    the i-th smallest p times (m - i + 1), made non-decreasing, capped at 1."""
    p = np.asarray(p_values, float)
    out = np.full(p.shape, math.nan)
    known = np.flatnonzero(~np.isnan(p))
    m = known.size
    if m == 0:
        return out
    order = known[np.argsort(p[known], kind="stable")]
    scaled = p[order] * (m - np.arange(m))
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


# ---------------------------------------------------------------- one cell: seeds and rows
def mean_samples(
    correct: np.ndarray, rows: np.ndarray, seeds: np.ndarray | None = None
) -> np.ndarray:
    """`[B]` mean of `correct` `[seeds, rows]` over resampled rows (`rows` counts `[B, n_rows]`),
    then over resampled seeds (`seeds` counts `[B, n_seeds]`; None: every seed once)."""
    correct = np.asarray(correct, float)
    per_seed = rows @ correct.T / correct.shape[1]  # [B, seeds]
    if seeds is None:
        return per_seed.mean(axis=1)
    return (per_seed * seeds).sum(axis=1) / correct.shape[0]


def accuracy_interval(
    preds: Sequence[Sequence[int]], gold: Sequence[int], n_boot: int = N_BOOT, seed: int = SEED
) -> tuple[float, float]:
    """95% interval of the mean accuracy of runs `preds` (one prediction list per run, on the
    rows of `gold`), resampling runs and rows."""
    p, g = np.asarray(preds), np.asarray(gold)
    rng = np.random.default_rng(seed)
    rows = resample_counts(len(g), n_boot, rng)
    runs = resample_counts(len(p), n_boot, rng)
    return interval(mean_samples((p == g).astype(float), rows, runs))


def macro_f1_interval(
    preds: Sequence[Sequence[int]],
    gold: Sequence[int],
    n_labels: int,
    n_boot: int = N_BOOT,
    seed: int = SEED,
) -> tuple[float, float]:
    """95% interval of the mean macro-F1 of runs (absent labels count as 0, as in the tables)."""
    p, g = np.asarray(preds), np.asarray(gold)
    rng = np.random.default_rng(seed)
    rows = resample_counts(len(g), n_boot, rng)
    runs = resample_counts(len(p), n_boot, rng)
    labels = np.arange(n_labels)
    n_runs, n_rows = p.shape
    is_gold = (g[:, None] == labels).astype(float)  # [N, L]
    is_pred = (p[:, :, None] == labels).astype(float)  # [R, N, L]
    both = is_pred * is_gold[None]

    def counts(x: np.ndarray) -> np.ndarray:  # [R, N, L] -> resampled counts [B, R, L]
        flat = x.transpose(1, 0, 2).reshape(n_rows, n_runs * n_labels)
        return (rows @ flat).reshape(-1, n_runs, n_labels)

    gold_n = rows @ is_gold  # [B, L]
    pred_n, tp = counts(is_pred), counts(both)
    denom = pred_n + gold_n[:, None, :]
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0).mean(axis=2)  # [B, R]
    return interval((f1 * runs).sum(axis=1) / len(p))


def paired_samples(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    paired_seeds: bool,
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`[B]` bootstrap samples of mean accuracy of a minus b (`correct_*`: `[seeds, rows]`, 0/1,
    on the same rows in the same order): the same resampled rows for both, and the same
    resampled seeds when `paired_seeds` (both ran the same seeds, in the same order), else each
    its own seeds."""
    a, b = np.atleast_2d(np.asarray(correct_a, float)), np.atleast_2d(np.asarray(correct_b, float))
    if a.shape[1] != b.shape[1]:
        raise CtsftError(f"paired rows differ in number: {a.shape[1]} and {b.shape[1]}")
    if paired_seeds and a.shape[0] != b.shape[0]:
        raise CtsftError(f"paired seeds differ in number: {a.shape[0]} and {b.shape[0]}")
    rng = rng if rng is not None else np.random.default_rng(SEED)
    rows = resample_counts(a.shape[1], n_boot, rng)
    seeds_a = resample_counts(a.shape[0], n_boot, rng)
    seeds_b = seeds_a if paired_seeds else resample_counts(b.shape[0], n_boot, rng)
    return mean_samples(a, rows, seeds_a) - mean_samples(b, rows, seeds_b)


def normal_interval(
    estimate: float, samples: np.ndarray, level: float = LEVEL
) -> tuple[float, float]:
    """estimate ± z x the sd of its bootstrap samples: the interval of `bootstrap_p`'s test."""
    z = NormalDist().inv_cdf(0.5 + level / 2)
    se = float(np.nanstd(samples))
    return estimate - z * se, estimate + z * se


def summarize(estimate: float, samples: np.ndarray) -> dict[str, float]:
    """A difference, its 95% interval and its two-sided p, both from the normal approximation of
    its bootstrap samples: the interval excludes 0 exactly when p < 0.05, so a claim's verdict
    (by its interval) and its p never disagree."""
    lo, hi = normal_interval(estimate, samples)
    return {"difference": estimate, "ci_lo": lo, "ci_hi": hi, "p_value": bootstrap_p(estimate, samples)}  # fmt: skip


def paired_difference(
    preds_a: Sequence[Sequence[int]],
    preds_b: Sequence[Sequence[int]],
    gold: Sequence[int],
    n_boot: int = N_BOOT,
    seed: int = SEED,
    paired_seeds: bool = False,
) -> dict[str, float]:
    """Accuracy of a minus b on the same rows (a list of per-run predictions each): the
    difference, its 95% interval and the two-sided p."""
    g = np.asarray(gold)
    a = (np.atleast_2d(np.asarray(preds_a)) == g).astype(float)
    b = (np.atleast_2d(np.asarray(preds_b)) == g).astype(float)
    samples = paired_samples(a, b, paired_seeds, n_boot, np.random.default_rng(seed))
    return summarize(float(a.mean() - b.mean()), samples)


# ---------------------------------------------------------------- across languages
def across_languages(
    estimates: Sequence[float],
    samples: Sequence[np.ndarray],
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`[B]` bootstrap samples of the mean over languages of a per-language estimate: the
    languages resampled, and each drawn language replaced by a random one of its own bootstrap
    samples (`samples[t]`: its seeds and rows resampled), a fresh one for every draw, so the
    three levels nest."""
    bank = np.stack([np.asarray(s, float) for s in samples])  # [T, B_inner]
    n_lang, n_inner = bank.shape
    if len(estimates) != n_lang:
        raise CtsftError(f"{len(estimates)} estimates but {n_lang} sample sets")
    rng = rng if rng is not None else np.random.default_rng(SEED)
    langs = rng.integers(0, n_lang, size=(n_boot, n_lang))
    inner = rng.integers(0, n_inner, size=(n_boot, n_lang))
    return bank[langs, inner].mean(axis=1)


# ---------------------------------------------------------------- rank correlation
def _ranks(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata  # scipy for tied ranks along an axis

    return rankdata(x, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair of `x`, `y` `[..., n]` (NaN where one is constant)."""
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    denom = np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (x * y).sum(axis=-1) / denom
    return np.where(denom > 1e-12, r, math.nan)


def rank_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho of two equal-length vectors (or of each row of `[..., n]` arrays): Pearson's
    r of their tied ranks; NaN when either is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    r = _pearson_rows(_ranks(x), _ranks(y))
    return float(r) if r.ndim == 0 else r


def permutation_p(x: Sequence[float], y: Sequence[float], n_perm: int = N_PERM, rng=None) -> float:
    """Two-sided permutation p of Spearman's rho: the share of pairings of x with y whose |rho|
    reaches the observed one. Exact (every pairing) when there are at most `n_perm` of them (up
    to 8 languages at the default), else `n_perm` random ones, counting the observed pairing:
    (hits + 1) / (n_perm + 1)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rho = rank_correlation(x, y)
    if math.isnan(rho):
        return math.nan
    exact = math.factorial(y.size) <= n_perm
    if exact:
        perms = y[np.array(list(itertools.permutations(range(y.size))))]
    else:
        rng = rng if rng is not None else np.random.default_rng(SEED)
        perms = rng.permuted(np.broadcast_to(y, (n_perm, y.size)), axis=1)
    rhos = rank_correlation(np.broadcast_to(x, perms.shape), perms)
    hits = int(np.sum(np.abs(rhos) >= abs(rho) - 1e-12))
    return hits / len(perms) if exact else (hits + 1) / (n_perm + 1)


def spearman_samples(
    x: Sequence[float],
    y_samples: Sequence[np.ndarray],
    n_boot: int = N_BOOT,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """`[B]` bootstrap samples of Spearman's rho of x (one value per language) and y (per language
    a bank of bootstrap samples of its estimate): the languages resampled with replacement, each
    drawn language's y a random sample of its bank (its seeds and rows resampled). A resample
    whose x or y is constant gives NaN (left out of the interval)."""
    x = np.asarray(x, float)
    bank = np.stack([np.asarray(s, float) for s in y_samples])
    rng = rng if rng is not None else np.random.default_rng(SEED)
    langs = rng.integers(0, x.size, size=(n_boot, x.size))
    inner = rng.integers(0, bank.shape[1], size=(n_boot, x.size))
    return rank_correlation(x[langs], bank[langs, inner])


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


# ---------------------------------------------------------------- verdicts
def verdict(ci_lo: float, ci_hi: float, direction: int) -> str:
    """The claims' rule: `supported` when the 95% interval excludes 0 on the claimed side
    (`direction` +1: the statistic is claimed positive, -1: negative), `contradicted` when it
    excludes 0 on the other side, else `inconclusive` (also when the interval is unknown)."""
    if direction not in (1, -1):
        raise ValueError(f"direction is +1 or -1, not {direction!r}")
    if _nan(ci_lo) or _nan(ci_hi):
        return INCONCLUSIVE
    if ci_lo > 0 or ci_hi < 0:
        return SUPPORTED if (ci_lo > 0) == (direction > 0) else CONTRADICTED
    return INCONCLUSIVE


def _nan(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
