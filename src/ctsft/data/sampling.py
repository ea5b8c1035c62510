"""Label-balanced sampling, used by the low-resource training pools and the discovery set."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ctsft.errors import CtsftError

if TYPE_CHECKING:  # datasets only in annotations: the engine imports without it
    from datasets import Dataset


def balanced_indices(labels: list[int], n_per_label: int, seed: int) -> list[int]:
    """Indices of `n_per_label` rows for each label, drawn with `seed`, in a shuffled order."""
    if n_per_label <= 0:
        raise CtsftError(f"n_per_label must be positive, got {n_per_label}")
    rng = np.random.default_rng(seed)
    array = np.asarray(labels)
    chosen: list[np.ndarray] = []
    for label in sorted(set(array.tolist())):
        pool = np.flatnonzero(array == label)
        if len(pool) < n_per_label:
            raise CtsftError(
                f"label {label} has only {len(pool)} examples, fewer than n_per_label={n_per_label}: "
                "lower it"
            )
        chosen.append(rng.choice(pool, size=n_per_label, replace=False))
    picked = np.concatenate(chosen)
    rng.shuffle(picked)
    return picked.tolist()


def balanced_sample(dataset: Dataset, n_per_label: int, seed: int) -> Dataset:
    """`n_per_label` examples of every label, reproducible for a seed."""
    return dataset.select(balanced_indices(dataset["label"], n_per_label, seed))


def subsample(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    """At most `n` rows (label-balanced when n divides evenly), or all rows when n is None."""
    if n is None or n >= len(dataset):
        return dataset
    n_labels = len(set(dataset["label"]))
    if n % n_labels == 0:
        return balanced_sample(dataset, n // n_labels, seed)
    rng = np.random.default_rng(seed)
    return dataset.select(sorted(rng.choice(len(dataset), size=n, replace=False).tolist()))
