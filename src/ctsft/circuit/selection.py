"""Pick the circuit (top-k by signed score), NearZero (k smallest |score|) and random heads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ctsft.errors import CtsftError


def resolve_k(k: int | float, n_total: int) -> int:
    """k as a head count (int) or a fraction of all heads (float in (0, 1]); at least one head."""
    if isinstance(k, bool):
        raise CtsftError(f"cdt.k must be a number, got {k!r}")
    if isinstance(k, float) and not (k.is_integer() and k > 1):
        if not 0 < k <= 1:
            raise CtsftError(f"cdt.k as a fraction must be in (0, 1], got {k}")
        return max(1, int(round(k * n_total)))
    count = int(k)
    if not 1 <= count <= n_total:
        raise CtsftError(f"cdt.k={count} heads is outside 1..{n_total} (all heads of the model)")
    return count


def select_heads(scores: pd.DataFrame, k: int | float, seed: int) -> dict[str, Any]:
    """circuit / near_zero / random head lists (`[[layer, head], ...]`) from a score table.

    Ties are broken by (layer, head). Random draws k heads uniformly from all heads (nothing is
    excluded, so it may overlap the circuit), in (layer, head) order.
    """
    df = scores[["layer", "head", "score"]].copy()
    if df["score"].isna().any():
        raise CtsftError("score table has missing scores")
    n_total = len(df)
    count = resolve_k(k, n_total)
    top = df.sort_values(["score", "layer", "head"], ascending=[False, True, True], kind="stable")
    df["abs"] = df["score"].abs()
    near = df.sort_values(["abs", "layer", "head"], kind="stable")
    every = df.sort_values(["layer", "head"])
    rng = np.random.default_rng(seed)
    drawn = sorted(rng.choice(n_total, size=count, replace=False).tolist())

    def pairs(frame: pd.DataFrame) -> list[list[int]]:
        return [
            [int(layer), int(head)]
            for layer, head in zip(frame["layer"], frame["head"], strict=True)
        ]

    return {
        "k": count,
        "n_heads_total": n_total,
        "circuit": pairs(top.head(count)),
        "near_zero": pairs(near.head(count)),
        "random": pairs(every.iloc[drawn]),
    }


def random_head_sets(
    n_layers: int, n_heads: int, k: int, n_sets: int, seed: int
) -> list[list[list[int]]]:
    """`n_sets` random head sets of size k (faithfulness controls), reproducible for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_sets):
        drawn = sorted(rng.choice(n_layers * n_heads, size=k, replace=False).tolist())
        out.append([[i // n_heads, i % n_heads] for i in drawn])
    return out
