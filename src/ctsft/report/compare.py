"""Method against method, as the config's `compare` asks: per target, and across the languages.

`compare` maps a method name to the names of its rivals (`{ctsft: [full_ft, near_zero]}`; the
names are the `methods[].name` of the Snakemake config, so a renamed variant such as
`ctsft_frozen_kv` is compared as soon as the config names it). Nothing here knows a method by its
name. A variant with a circuit size k meets the rival run with the same k, else the rival without
one (full fine-tuning has no k), else the rival's only run; a name that did not run is skipped.

- Per target (`Comparisons.target`): the paired difference of mean accuracy, a minus b, over
  seeds and rows: the same resampled rows for both methods, the same resampled seeds when both
  ran the same seeds (`ctsft.report.stats.paired_samples`).
- Across languages (`Comparisons.languages`): the mean of the per-target differences over the
  targets of a (task, proxy), with the interval of the hierarchical bootstrap (languages, then
  seeds, then rows: `ctsft.report.stats.across_languages`), and how many targets favour a.

Each comparison draws from its own seeded stream (`rng_for` of its coordinates), so a number
does not change with the other comparisons a table asks for.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctsft.report.pairing import align, same_seeds
from ctsft.report.records import method_sort_key
from ctsft.report.stats import (
    N_BOOT,
    across_languages,
    paired_samples,
    rng_for,
    summarize,
)

#: Columns of a per-target test and of an across-language comparison.
TARGET_COLUMNS = [
    "task", "proxy", "target", "method", "rival", "method_name", "rival_name", "rows",
    "n_rows", "n_seeds", "n_rival_seeds", "paired_seeds", "difference", "ci_lo", "ci_hi", "p_value",
]  # fmt: skip
LANGUAGE_COLUMNS = [
    "task", "proxy", "method", "rival", "method_name", "rival_name", "rows", "n_targets",
    "n_positive", "difference", "ci_lo", "ci_hi", "p_value",
]  # fmt: skip


@dataclass(frozen=True)
class Pair:
    """One comparison: the table rows (labels) of a method and of its rival, and their names."""

    method: str
    rival: str
    method_name: str
    rival_name: str


def labels_by_k(records: pd.DataFrame, name: str) -> dict[str | None, str]:
    """The table row (label) of each circuit size k that method `name` ran (k None: no k)."""
    runs = records[records["method"] == name]
    return {k: label for k, label in zip(runs["k"], runs["label"], strict=True)}


def rival_label(records: pd.DataFrame, rival: str, k: str | None) -> str | None:
    """The rival's run that meets a variant of size k: the same k, else no k, else its only one."""
    labels = labels_by_k(records, rival)
    if k in labels:
        return labels[k]
    if None in labels:
        return labels[None]
    return next(iter(labels.values())) if len(labels) == 1 else None


def resolve(records: pd.DataFrame, compare: Mapping[str, Sequence[str]] | None) -> list[Pair]:
    """Every comparison `compare` asks for that the records hold, in the config's order (the
    circuit sizes of a method by table order)."""
    pairs: list[Pair] = []
    for name, rivals in (compare or {}).items():
        sizes = labels_by_k(records, name)
        for k, label in sorted(sizes.items(), key=lambda kl: method_sort_key(kl[1])):
            for rival in rivals or []:
                other = rival_label(records, rival, k)
                if other is not None and other != label:
                    pairs.append(Pair(label, other, name, rival))
    return list(dict.fromkeys(pairs))


class Comparisons:
    """Paired comparisons over one set of records, each computed once (and cached)."""

    def __init__(self, records: pd.DataFrame, n_boot: int = N_BOOT) -> None:
        self.records = records
        self.n_boot = n_boot
        self._cells = dict(
            list(records.groupby(["task", "proxy", "target", "label"], sort=True, dropna=False))
        )
        self._tests: dict[tuple, tuple[dict, np.ndarray] | None] = {}

    def targets(self, task: str, proxy: str) -> list[str]:
        runs = self.records[(self.records["task"] == task) & (self.records["proxy"] == proxy)]
        return sorted(runs["target"].unique())

    def experiments(self) -> list[tuple[str, str]]:
        """Every (task, proxy) of the records, sorted."""
        return sorted(set(zip(self.records["task"], self.records["proxy"], strict=True)))

    def target(
        self, task: str, proxy: str, target: str, pair: Pair, rows: str = "target"
    ) -> tuple[dict, np.ndarray] | None:
        """The paired test of `pair` at one target (a dict of TARGET_COLUMNS) and its bootstrap
        samples; None when either method has no run there, or no per-row predictions."""
        flipped = pair.rival < pair.method  # computed one way round: b - a is -(a - b)
        canonical = Pair(pair.rival, pair.method, pair.rival_name, pair.method_name) if flipped else pair  # fmt: skip
        key = (task, proxy, target, canonical.method, canonical.rival, rows)
        if key not in self._tests:
            self._tests[key] = self._target(key, canonical)
        found = self._tests[key]
        if found is None or not flipped:
            return found
        test, samples = found
        swapped = {
            **test, "method": pair.method, "rival": pair.rival, "method_name": pair.method_name,
            "rival_name": pair.rival_name, "n_seeds": test["n_rival_seeds"],
            "n_rival_seeds": test["n_seeds"], "difference": -test["difference"],
            "ci_lo": -test["ci_hi"], "ci_hi": -test["ci_lo"],
        }  # fmt: skip
        return swapped, -samples

    def _target(self, key: tuple, pair: Pair) -> tuple[dict, np.ndarray] | None:
        task, proxy, target, _, _, rows = key
        a = self._cells.get((task, proxy, target, pair.method))
        b = self._cells.get((task, proxy, target, pair.rival))
        if a is None or b is None:
            return None
        aligned = align([a, b], rows)
        if aligned is None:
            return None
        runs_a, runs_b = aligned
        paired = same_seeds(runs_a, runs_b)
        correct_a, correct_b = runs_a.correct, runs_b.correct
        samples = paired_samples(correct_a, correct_b, paired, self.n_boot, rng_for(*key))
        estimate = float(correct_a.mean() - correct_b.mean())
        test = {
            "task": task, "proxy": proxy, "target": target, "method": pair.method,
            "rival": pair.rival, "method_name": pair.method_name, "rival_name": pair.rival_name,
            "rows": rows, "n_rows": len(runs_a.ids), "n_seeds": len(runs_a.seeds),
            "n_rival_seeds": len(runs_b.seeds), "paired_seeds": paired,
            **summarize(estimate, samples),
        }  # fmt: skip
        return test, samples

    def target_table(
        self, pairs: Sequence[Pair], task: str | None = None, rows: str = "target"
    ) -> pd.DataFrame:
        """Every per-target test of `pairs` (of one task, or all)."""
        tests = [
            found[0]
            for t, proxy in self.experiments()
            if task is None or t == task
            for pair in pairs
            for target in self.targets(t, proxy)
            if (found := self.target(t, proxy, target, pair, rows)) is not None
        ]
        return pd.DataFrame(tests, columns=TARGET_COLUMNS)

    def languages(self, task: str, proxy: str, pair: Pair, rows: str = "target") -> dict | None:
        """`pair` across the targets of (task, proxy) where both ran: the mean of the per-target
        differences, its hierarchical bootstrap interval and p, the targets and how many favour
        the method (difference > 0); None when they share no target."""
        found = [
            test
            for target in self.targets(task, proxy)
            if (test := self.target(task, proxy, target, pair, rows)) is not None
        ]
        if not found:
            return None
        estimates = [test["difference"] for test, _ in found]
        samples = across_languages(
            estimates,
            [s for _, s in found],
            self.n_boot,
            rng_for(task, proxy, pair.method, pair.rival, rows, "languages"),
        )
        return {
            "task": task, "proxy": proxy, "method": pair.method, "rival": pair.rival,
            "method_name": pair.method_name, "rival_name": pair.rival_name, "rows": rows,
            "n_targets": len(found), "n_positive": int(sum(e > 0 for e in estimates)),
            **summarize(float(np.mean(estimates)), samples),
        }  # fmt: skip

    def language_table(self, pairs: Sequence[Pair], rows: str = "target") -> pd.DataFrame:
        """Every comparison of `pairs` across the languages of each (task, proxy)."""
        found = [
            summary
            for task, proxy in self.experiments()
            for pair in pairs
            if (summary := self.languages(task, proxy, pair, rows)) is not None
        ]
        return pd.DataFrame(found, columns=LANGUAGE_COLUMNS)

    def per_target_samples(
        self, task: str, proxy: str, pair: Pair, rows: str = "target"
    ) -> dict[str, tuple[dict, np.ndarray]]:
        """Per target where both ran: its test and bootstrap samples."""
        out = {}
        for target in self.targets(task, proxy):
            found = self.target(task, proxy, target, pair, rows)
            if found is not None:
                out[target] = found
        return out


def mean_accuracy(records: pd.DataFrame, label: str, task: str, proxy: str) -> dict[str, float]:
    """Per target: the method's accuracy, mean over its seeds."""
    runs = records[
        (records["label"] == label) & (records["task"] == task) & (records["proxy"] == proxy)
    ]
    return {t: float(v) for t, v in runs.groupby("target")["accuracy"].mean().items()}


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
