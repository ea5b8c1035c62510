"""The paper's tables from evaluation metrics files: CSV (long, raw numbers), Markdown and LaTeX.

- Table 1 (NusaX-Senti) and Table 2 (XNLI): target accuracy and macro-F1 per proxy -> target pair
  and method, mean and standard deviation over seeds (sample std, ddof=1; blank for one seed),
  with the % of parameters each method updates.
- Table 3: forgetting, per task, proxy and method: proxy test accuracy before transfer (theta_1)
  and after, and the change (after - before, negative = forgotten), averaged over every target
  and seed.

Every cell carries a 95% bootstrap interval over the test rows (and the seeds or runs), and Tables
1/2 mark CT-SFT cells that differ from full fine-tuning (†) or from NearZero (‡) on the same rows
(paired bootstrap, p < 0.05); see `ctsft.report.stats`. Metrics files without per-row
predictions fall back to mean ± std.
- mechanism_transfer (`build_mechanism_table`, from `mechanism.json` records): the heads re-scored
  on the target language by theta_1 and by the CT-SFT model, against the proxy (top-k overlap,
  Jaccard, hypergeometric p, Spearman's rho; see `ctsft.report.mechanism`).

    build_tables(["results/quick/nusax/e5_small/ind-jav/ctsft/k0.05/seed0/metrics.json", ...],
                 "results/quick/tables")
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from tabulate import DataRow, TableFormat

from ctsft.layout import TABLE_FORGETTING, TABLE_FORMATS, TABLE_MECHANISM, TABLE_OF_TASK
from ctsft.report.mechanism import COMPARISON_LABELS, COMPARISONS, mechanism_rows, read_mechanism
from ctsft.report.records import method_sort_key, read_records
from ctsft.report.stats import accuracy_interval, macro_f1_interval, paired_difference

MARKS = "† / ‡: CT-SFT differs from full_ft / near_zero on the same test rows (paired bootstrap, p < 0.05)"
TITLES = {
    "table1_nusax": "Table 1. NusaX-Senti: target-language accuracy / macro-F1 (%), mean over seeds "
    f"[95% bootstrap interval]; {MARKS}",
    "table2_xnli": "Table 2. XNLI: target-language accuracy / macro-F1 (%), mean over seeds "
    f"[95% bootstrap interval]; {MARKS} (training pool: the XNLI dev split; evaluation: the "
    "test split)",
    TABLE_FORGETTING: "Table 3. Forgetting: proxy-language test accuracy (%) before and after transfer; "
    "change = after − before (negative = forgotten), [95% bootstrap interval, paired for the change]",
    TABLE_MECHANISM: "Mechanism transfer: every head scored again on the target language's "
    "discovery set by theta_1 (before transfer) and by the CT-SFT model (after), against the "
    "proxy's scores of the same kind: shared heads of the target top-k and the proxy circuit "
    "(or the proxy top-k of that kind), their Jaccard index, the hypergeometric p of at least "
    "that overlap by chance (expected: k²/N heads), and Spearman's rho of all head scores; "
    "mean ± std over seeds, p the median",
}
ALPHA = 0.05
CI_COLUMNS = ["accuracy_ci_lo", "accuracy_ci_hi", "macro_f1_ci_lo", "macro_f1_ci_hi"]
COMPARED = {"full_ft": "p_vs_full_ft", "near_zero": "p_vs_near_zero"}


def _per_row(group: pd.DataFrame, column: str, gold: str) -> tuple[list, list] | None:
    """The runs' per-row predictions and the shared gold labels, or None if not all recorded."""
    preds = group[column].tolist()
    golds = group[gold].tolist()
    if not preds or any(not isinstance(p, list) for p in preds + golds):
        return None
    if any(g != golds[0] for g in golds):  # not the same test rows: no paired statistics
        return None
    return preds, golds[0]


def _task_intervals(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Bootstrap intervals per cell, and CT-SFT's paired tests against full_ft and near_zero."""
    groups = dict(list(runs.groupby(keys, sort=False, dropna=False)))
    cells = {key: _per_row(group, "predictions", "gold") for key, group in groups.items()}
    rows = []
    for key, data in cells.items():
        row = dict(zip(keys, key, strict=True))
        if data is not None:
            preds, gold = data
            n_labels = int(groups[key]["n_labels"].iloc[0])
            row["accuracy_ci_lo"], row["accuracy_ci_hi"] = accuracy_interval(preds, gold)
            row["macro_f1_ci_lo"], row["macro_f1_ci_hi"] = macro_f1_interval(preds, gold, n_labels)
            *pair, label = key
            base, _, suffix = str(label).partition(" ")
            if base == "ctsft":
                for other, column in COMPARED.items():
                    rival = cells.get((*pair, f"{other} {suffix}".strip())) or cells.get(
                        (*pair, other)
                    )
                    if rival is not None and rival[1] == gold:
                        row[column] = paired_difference(preds, rival[0], gold)["p_value"]
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, *CI_COLUMNS, *COMPARED.values()])


def _agg(frame: pd.DataFrame, keys: list[str], values: list[str]) -> pd.DataFrame:
    grouped = frame.groupby(keys, sort=False, dropna=False)
    out = grouped.size().rename("n_runs").to_frame()
    for value in values:
        out[f"{value}_mean"] = grouped[value].mean()
        out[f"{value}_std"] = grouped[value].std(ddof=1)
    return out.reset_index()


def _sorted(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    order = frame["label"].map(method_sort_key)
    return (
        frame.assign(_order=order)
        .sort_values([*keys, "_order"], kind="stable")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def task_table(records: pd.DataFrame, task: str) -> pd.DataFrame:
    """Table 1/2 in long form: one row per (proxy, target, method)."""
    runs = records[records["task"] == task]
    table = _agg(
        runs,
        ["proxy", "target", "label"],
        ["accuracy", "macro_f1", "pct_params_updated", "forgetting"],
    )
    table = table.rename(columns={"n_runs": "n_seeds"}).drop(columns=["pct_params_updated_std"])
    keys = ["proxy", "target", "label"]
    table = table.merge(_task_intervals(runs, keys), on=keys, how="left")
    table.insert(0, "task", task)
    return _sorted(table, ["proxy", "target"]).rename(columns={"label": "method"})


def forgetting_table(records: pd.DataFrame) -> pd.DataFrame:
    """Table 3 in long form: one row per (task, proxy, method), over all targets and seeds."""
    table = _agg(
        records,
        ["task", "proxy", "label"],
        ["proxy_accuracy_before", "proxy_accuracy", "forgetting"],
    )
    table = table.drop(columns=["proxy_accuracy_before_std"])
    keys = ["task", "proxy", "label"]
    table = table.merge(_forgetting_intervals(records, keys), on=keys, how="left")
    table = table.rename(
        columns={
            "proxy_accuracy_before_mean": "proxy_accuracy_before",
            "proxy_accuracy_mean": "proxy_accuracy_after_mean",
            "proxy_accuracy_std": "proxy_accuracy_after_std",
        }
    )
    return _sorted(table, ["task", "proxy"]).rename(columns={"label": "method"})


def _forgetting_intervals(records: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Intervals of the after-transfer proxy accuracy (over runs and rows) and of the change
    (paired with theta_1's own predictions on the same proxy rows)."""
    rows = []
    for key, group in records.groupby(keys, sort=False, dropna=False):
        row = dict(zip(keys, key, strict=True))
        data = _per_row(group, "proxy_predictions", "proxy_gold")
        before = [b for b in group["baseline_proxy_predictions"] if isinstance(b, list)]
        if data is not None:
            preds, gold = data
            row["after_ci_lo"], row["after_ci_hi"] = accuracy_interval(preds, gold)
            if before and len(before[0]) == len(gold):
                diff = paired_difference(preds, [before[0]], gold)
                row["change_ci_lo"], row["change_ci_hi"] = diff["ci_lo"], diff["ci_hi"]
        rows.append(row)
    columns = ["after_ci_lo", "after_ci_hi", "change_ci_lo", "change_ci_hi"]
    return pd.DataFrame(rows, columns=[*keys, *columns])


# ---------------------------------------------------------------- formatting
def _scale(frame: pd.DataFrame, columns: list[str]) -> float:
    """100 when the numbers are fractions (display as %), else 1."""
    values = pd.concat([frame[c] for c in columns if c in frame]).dropna().abs()
    return 100.0 if len(values) and values.max() <= 1.0 else 1.0


def _cell(mean: float, std: float, scale: float, digits: int = 1) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    text = f"{mean * scale:.{digits}f}"
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        text += f" ± {std * scale:.{digits}f}"
    return text


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell_ci(mean: float, std: float, lo: float, hi: float, scale: float, mark: str = "") -> str:
    """`mean [lo, hi]` when the interval is known, else `mean ± std`."""
    if _missing(lo) or _missing(hi) or _missing(mean):
        return _cell(mean, std, scale) + mark
    lo, hi = round(lo * scale, 1) + 0.0, round(hi * scale, 1) + 0.0  # no "-0.0"
    return f"{mean * scale:.1f}{mark} [{lo:.1f}, {hi:.1f}]"


def _marks(row: pd.Series) -> str:
    out = ""
    for column, mark in (("p_vs_full_ft", "†"), ("p_vs_near_zero", "‡")):
        if not _missing(row.get(column)) and row[column] < ALPHA:
            out += mark
    return out


def _params(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.2g}"


def task_display(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1/2 as printed: pair rows x method columns, `acc ± std / F1 ± std`, then % params."""
    scale = _scale(table, ["accuracy_mean", "macro_f1_mean"])
    methods = sorted(table["method"].unique(), key=method_sort_key)
    rows = []
    for (proxy, target), group in table.groupby(["proxy", "target"], sort=False):
        row = {"pair": f"{proxy} → {target}"}
        for _, r in group.iterrows():
            acc = _cell_ci(
                r["accuracy_mean"], r["accuracy_std"], r.get("accuracy_ci_lo"),
                r.get("accuracy_ci_hi"), scale, _marks(r),
            )  # fmt: skip
            f1 = _cell_ci(
                r["macro_f1_mean"], r["macro_f1_std"], r.get("macro_f1_ci_lo"),
                r.get("macro_f1_ci_hi"), scale,
            )  # fmt: skip
            row[r["method"]] = f"{acc} / {f1}"
        rows.append(row)
    means = table.groupby("method")[
        ["accuracy_mean", "macro_f1_mean", "pct_params_updated_mean"]
    ].mean()
    rows.append(
        {
            "pair": "average",
            **{
                m: f"{_cell(means.loc[m, 'accuracy_mean'], None, scale)} / "
                f"{_cell(means.loc[m, 'macro_f1_mean'], None, scale)}"
                for m in methods
            },
        }
    )
    rows.append(
        {
            "pair": "% params updated",
            **{m: _params(means.loc[m, "pct_params_updated_mean"]) for m in methods},
        }
    )
    return pd.DataFrame(rows, columns=["pair", *methods]).fillna("–")


def forgetting_display(table: pd.DataFrame) -> pd.DataFrame:
    scale = _scale(table, ["proxy_accuracy_before", "proxy_accuracy_after_mean"])
    return pd.DataFrame(
        {
            "task": table["task"],
            "proxy": table["proxy"],
            "method": table["method"],
            "runs": table["n_runs"],
            "before": [_cell(v, None, scale) for v in table["proxy_accuracy_before"]],
            "after": [
                _cell_ci(
                    r.proxy_accuracy_after_mean,
                    r.proxy_accuracy_after_std,
                    r.after_ci_lo,
                    r.after_ci_hi,
                    scale,
                )
                for r in table.itertuples()
            ],  # fmt: skip
            "change": [
                _cell_ci(r.forgetting_mean, r.forgetting_std, r.change_ci_lo, r.change_ci_hi, scale)
                for r in table.itertuples()
            ],
        }
    )


def _pipe_rule(widths: list[int], aligns: list[str | None]) -> str:
    """The header rule of a pipe table: the first column (labels) left, the values right."""
    return "|" + "|".join("---" if i == 0 else "---:" for i in range(len(widths))) + "|"


# GitHub pipe tables with unpadded cells (tabulate's "pipe" pads every cell to its column's
# width; unpadded rows keep the files small and grep-able, and they render the same). The
# alignment is in the rule; the cells get no alignment (`colalign` None), hence no padding.
PIPE = TableFormat(
    lineabove=None,
    linebelowheader=_pipe_rule,
    linebetweenrows=None,
    linebelow=None,
    headerrow=DataRow("|", "|", "|"),
    datarow=DataRow("|", "|", "|"),
    padding=1,
    with_header_hide=None,
)


def to_markdown(display: pd.DataFrame, title: str) -> str:
    """The display table as a titled pipe table, written by tabulate (cells as given: no number
    parsing, which would turn "0.00" into "0")."""
    table = display.to_markdown(
        index=False, tablefmt=PIPE, colalign=[None] * len(display.columns), disable_numparse=True
    )
    return f"**{title}**\n\n{table}\n"


_LATEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
}


def _latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("→", r"$\to$").replace("–", "--")


def to_latex(display: pd.DataFrame, title: str, label: str) -> str:
    """A booktabs table written by pandas' `Styler.to_latex`, cells escaped by `_latex_escape`
    (± and → as maths). Two touches Styler cannot make are added to its output: the rule that
    sets the `average` row apart (it has no rule above one body row) and `\\small` before the
    caption, so caption and body share the table's size (its own commands follow the caption)."""
    styler = (
        display.style.hide(axis="index").format(_latex_escape).format_index(_latex_escape, axis=1)
    )
    latex = styler.to_latex(
        column_format="l" + "r" * (len(display.columns) - 1),
        position="t",
        position_float="centering",
        hrules=True,
        label=f"tab:{label}",
        caption=_latex_escape(title),
        environment="table",
    )
    latex = latex.replace("\\centering\n", "\\centering\n\\small\n", 1)
    return latex.replace("\naverage & ", "\n\\midrule\naverage & ", 1)


def write_table(long: pd.DataFrame, display: pd.DataFrame, name: str, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{fmt}" for fmt in TABLE_FORMATS]
    long.to_csv(paths[0], index=False, float_format="%.10g")
    paths[1].write_text(to_markdown(display, TITLES[name]))
    paths[2].write_text(to_latex(display, TITLES[name], name))
    return paths


def build_tables(
    metrics_paths: Iterable[str | Path], out_dir: str | Path, tasks: Iterable[str] | None = None
) -> dict[str, list[Path]]:
    """Write Table 1/2 for each task (default: the tasks present) and Table 3; their paths by name."""
    records = read_records(metrics_paths)
    out_dir = Path(out_dir)
    tasks = list(tasks) if tasks is not None else sorted(records["task"].unique())
    written = {}
    for task in tasks:
        name = TABLE_OF_TASK[task]
        long = task_table(records, task)
        display = task_display(long) if not long.empty else pd.DataFrame(columns=["pair"])
        written[name] = write_table(long, display, name, out_dir)
    long = forgetting_table(records)
    written[TABLE_FORGETTING] = write_table(
        long, forgetting_display(long), TABLE_FORGETTING, out_dir
    )
    return written


# ---------------------------------------------------------------- mechanism transfer
MECHANISM_KEYS = ["task", "proxy", "target", "variant", "comparison", "reference"]


def mechanism_table(records: Iterable[dict]) -> pd.DataFrame:
    """The long form: one row per (record, model scored on the target, proxy head set)."""
    long = pd.DataFrame(mechanism_rows(records))
    if long.empty:
        return long
    order = {name: i for i, name in enumerate(COMPARISONS)}
    return (
        long.assign(_c=long["comparison"].map(order), _r=long["reference"] != "circuit")
        .sort_values(["task", "proxy", "target", "variant", "seed", "_c", "_r"], kind="stable")
        .drop(columns=["_c", "_r"])
        .reset_index(drop=True)
    )


def mechanism_display(long: pd.DataFrame) -> pd.DataFrame:
    """One row per pair, variant, model and proxy set: means over seeds (p: the median)."""
    columns = ["pair", "variant", "scored by", "vs proxy", "shared of k", "Jaccard",
               "p (chance)", "Spearman rho", "seeds"]  # fmt: skip
    rows = []
    for key, group in long.groupby(MECHANISM_KEYS, sort=False):
        row = dict(zip(MECHANISM_KEYS, key, strict=True))
        kind = group["score_kind"].iloc[0]
        reference = "circuit" if row["reference"] == "circuit" else f"top-k ({kind})"
        rows.append(
            [
                f"{row['proxy']} → {row['target']}",
                row["variant"],
                COMPARISON_LABELS.get(row["comparison"], row["comparison"]),
                reference,
                f"{group['overlap'].mean():g} / {int(group['k_heads'].iloc[0])}",
                _cell(group["jaccard"].mean(), group["jaccard"].std(ddof=1), 1.0, 2),
                f"{group['p_value'].median():.2g}",
                _cell(group["spearman_rho"].mean(), group["spearman_rho"].std(ddof=1), 1.0, 2),
                len(group),
            ]
        )  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def build_mechanism_table(record_paths: Iterable[str | Path], out_dir: str | Path) -> list[Path]:
    """Write the mechanism_transfer table (CSV long, Markdown, LaTeX) from mechanism.json files."""
    long = mechanism_table(read_mechanism(p) for p in record_paths)
    display = mechanism_display(long) if not long.empty else pd.DataFrame(columns=["pair"])
    return write_table(long, display, TABLE_MECHANISM, Path(out_dir))
