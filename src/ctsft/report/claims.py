"""The paper's claims, tested on a run, and the summary of every method against the reference.

Which method plays which part comes from the Snakemake config's `claims` mapping (role -> method
name, ROLES below), so nothing here names a method: a role whose method did not run makes its
claim "not run".

Claims (one row per claim and (task, proxy); `CLAIMS`):

- **beats_full_ft**: the method beats continued full fine-tuning on target accuracy. Statistic:
  the mean paired accuracy difference, method - full_ft, over targets x seeds; claimed > 0.
- **forgets_less**: the method forgets less than full fine-tuning. Statistic: the mean paired
  difference of proxy accuracy after transfer, method - full_ft, on the proxy's test rows. Both
  start from the same theta_1, so this is the method's forgetting minus full_ft's (forgetting =
  after - before, negative = forgotten); claimed > 0.
- **harder_favours_circuit**: harder transfers favour the circuit heads. Difficulty of a target is
  theta_1's zero-shot accuracy there (the zero_shot role; lower = harder). Statistic: Spearman's
  rho over targets between that accuracy and the method - near_zero accuracy difference (mean
  over seeds). "Harder favours the circuit" = the lower the zero-shot accuracy, the larger the
  difference, i.e. rho < 0: claimed < 0. p by permuting the languages; interval by the bootstrap
  over languages (each drawn language's difference resampled over its seeds and rows).
- **beats_sparse_random**, **beats_random_heads**: the later version's controls, the method
  against as many random entries of the attention projections (same budget) and against random
  heads; claimed > 0.

Verdict (`ctsft.report.stats.verdict`): supported when the 95% interval excludes 0 on the
claimed side, contradicted when it excludes 0 on the other side, else inconclusive at this scale.
Differences are of mean accuracy in [0, 1] (the tables print percentage points); intervals come
from the hierarchical bootstrap of `ctsft.report.compare` (languages, then seeds, then rows) and
are not adjusted for the several claims.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctsft.report.compare import Comparisons, Pair, labels_by_k, rival_label
from ctsft.report.records import method_sort_key
from ctsft.report.stats import (
    INCONCLUSIVE,
    permutation_p,
    rank_correlation,
    rng_for,
    spearman_samples,
    verdict,
)

#: The parts methods play in the claims (the keys of the config's `claims`; the schema lists the
#: same keys, a test keeps them equal).
ROLES = {
    "method": "the circuit method (CT-SFT), also the summary's reference",
    "full_ft": "continued full fine-tuning",
    "near_zero": "the k heads of lowest |score| (NearZero)",
    "zero_shot": "theta_1 as is: its target accuracy measures how hard a transfer is",
    "sparse_random": "as many random attention-projection entries as the method trains",
    "random_heads": "k heads drawn at random",
}
NOT_RUN = "not run"
#: Fewest targets for a rank correlation over them.
MIN_TARGETS_RHO = 3


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # {role} placeholders: the methods' names
    statistic: str
    rival: str  # role
    direction: int  # +1: claimed > 0, -1: claimed < 0
    rows: str = "target"  # the rows compared: target or proxy test rows
    difficulty: str | None = None  # role whose target accuracy is the difficulty (rho claims)


CLAIMS = (
    Claim(
        "beats_full_ft",
        "{method} beats continued full fine-tuning ({full_ft}) on target accuracy",
        "mean paired target-accuracy difference {method} − {full_ft} over targets × seeds, pts; "
        "claimed > 0",
        "full_ft",
        +1,
    ),
    Claim(
        "forgets_less",
        "{method} forgets less than full fine-tuning ({full_ft})",
        "mean paired proxy-accuracy difference after transfer {method} − {full_ft} (= its "
        "forgetting minus {full_ft}'s), pts; claimed > 0",
        "full_ft",
        +1,
        rows="proxy",
    ),
    Claim(
        "harder_favours_circuit",
        "harder transfers favour circuit heads: the lower {zero_shot}'s target accuracy, the "
        "larger {method} − {near_zero}",
        "Spearman ρ over targets of {zero_shot} target accuracy (low = hard) and {method} − "
        "{near_zero} target accuracy (mean over seeds); claimed < 0; p by permutation",
        "near_zero",
        -1,
        difficulty="zero_shot",
    ),
    Claim(
        "beats_sparse_random",
        "{method} beats non-circuit sparse updates of the same budget ({sparse_random})",
        "mean paired target-accuracy difference {method} − {sparse_random} over targets × "
        "seeds, pts; claimed > 0",
        "sparse_random",
        +1,
    ),
    Claim(
        "beats_random_heads",
        "{method} beats random heads ({random_heads})",
        "mean paired target-accuracy difference {method} − {random_heads} over targets × "
        "seeds, pts; claimed > 0",
        "random_heads",
        +1,
    ),
)
CLAIM_COLUMNS = [
    "claim", "text", "task", "proxy", "method", "rival", "statistic", "kind", "estimate",
    "ci_lo", "ci_hi", "p_value", "n_targets", "n_positive", "direction", "verdict", "note",
]  # fmt: skip


class _Names(dict):
    """Format mapping: a role without a method reads as the role's own name."""

    def __missing__(self, key: str) -> str:
        return key


def _names(roles: Mapping[str, str | None]) -> _Names:
    return _Names({role: name for role, name in roles.items() if name})


def _method_labels(comparisons: Comparisons, roles: Mapping, task: str, proxy: str) -> list:
    """(label, k) of each run of the `method` role in (task, proxy), table order."""
    name = roles.get("method")
    if not name:
        return []
    records = comparisons.records
    here = records[(records["task"] == task) & (records["proxy"] == proxy)]
    labels = labels_by_k(here, name)
    return sorted(((label, k) for k, label in labels.items()), key=lambda lk: method_sort_key(lk[0]))  # fmt: skip


def _row(claim: Claim, roles: Mapping, task: str, proxy: str, **values) -> dict:
    names = _names(roles)
    row = {
        "claim": claim.key, "text": claim.text.format_map(names), "task": task, "proxy": proxy,
        "statistic": claim.statistic.format_map(names),
        "kind": "spearman" if claim.difficulty else "difference", "direction": claim.direction,
        "estimate": math.nan, "ci_lo": math.nan, "ci_hi": math.nan, "p_value": math.nan,
        "n_targets": 0, "n_positive": 0, "verdict": NOT_RUN, "note": "",
        "method": roles.get("method"), "rival": roles.get(claim.rival),
    }  # fmt: skip
    row.update(values)
    return row


def _missing_roles(claim: Claim, roles: Mapping) -> list[str]:
    needed = ["method", claim.rival] + ([claim.difficulty] if claim.difficulty else [])
    return [role for role in needed if not roles.get(role)]


def claim_rows(comparisons: Comparisons, roles: Mapping[str, str | None]) -> pd.DataFrame:
    """Every claim for every (task, proxy) of the records (CLAIM_COLUMNS)."""
    rows = []
    records = comparisons.records
    for task, proxy in comparisons.experiments():
        here = records[(records["task"] == task) & (records["proxy"] == proxy)]
        labels = _method_labels(comparisons, roles, task, proxy)
        for claim in CLAIMS:
            missing = _missing_roles(claim, roles)
            if missing:
                note = f"no method plays {', '.join(missing)} (config claims)"
                rows.append(_row(claim, roles, task, proxy, note=note))
                continue
            if not labels:
                note = f"{roles['method']} did not run"
                rows.append(_row(claim, roles, task, proxy, note=note))
                continue
            for label, k in labels:
                rival = rival_label(here, roles[claim.rival], k)
                if rival is None:
                    note = f"{roles[claim.rival]} did not run"
                    rows.append(_row(claim, roles, task, proxy, method=label, note=note))
                    continue
                pair = Pair(label, rival, roles["method"], roles[claim.rival])
                if claim.difficulty:
                    rows.append(_rho_claim(comparisons, claim, roles, task, proxy, pair, k))
                else:
                    rows.append(_difference_claim(comparisons, claim, roles, task, proxy, pair))
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def _difference_claim(comparisons, claim, roles, task, proxy, pair) -> dict:
    found = comparisons.languages(task, proxy, pair, claim.rows)
    base = {"method": pair.method, "rival": pair.rival}
    if found is None:
        note = "no per-row predictions shared by the two methods"
        return _row(claim, roles, task, proxy, verdict=INCONCLUSIVE, note=note, **base)
    return _row(
        claim, roles, task, proxy, **base,
        estimate=found["difference"], ci_lo=found["ci_lo"], ci_hi=found["ci_hi"],
        p_value=found["p_value"], n_targets=found["n_targets"], n_positive=found["n_positive"],
        verdict=verdict(found["ci_lo"], found["ci_hi"], claim.direction),
    )  # fmt: skip


def _rho_claim(comparisons, claim, roles, task, proxy, pair, k) -> dict:
    records = comparisons.records
    here = records[(records["task"] == task) & (records["proxy"] == proxy)]
    easy_label = rival_label(here, roles[claim.difficulty], k)
    base = {"method": pair.method, "rival": pair.rival}
    if easy_label is None:
        note = f"{roles[claim.difficulty]} did not run"
        return _row(claim, roles, task, proxy, note=note, **base)
    difficulty = here[here["label"] == easy_label].groupby("target")["accuracy"].mean()
    tests = comparisons.per_target_samples(task, proxy, pair)
    targets = [t for t in sorted(tests) if t in difficulty.index]
    x = np.array([difficulty[t] for t in targets])
    y = np.array([tests[t][0]["difference"] for t in targets])
    counts = {"n_targets": len(targets), "n_positive": int(np.sum(y > 0))}
    if len(targets) < MIN_TARGETS_RHO:
        note = f"{len(targets)} targets: a rank correlation needs at least {MIN_TARGETS_RHO}"
        return _row(claim, roles, task, proxy, verdict=INCONCLUSIVE, note=note, **base, **counts)
    rho = rank_correlation(x, y)
    key = (task, proxy, pair.method, pair.rival, easy_label, "rho")
    samples = spearman_samples(x, [tests[t][1] for t in targets], rng=rng_for(*key, "boot"))
    samples = samples[~np.isnan(samples)]
    lo, hi = np.quantile(samples, [0.025, 0.975]) if samples.size else (math.nan, math.nan)
    note = "" if not math.isnan(rho) else "difficulty or difference constant over the targets"
    return _row(
        claim, roles, task, proxy, **base, **counts, estimate=rho, ci_lo=float(lo),
        ci_hi=float(hi), p_value=permutation_p(x, y, rng=rng_for(*key, "perm")),
        verdict=verdict(float(lo), float(hi), claim.direction), note=note,
    )  # fmt: skip


# ---------------------------------------------------------------- the summary
SUMMARY_COLUMNS = [
    "task", "proxy", "method", "reference", "n_targets", "n_seeds", "accuracy_mean",
    "difference", "ci_lo", "ci_hi", "p_value", "wins", "n_compared", "forgetting_mean",
    "pct_params_updated_mean", "pct_params_updated_trainable_mean",
]  # fmt: skip


def summary_rows(comparisons: Comparisons, roles: Mapping[str, str | None]) -> pd.DataFrame:
    """One row per method and (task, proxy): mean target accuracy over targets (each the mean over
    its seeds), the paired difference method - reference across the languages [interval], wins
    (targets where the method's paired difference to the reference is > 0), mean forgetting (proxy
    accuracy change, over targets and seeds), % parameters updated of both denominators. The
    reference is the `method` role (its first circuit size)."""
    rows = []
    records = comparisons.records
    for task, proxy in comparisons.experiments():
        here = records[(records["task"] == task) & (records["proxy"] == proxy)]
        labels = _method_labels(comparisons, roles, task, proxy)
        reference = labels[0][0] if labels else None
        for label in sorted(here["label"].unique(), key=method_sort_key):
            runs = here[here["label"] == label]
            per_target = runs.groupby("target")["accuracy"].mean()
            row = {
                "task": task, "proxy": proxy, "method": label, "reference": reference,
                "n_targets": len(per_target), "n_seeds": int(runs.groupby("target").size().max()),
                "accuracy_mean": float(per_target.mean()),
                "forgetting_mean": float(runs["forgetting"].mean()),
                "pct_params_updated_mean": float(runs["pct_params_updated"].mean()),
                "pct_params_updated_trainable_mean": float(runs["pct_params_updated_trainable"].mean()),
            }  # fmt: skip
            if reference is not None and label != reference:
                name = str(runs["method"].iloc[0])
                found = comparisons.languages(
                    task, proxy, Pair(label, reference, name, str(roles["method"]))
                )
                if found is not None:
                    row.update(
                        difference=found["difference"], ci_lo=found["ci_lo"],
                        ci_hi=found["ci_hi"], p_value=found["p_value"],
                        wins=found["n_positive"], n_compared=found["n_targets"],
                    )  # fmt: skip
            rows.append(row)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# ---------------------------------------------------------------- the difficulty figure's points
POINT_COLUMNS = ["task", "proxy", "target", "method", "rival", "zero_shot", "gain", "seed_sd", "n_seeds"]  # fmt: skip


def difficulty_points(
    records: pd.DataFrame, roles: Mapping[str, str | None] | None
) -> pd.DataFrame:
    """Per target: the zero-shot accuracy (difficulty; the `zero_shot` role) and the accuracy
    gain of the `method` role over the `near_zero` role (mean over seeds, from the records'
    accuracies), with the spread of that gain over the seeds both ran (sample std of the per-seed
    differences; NaN with fewer than two)."""
    roles = roles or {}
    names = [roles.get(r) for r in ("method", "near_zero", "zero_shot")]
    if not all(names):
        return pd.DataFrame(columns=POINT_COLUMNS)
    points = []
    for (task, proxy), here in records.groupby(["task", "proxy"], sort=True):
        for k, label in sorted(labels_by_k(here, names[0]).items(), key=lambda kl: method_sort_key(kl[1])):  # fmt: skip
            rival = rival_label(here, names[1], k)
            easy = rival_label(here, names[2], k)
            if rival is None or easy is None:
                continue
            for target, runs in here.groupby("target", sort=True):
                a = runs[runs["label"] == label].groupby("seed")["accuracy"].mean()
                b = runs[runs["label"] == rival].groupby("seed")["accuracy"].mean()
                z = runs[runs["label"] == easy]["accuracy"]
                if a.empty or b.empty or z.empty:
                    continue
                common = a.index.intersection(b.index)
                per_seed = (a[common] - b[common]).to_numpy()
                points.append({
                    "task": task, "proxy": proxy, "target": target, "method": label,
                    "rival": rival, "zero_shot": float(z.mean()), "gain": float(a.mean() - b.mean()),
                    "seed_sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else math.nan,
                    "n_seeds": len(common),
                })  # fmt: skip
    return pd.DataFrame(points, columns=POINT_COLUMNS)
