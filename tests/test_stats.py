"""The statistics of the tables (ctsft.report.stats) against hand-computed examples: Holm's
correction, the hierarchical bootstrap (planted differences), Spearman's permutation p, the
claims' verdict rule, and the cell intervals."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from ctsft.report.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    SUPPORTED,
    accuracy_interval,
    across_languages,
    holm,
    interval,
    macro_f1_interval,
    paired_difference,
    paired_samples,
    permutation_p,
    rank_correlation,
    rng_for,
    verdict,
)

N = 400
GOLD = [i % 3 for i in range(N)]


def predictions(accuracy: float, seed: int) -> list[int]:
    """Predictions right on `accuracy * N` rows of a shuffled order, wrong elsewhere."""
    rng = np.random.default_rng(seed)
    right = set(rng.permutation(N)[: int(round(accuracy * N))].tolist())
    return [g if i in right else (g + 1) % 3 for i, g in enumerate(GOLD)]


def correct(accuracy: float, seed: int, n: int = N) -> np.ndarray:
    """0/1 row outcomes with exactly `accuracy * n` ones, in a shuffled order."""
    out = np.zeros(n)
    out[np.random.default_rng(seed).permutation(n)[: int(round(accuracy * n))]] = 1
    return out


def improved(base: np.ndarray, points: float, seed: int) -> np.ndarray:
    """`base` with `points` (a fraction) of its rows turned from wrong to right."""
    out = base.copy()
    wrong = np.flatnonzero(out == 0)
    flip = np.random.default_rng(seed).permutation(wrong)[: int(round(points * len(out)))]
    out[flip] = 1
    return out


# ---------------------------------------------------------------- Holm
def test_holm_on_a_known_list() -> None:
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> max(0.06, 0.04)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # made non-decreasing: 0.01 x3 = 0.03, 0.02 x2 = 0.04, 0.025 x1 -> 0.04
    assert holm([0.025, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    # a NaN is no test (m = 3) and stays NaN; 0.01 x3 = 0.03, 0.55 x2 = 1.1 -> 1, 0.6 x1 -> 1
    adjusted = holm([0.6, math.nan, 0.55, 0.01])
    assert math.isnan(adjusted[1])
    assert adjusted[[0, 2, 3]] == pytest.approx([1.0, 1.0, 0.03])
    assert len(holm([])) == 0


# ---------------------------------------------------------------- one target: seeds and rows
def test_hierarchical_bootstrap_finds_a_planted_difference() -> None:
    """Four seeds of a method 10 points better on the same rows: the interval holds +10 and
    excludes 0; the same accuracy on other rows: the interval holds 0."""
    base = np.stack([correct(0.65 + 0.02 * s, s) for s in range(4)])
    better = np.stack([improved(b, 0.10, 10 + s) for s, b in enumerate(base)])
    samples = paired_samples(better, base, paired_seeds=True, rng=rng_for("planted"))
    lo, hi = interval(samples)
    assert 0 < lo < 0.10 < hi
    assert hi - lo < 0.06  # paired on the same rows: much sharper than two binomial intervals

    shuffled = np.stack([correct(0.65 + 0.02 * s, 100 + s) for s in range(4)])  # same accuracy
    lo, hi = interval(paired_samples(shuffled, base, paired_seeds=True, rng=rng_for("zero")))
    assert lo < 0 < hi


def test_hierarchical_bootstrap_resamples_the_seeds() -> None:
    """A difference of +20 points on two seeds and -20 on the other two: mean 0, and the seed
    spread (not the rows) makes the interval wide; every seed alike gives a narrow one."""
    base = np.stack([correct(0.5, s) for s in range(4)])
    swing = np.stack([improved(b, 0.20, s) if s % 2 == 0 else b for s, b in enumerate(base)])
    swing_base = np.stack([b if s % 2 == 0 else improved(b, 0.20, s) for s, b in enumerate(base)])
    lo, hi = interval(paired_samples(swing, swing_base, True, rng=rng_for("swing")))
    assert lo < 0 < hi and hi - lo > 0.2
    steady = np.stack([improved(b, 0.0, s) for s, b in enumerate(base)])
    lo, hi = interval(paired_samples(steady, base, True, rng=rng_for("steady")))
    assert lo == hi == 0  # the same predictions on every seed and row


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


# ---------------------------------------------------------------- across languages
def _languages(points: list[float], seeds: int = 3) -> tuple[list[float], list[np.ndarray]]:
    estimates, samples = [], []
    for t, p in enumerate(points):
        base = np.stack([correct(0.6, 10 * t + s) for s in range(seeds)])
        if p >= 0:
            a, b = np.stack([improved(x, p, t + s) for s, x in enumerate(base)]), base
        else:
            a, b = base, np.stack([improved(x, -p, t + s) for s, x in enumerate(base)])
        estimates.append(float(a.mean() - b.mean()))
        samples.append(paired_samples(a, b, True, rng=rng_for("lang", t)))
    return estimates, samples


def test_across_languages_interval_holds_a_planted_difference() -> None:
    estimates, samples = _languages([0.10] * 6)
    lo, hi = interval(across_languages(estimates, samples, rng=rng_for("all+10")))
    assert np.mean(estimates) == pytest.approx(0.10)
    assert 0 < lo < 0.10 < hi


def test_across_languages_resamples_the_languages() -> None:
    """+10 points on three languages, -10 on three: the mean is 0 and the interval, wide from the
    spread between languages, holds it."""
    estimates, samples = _languages([0.10, -0.10] * 3)
    lo, hi = interval(across_languages(estimates, samples, rng=rng_for("mixed")))
    assert np.mean(estimates) == pytest.approx(0.0)
    assert lo < 0 < hi and hi - lo > 0.1


# ---------------------------------------------------------------- Spearman
def _exact_p(x: list[float], y: list[float]) -> float:
    rho = abs(spearmanr(x, y)[0])
    rhos = [abs(spearmanr(x, list(perm))[0]) for perm in itertools.permutations(y)]
    return float(np.mean([r >= rho - 1e-12 for r in rhos]))


def test_spearman_permutation_p_on_a_constructed_example() -> None:
    x = [0.45, 0.52, 0.58, 0.61, 0.70, 0.77]
    reverse = [0.09, 0.05, 0.04, 0.01, -0.02, -0.06]  # the easier, the smaller: rho = -1
    assert rank_correlation(x, reverse) == pytest.approx(-1.0)
    # only the exact order and its reverse reach |rho| = 1: p = 2 / 6! (every pairing tried)
    assert permutation_p(x, reverse) == pytest.approx(2 / 720)
    weak = [0.03, -0.01, 0.05, 0.00, 0.02, -0.03]
    assert rank_correlation(x, weak) == pytest.approx(spearmanr(x, weak)[0])
    exact = _exact_p(x, weak)
    assert 0.2 < exact < 0.9 and permutation_p(x, weak) == pytest.approx(exact)
    # fewer random pairings than 6! = 720: the Monte Carlo p, within its sampling error
    sampled = permutation_p(x, weak, n_perm=500, rng=rng_for("perm"))
    assert sampled == pytest.approx(exact, abs=3 * math.sqrt(exact * (1 - exact) / 500))
    assert permutation_p(x, reverse, n_perm=500, rng=rng_for("perm")) < 0.02
    ties = [1, 1, 2, 3, 3, 4]
    assert rank_correlation(x, ties) == pytest.approx(spearmanr(x, ties)[0])
    assert math.isnan(rank_correlation(x, [1.0] * 6))


# ---------------------------------------------------------------- verdicts
@pytest.mark.parametrize(
    "lo, hi, direction, expected",
    [
        (0.01, 0.05, +1, SUPPORTED),
        (-0.05, -0.01, +1, CONTRADICTED),
        (-0.01, 0.02, +1, INCONCLUSIVE),
        (-0.8, -0.1, -1, SUPPORTED),  # rho claimed negative
        (0.1, 0.8, -1, CONTRADICTED),
        (-0.7, 0.2, -1, INCONCLUSIVE),
        (0.0, 0.05, +1, INCONCLUSIVE),  # touching 0 does not exclude it
        (math.nan, math.nan, +1, INCONCLUSIVE),
    ],
)
def test_verdict_rule(lo: float, hi: float, direction: int, expected: str) -> None:
    assert verdict(lo, hi, direction) == expected


# ---------------------------------------------------------------- cell intervals
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


def test_a_differences_interval_and_p_agree() -> None:
    """The interval of a difference excludes 0 exactly when its p < 0.05 (one normal
    approximation for both), so a claim's verdict and its p cannot contradict each other."""
    from ctsft.report.stats import bootstrap_p, summarize

    rng = np.random.default_rng(3)
    for shift in np.linspace(0.0, 0.1, 41):
        samples = rng.normal(shift, 0.025, size=2000)
        row = summarize(float(shift), samples)
        excludes = row["ci_lo"] > 0 or row["ci_hi"] < 0
        assert excludes == (row["p_value"] < 0.05), row
        assert row["p_value"] == bootstrap_p(float(shift), samples)
        assert row["ci_hi"] - row["ci_lo"] == pytest.approx(2 * 1.959964 * samples.std(), rel=1e-6)
