"""Runs side by side, row by row: the per-row predictions of several runs on their shared test rows.

A paired statistic compares two methods on the *same* rows. The evaluate step records the id of
every target test row (`test_ids`), so runs are aligned by id: rows in another order, or a run
scored on more rows, still pair correctly, and two runs whose gold labels merely happen to be
equal are never mistaken for the same rows. The proxy rows are aligned by `proxy_test_ids` where a
record has them; records without ids (older metrics files, and the proxy rows today) are aligned
by position, and only when every run has the same gold labels there.

Rows are put in the order of their ids (runs in the order of their seeds), so a bootstrap that
resamples them does not depend on the order in which the files were read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ctsft.errors import CtsftError

#: (predictions, gold, ids) columns of the records for the target rows and the proxy rows.
ROWS = {
    "target": ("predictions", "gold", "test_ids"),
    "proxy": ("proxy_predictions", "proxy_gold", "proxy_test_ids"),
}


@dataclass(frozen=True)
class Aligned:
    """A group of runs on shared rows: `preds` `[runs, rows]`, `gold` `[rows]`, runs by seed."""

    ids: tuple
    seeds: tuple
    preds: np.ndarray
    gold: np.ndarray
    paths: tuple

    @property
    def correct(self) -> np.ndarray:
        """`[runs, rows]` 1.0 where a run's prediction is the gold label."""
        return (self.preds == self.gold[None, :]).astype(float)


def _runs(group: pd.DataFrame, columns: tuple[str, str, str]) -> list[dict] | None:
    pred, gold, ids = columns
    out = []
    present = [c for c in ("seed", "path", pred, gold, ids) if c in group.columns]
    ordered = group.sort_values("seed", kind="stable", na_position="last")[present]
    for row in ordered.itertuples():
        p, g, i = getattr(row, pred), getattr(row, gold), getattr(row, ids, None)
        if not isinstance(p, list) or not isinstance(g, list) or len(p) != len(g):
            return None
        if isinstance(i, list) and (len(i) != len(p) or len(set(map(str, i))) != len(i)):
            raise CtsftError(f"{row.path}: its {ids} do not name each of its {len(p)} rows once")
        out.append({"seed": row.seed, "path": row.path, "preds": p, "gold": g,
                    "ids": [str(x) for x in i] if isinstance(i, list) else None})  # fmt: skip
    return out


def align(groups: Sequence[pd.DataFrame], rows: str = "target") -> list[Aligned] | None:
    """Each group of runs on the rows every run of every group has, in the order of their ids;
    None when a run has no per-row predictions, or (without ids) the runs do not share their gold
    labels, or they share no row."""
    columns = ROWS[rows]
    per_group = [_runs(group, columns) for group in groups]
    if any(not runs for runs in per_group):
        return None
    every = [run for runs in per_group for run in runs]
    if all(run["ids"] is not None for run in every):
        shared = set(every[0]["ids"]).intersection(*(run["ids"] for run in every[1:]))
        ids = tuple(sorted(shared))
        if not ids:
            return None
        for run in every:
            position = {row_id: i for i, row_id in enumerate(run["ids"])}
            run["take"] = np.array([position[row_id] for row_id in ids])
    else:  # no ids: the same rows only if they are the same number of rows and gold labels
        first = every[0]["gold"]
        if any(run["gold"] != first for run in every):
            return None
        ids = tuple(range(len(first)))
        for run in every:
            run["take"] = np.arange(len(first))
    gold = np.asarray(every[0]["gold"])[every[0]["take"]]
    for run in every[1:]:
        other = np.asarray(run["gold"])[run["take"]]
        if not np.array_equal(other, gold):
            row = ids[int(np.flatnonzero(other != gold)[0])]
            raise CtsftError(
                f"{every[0]['path']} and {run['path']} give test row {row} different gold "
                "labels: were they evaluated on the same data?"
            )
    return [
        Aligned(
            ids=ids,
            seeds=tuple(run["seed"] for run in runs),
            preds=np.stack([np.asarray(run["preds"])[run["take"]] for run in runs]),
            gold=gold,
            paths=tuple(run["path"] for run in runs),
        )
        for runs in per_group
    ]


def same_seeds(a: Aligned, b: Aligned) -> bool:
    """Whether two groups ran the same seeds (then they are paired by seed number)."""
    return len(a.seeds) == len(b.seeds) and list(a.seeds) == list(b.seeds)
