"""Read evaluation `metrics.json` files into one tidy table (one row per run).

Forgetting follows the evaluate step's sign: proxy accuracy after transfer minus before
(negative = forgotten).

Where a run sits in the grid (task, model, proxy, target, variant, k, seed) is read from the
record itself: the evaluate step writes its `grid` block (`ctsft.config.coordinates`), where the
variant is the workflow's name for it, so a renamed method variant (`ctsft_lr1e-4`) is its own
table row although its metrics say `method: ctsft`, and a change of the path layout cannot move
a run to another row. Metrics files written before records carried a `grid` block are placed by
the old layout, `.../{task}/{model}/{proxy}-{target}/{method}[/k{k}]/seed{seed}/metrics.json`
(`parse_path`), and by their own top-level fields.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from ctsft.errors import CtsftError

#: Per-row predictions on the shared test rows (lists; None in older metrics files): the ids of
#: the target test rows (`test_ids`, how runs are paired row by row, `ctsft.report.pairing`), the
#: predictions and gold labels of those rows, and of the proxy test rows after transfer and by
#: theta_1 (before); `proxy_test_ids` where a record names the proxy rows too.
PER_ROW = [
    "test_ids",
    "predictions",
    "gold",
    "proxy_predictions",
    "proxy_gold",
    "baseline_proxy_predictions",
    "proxy_test_ids",
]
#: Columns every record has (NaN when neither the path nor the file says).
COLUMNS = [
    "task",
    "model",
    "proxy",
    "target",
    "method",
    "k",
    "seed",
    "accuracy",
    "macro_f1",
    "proxy_accuracy",
    "proxy_accuracy_before",
    "forgetting",
    "pct_params_updated",
    "pct_params_updated_trainable",
    "params_total",
    "params_trainable_total",
    "path",
    *PER_ROW,
    "n_labels",
]
#: % parameters updated, of two denominators: all weights (`pct_params_updated`) and the weights a
#: method could train, all but a frozen token-embedding table (`pct_params_updated_trainable`; NaN
#: in metrics files written before it was recorded).
METRICS = [
    "accuracy", "macro_f1", "proxy_accuracy", "forgetting", "pct_params_updated",
    "pct_params_updated_trainable", "params_total", "params_trainable_total",
]  # fmt: skip
#: Other names of the same numbers in metrics files.
ALIASES = {
    "pct_params_updated": "params_updated_pct",
    "pct_params_updated_trainable": "params_updated_pct_trainable",
}
KNOWN_TASKS = ("nusax", "xnli")

_SEED = re.compile(r"^seed(\d+)$")
_K = re.compile(r"^k(.+)$")


def parse_path(path: str | Path) -> dict:
    """Grid coordinates of a legacy metrics file (no `grid` block) from the workflow layout ({}
    when it does not match)."""
    parts = Path(path).parts
    if len(parts) < 5 or parts[-1] != "metrics.json":
        return {}
    seed = _SEED.match(parts[-2])
    if not seed:
        return {}
    rest = list(parts[:-2])
    out: dict = {"seed": int(seed.group(1))}
    k = _K.match(rest[-1]) if rest else None
    if k and len(rest) >= 2:
        out["k"] = k.group(1)
        rest.pop()
    out["method"] = rest.pop()
    if not rest or "-" not in rest[-1]:
        return {}
    out["proxy"], out["target"] = rest.pop().split("-", 1)
    # {task}/{model}: the model may span folders (hub:<org>/<name>), the task is a known name
    for i in range(len(rest) - 1, -1, -1):
        if rest[i] in KNOWN_TASKS:
            out["task"] = rest[i]
            out["model"] = "/".join(rest[i + 1 :]) or None
            break
    return out


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def read_record(path: str | Path) -> dict:
    """One run: the metrics file's numbers and the grid coordinates."""
    path = Path(path)
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        raise CtsftError(f"metrics file {path} does not exist: run its evaluation first") from None
    except json.JSONDecodeError as err:
        raise CtsftError(f"metrics file {path} is not valid JSON ({err.msg})") from None
    grid = metrics.get("grid")
    if isinstance(grid, dict):  # the record's own coordinates; the variant is the table row
        record = {key: grid.get(key) for key in ("task", "model", "proxy", "target", "k", "seed")}
        record["method"] = grid.get("variant")
    else:
        record = {
            key: metrics.get(key)
            for key in ("task", "model", "proxy", "target", "method", "k", "seed")
        }
        record.update({key: value for key, value in parse_path(path).items() if value is not None})
    for key in METRICS:
        record[key] = _number(metrics.get(key, metrics.get(ALIASES.get(key, ""))))
    before = metrics.get("proxy_accuracy_before", metrics.get("baseline_proxy_accuracy"))
    if (
        before is None
        and not math.isnan(record["forgetting"])
        and not math.isnan(record["proxy_accuracy"])
    ):
        before = record["proxy_accuracy"] - record["forgetting"]  # forgetting = after - before
    record["proxy_accuracy_before"] = _number(before)
    for key in PER_ROW:  # per-row predictions (None in metrics files written before they were)
        record[key] = metrics.get(key)
    record["n_labels"] = len(metrics.get("labels") or []) or None
    record["k"] = None if record.get("k") in (None, "") else str(record["k"])
    record["path"] = str(path)
    missing = [key for key in ("task", "proxy", "target", "method") if not record.get(key)]
    if missing:
        raise CtsftError(
            f"{path}: cannot tell its {', '.join(missing)} (neither the path nor the file says)"
        )
    return record


def _order(record: dict) -> tuple:
    return tuple(
        str(record.get(key) or "") if key != "seed" else (record.get("seed") is None, record.get("seed") or 0)
        for key in ("task", "model", "proxy", "target", "method", "k", "seed", "path")
    )  # fmt: skip


def read_records(paths: Iterable[str | Path]) -> pd.DataFrame:
    """All runs as a DataFrame with COLUMNS, plus `label`: the method's table row name. Sorted by
    their coordinates (then path), so every statistic is the same in whatever order the files
    are given."""
    records = sorted((read_record(p) for p in paths), key=_order)
    frame = pd.DataFrame(records, columns=COLUMNS)
    frame["label"] = method_labels(frame)
    return frame


def method_labels(frame: pd.DataFrame) -> pd.Series:
    """`ctsft`, or `ctsft (k=0.05)` when the runs hold several circuit sizes of that method."""
    if frame.empty:
        return pd.Series([], dtype=str)
    n_k = frame.groupby("method")["k"].nunique()

    def label(row) -> str:
        if row["k"] is not None and n_k.get(row["method"], 0) > 1:
            return f"{row['method']} (k={row['k']})"
        return str(row["method"])

    return frame.apply(label, axis=1).astype(str)


#: Table order of the paper's methods; other variants follow alphabetically.
METHOD_ORDER = [
    "zero_shot", "full_ft", "ctsft", "near_zero", "random_heads", "sparse_random", "norms_only", "lora",
]  # fmt: skip


def method_sort_key(label: str) -> tuple:
    base = label.split(" ", 1)[0]
    rank = METHOD_ORDER.index(base) if base in METHOD_ORDER else len(METHOD_ORDER)
    return (rank, label)
