"""The paper's tables from evaluation metrics files: CSV (long, raw numbers), Markdown and LaTeX.

- Table 1 (NusaX-Senti) and Table 2 (XNLI): target accuracy and macro-F1 per proxy -> target pair
  and method, mean and standard deviation over seeds (sample std, ddof=1; blank for one seed),
  with the % of parameters each method updates, of all weights and of the weights it could train
  (all but a frozen token-embedding table).
- Table 3: forgetting, per task, proxy and method: proxy test accuracy before transfer (theta_1)
  and after, and the change (after - before, negative = forgotten), averaged over every target
  and seed.
- comparisons, summary, claims (when the config's `compare` and `claims` are given; see
  `ctsft.report.compare` and `ctsft.report.claims`): every comparison across the languages of a
  proxy, one row per method against the reference, and the paper's claims with a verdict.

Every cell carries a 95% bootstrap interval over the test rows (and the seeds or runs). Tables 1/2
mark a cell of a method of `compare` that differs from one of its rivals on the same test rows
(paired hierarchical bootstrap over seeds and rows, Holm-adjusted over every test of the table,
p < 0.05; one mark per rival, the caption names them); see `ctsft.report.stats`. Metrics files
without per-row predictions fall back to mean ± std.
- mechanism_transfer (`build_mechanism_table`, from `mechanism.json` records): the heads re-scored
  on the target language by theta_1 and by the CT-SFT model, against the proxy (top-k overlap,
  Jaccard, hypergeometric p, Spearman's rho; see `ctsft.report.mechanism`).

    build_tables(["results/quick/nusax/e5_small/ind-jav/ctsft/k0.05/seed0/metrics.json", ...],
                 "results/quick/tables", compare={"ctsft": ["full_ft", "near_zero"]},
                 claims={"method": "ctsft", "full_ft": "full_ft", ...})
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pandas as pd
from tabulate import DataRow, TableFormat

from ctsft.layout import (
    TABLE_CLAIMS,
    TABLE_COMPARISONS,
    TABLE_FORGETTING,
    TABLE_FORMATS,
    TABLE_MECHANISM,
    TABLE_OF_TASK,
    TABLE_SUMMARY,
)
from ctsft.report.claims import claim_rows, summary_rows
from ctsft.report.compare import Comparisons, Pair, resolve
from ctsft.report.mechanism import COMPARISON_LABELS, COMPARISONS, mechanism_rows, read_mechanism
from ctsft.report.pairing import align
from ctsft.report.records import method_sort_key, read_records
from ctsft.report.stats import (
    N_BOOT,
    accuracy_interval,
    holm,
    macro_f1_interval,
    paired_samples,
    rng_for,
    summarize,
)

TASK_TITLES = {
    "nusax": "Table 1. NusaX-Senti: target-language accuracy / macro-F1 (%)",
    "xnli": "Table 2. XNLI: target-language accuracy / macro-F1 (%)",
}
TASK_NOTES = {"xnli": " (training pool: the XNLI dev split; evaluation: the test split)"}
PARAMS_NOTE = (
    "% params updated: of all weights, and of the weights a method could train (all but a "
    "frozen token-embedding table; – where the record predates it)"
)
TITLES = {
    TABLE_FORGETTING: "Table 3. Forgetting: proxy-language test accuracy (%) before and after transfer; "
    "change = after − before (negative = forgotten), [95% bootstrap interval, paired for the change]",
    TABLE_MECHANISM: "Mechanism transfer: every head scored again on the target language's "
    "discovery set by theta_1 (before transfer) and by the CT-SFT model (after), against the "
    "proxy's scores of the same kind: shared heads of the target top-k and the proxy circuit "
    "(or the proxy top-k of that kind), their Jaccard index, the hypergeometric p of at least "
    "that overlap by chance (expected: k²/N heads), and Spearman's rho of all head scores; "
    "mean ± std over seeds, p the median",
    TABLE_COMPARISONS: "Comparisons across languages: mean paired target-accuracy difference "
    "(points) of each method of the config's `compare` and each of its rivals over targets × "
    "seeds [95% interval: bootstrap over languages, then seeds, then rows]; p two-sided, "
    "Holm-adjusted over the rows of this table; targets where the difference is positive; "
    "targets where it differs (per-target paired bootstrap, Holm-adjusted over the tests of the "
    "task's table, p < 0.05), higher ↑ / lower ↓",
    TABLE_SUMMARY: "Summary: one row per method; accuracy = target accuracy (%) averaged over "
    "targets (each the mean over its seeds); Δ = paired accuracy difference to the reference, "
    "method − reference, points [95% interval: bootstrap over languages, then seeds, then rows]; "
    "wins = targets where the method beats the reference (Δ and wins over the targets both "
    "ran); forgetting = proxy accuracy change "
    "after − before (points, mean over targets and seeds; negative = forgotten); % params "
    "updated of all weights / of the weights the method could train",
    TABLE_CLAIMS: "Claims of the paper, tested on this run: the statistic, its estimate [95% "
    "interval: bootstrap over languages, then seeds, then rows; not adjusted across claims] and "
    "a verdict by rule: supported when the interval excludes 0 on the claimed side, "
    "contradicted when it excludes 0 on the other, else inconclusive at this scale; not run "
    "when a method of the claim did not run; differences in points, ρ's p by permuting the "
    "languages",
}
ALPHA = 0.05
CI_COLUMNS = ["accuracy_ci_lo", "accuracy_ci_hi", "macro_f1_ci_lo", "macro_f1_ci_hi"]
#: Marks of the rivals in Tables 1/2, in the order the config's `compare` names them.
MARK_SYMBOLS = ("†", "‡", "§", "¶", "‖", "#", "*", "♯", "♭")


def mark_symbols(pairs: Sequence[Pair]) -> dict[str, str]:
    """A mark per rival name, in the order `compare` names them (`^n` past the symbols)."""
    rivals = list(dict.fromkeys(pair.rival_name for pair in pairs))
    return {
        rival: MARK_SYMBOLS[i] if i < len(MARK_SYMBOLS) else f"^{i + 1}"
        for i, rival in enumerate(rivals)
    }


def marks_legend(pairs: Sequence[Pair], n_tests: int) -> str:
    """The caption's account of the marks."""
    if not pairs:
        return "no comparisons (the config's compare names none that ran)"
    marks = mark_symbols(pairs)
    methods = ", ".join(dict.fromkeys(pair.method for pair in pairs))
    return (
        f"{' / '.join(marks.values())}: a cell of {methods} that differs from "
        f"{' / '.join(marks)} on the same test rows (paired bootstrap over seeds and rows, "
        f"Holm-adjusted p < {ALPHA} over the {n_tests} tests of this table)"
    )


def task_title(task: str, legend: str) -> str:
    return (
        f"{TASK_TITLES.get(task, f'{task}: target-language accuracy / macro-F1 (%)')}, mean "
        f"over seeds [95% bootstrap interval]; {legend}{TASK_NOTES.get(task, '')}; {PARAMS_NOTE}"
    )


def _cell_intervals(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Bootstrap intervals of each cell's accuracy and macro-F1 (runs aligned by row id)."""
    rows = []
    for key, group in runs.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key, strict=True))
        aligned = align([group])
        if aligned is not None:
            cell = aligned[0]
            n_labels = int(group["n_labels"].max()) if group["n_labels"].notna().any() else 0
            n_labels = max(n_labels, int(cell.gold.max()) + 1, int(cell.preds.max()) + 1)
            row["accuracy_ci_lo"], row["accuracy_ci_hi"] = accuracy_interval(cell.preds, cell.gold)
            row["macro_f1_ci_lo"], row["macro_f1_ci_hi"] = macro_f1_interval(
                cell.preds, cell.gold, n_labels
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=[*keys, *CI_COLUMNS])


def target_tests(comparisons: Comparisons, pairs: Sequence[Pair], task: str) -> pd.DataFrame:
    """The per-target paired tests of `pairs` in one task's table, with `p_holm`: Holm-adjusted
    over every test of that table."""
    tests = comparisons.target_table(pairs, task)
    tests["p_holm"] = holm(tests["p_value"].to_numpy()) if len(tests) else []
    return tests


def _test_columns(tests: pd.DataFrame, rivals: Sequence[str]) -> pd.DataFrame:
    """Per (proxy, target, method label): p_vs_<rival> and p_holm_vs_<rival> (rival names)."""
    keys = ["proxy", "target", "label"]
    columns = [f"{p}_vs_{r}" for r in rivals for p in ("p", "p_holm")]
    if tests.empty:
        return pd.DataFrame(columns=[*keys, *columns])
    wide = {}
    for row in tests.itertuples():
        cell = wide.setdefault((row.proxy, row.target, row.method), {})
        cell[f"p_vs_{row.rival_name}"] = row.p_value
        cell[f"p_holm_vs_{row.rival_name}"] = row.p_holm
    return pd.DataFrame(
        [dict(zip(keys, key, strict=True)) | values for key, values in wide.items()],
        columns=[*keys, *columns],
    )


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


def task_table(
    records: pd.DataFrame, task: str, tests: pd.DataFrame | None = None, rivals: Sequence[str] = ()
) -> pd.DataFrame:
    """Table 1/2 in long form: one row per (proxy, target, method), with the per-target tests
    (`tests`, of `target_tests`) against each of `rivals` as p_vs_<rival> / p_holm_vs_<rival>."""
    runs = records[records["task"] == task]
    table = _agg(
        runs,
        ["proxy", "target", "label"],
        [
            "accuracy",
            "macro_f1",
            "pct_params_updated",
            "pct_params_updated_trainable",
            "forgetting",
        ],
    )
    table = table.rename(columns={"n_runs": "n_seeds"}).drop(
        columns=["pct_params_updated_std", "pct_params_updated_trainable_std"]
    )
    keys = ["proxy", "target", "label"]
    table = table.merge(_cell_intervals(runs, keys), on=keys, how="left")
    if tests is not None:
        table = table.merge(_test_columns(tests, rivals), on=keys, how="left")
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
    (paired with theta_1's own predictions on the same proxy rows, from the first run: every run
    of a proxy starts from the same theta_1)."""
    rows = []
    for key, group in records.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, key, strict=True))
        first = group.iloc[[0]]
        before = first.assign(proxy_predictions=first["baseline_proxy_predictions"])
        aligned = align([group, before], "proxy")
        if aligned is None:  # no theta_1 predictions: the after interval alone
            aligned = align([group], "proxy")
        if aligned is not None:
            after = aligned[0]
            row["after_ci_lo"], row["after_ci_hi"] = accuracy_interval(after.preds, after.gold)
            if len(aligned) == 2:
                theta1 = aligned[1].correct[:1]
                samples = paired_samples(
                    after.correct, theta1, False, N_BOOT, rng_for(*key, "forgetting")
                )
                diff = summarize(float(after.correct.mean() - theta1.mean()), samples)
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


def _marks(row: pd.Series, marks: Mapping[str, str]) -> str:
    """The marks of the rivals a cell differs from (Holm-adjusted p < ALPHA)."""
    out = ""
    for rival, mark in marks.items():
        p = row.get(f"p_holm_vs_{rival}")
        if not _missing(p) and p < ALPHA:
            out += mark
    return out


def _params(value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.2f}" if value >= 0.01 or value == 0 else f"{value:.2g}"


PARAMS_ROWS = {
    "pct_params_updated_mean": "% params updated (of all weights)",
    "pct_params_updated_trainable_mean": "% params updated (of trainable weights)",
}


def task_display(table: pd.DataFrame, marks: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Table 1/2 as printed: pair rows x method columns, `acc [CI] / F1 [CI]` (marks after the
    accuracy), then the average and the % of parameters updated of both denominators."""
    marks = marks or {}
    scale = _scale(table, ["accuracy_mean", "macro_f1_mean"])
    methods = sorted(table["method"].unique(), key=method_sort_key)
    rows = []
    for (proxy, target), group in table.groupby(["proxy", "target"], sort=False):
        row = {"pair": f"{proxy} → {target}"}
        for _, r in group.iterrows():
            acc = _cell_ci(
                r["accuracy_mean"], r["accuracy_std"], r.get("accuracy_ci_lo"),
                r.get("accuracy_ci_hi"), scale, _marks(r, marks),
            )  # fmt: skip
            f1 = _cell_ci(
                r["macro_f1_mean"], r["macro_f1_std"], r.get("macro_f1_ci_lo"),
                r.get("macro_f1_ci_hi"), scale,
            )  # fmt: skip
            row[r["method"]] = f"{acc} / {f1}"
        rows.append(row)
    means = table.groupby("method")[["accuracy_mean", "macro_f1_mean", *PARAMS_ROWS]].mean()
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
    for column, name in PARAMS_ROWS.items():
        rows.append({"pair": name, **{m: _params(means.loc[m, column]) for m in methods}})
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


#: Columns of words, left-aligned like the first column (the others hold numbers: right).
TEXT_COLUMNS = ("claim", "verdict", "statistic", "method", "comparison", "experiment")


def to_markdown(display: pd.DataFrame, title: str) -> str:
    """The display table as a titled pipe table, written by tabulate (cells as given: no number
    parsing, which would turn "0.00" into "0"); TEXT_COLUMNS left-aligned."""
    table = display.to_markdown(
        index=False, tablefmt=PIPE, colalign=[None] * len(display.columns), disable_numparse=True
    )
    header, rule, *body = table.split("\n")
    left = [i == 0 or str(c) in TEXT_COLUMNS for i, c in enumerate(display.columns)]
    rule = "|" + "|".join("---" if is_left else "---:" for is_left in left) + "|"
    return f"**{title}**\n\n" + "\n".join([header, rule, *body]) + "\n"


_LATEX_ESCAPES = {
    "&": r"\&",
    "%": r"\%",
    "_": r"\_",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    "^": r"\^{}",
    # the symbols of the marks and the statistics tables, as text or maths commands
    "†": r"\dag{}",
    "‡": r"\ddag{}",
    "§": r"\S{}",
    "¶": r"\P{}",
    "‖": r"$\|$",
    "♯": r"$\sharp$",
    "♭": r"$\flat$",
    "−": "$-$",
    "×": r"$\times$",
    "ρ": r"$\rho$",
    "Δ": r"$\Delta$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
}


def _latex_escape(text: str) -> str:
    out = "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))
    return out.replace("±", r"$\pm$").replace("→", r"$\to$").replace("–", "--")


#: Columns of sentences: wrapped paragraphs in LaTeX.
PARAGRAPH_COLUMNS = {"claim": "5cm", "statistic": "6cm"}


def _latex_column(i: int, column: object) -> str:
    if str(column) in PARAGRAPH_COLUMNS:
        return f"p{{{PARAGRAPH_COLUMNS[str(column)]}}}"
    return "l" if i == 0 or str(column) in TEXT_COLUMNS else "r"


def to_latex(display: pd.DataFrame, title: str, label: str) -> str:
    """A booktabs table written by pandas' `Styler.to_latex`, cells escaped by `_latex_escape`
    (± and → as maths). Two touches Styler cannot make are added to its output: the rule that
    sets the `average` row apart (it has no rule above one body row) and `\\small` before the
    caption, so caption and body share the table's size (its own commands follow the caption)."""
    styler = (
        display.style.hide(axis="index").format(_latex_escape).format_index(_latex_escape, axis=1)
    )
    latex = styler.to_latex(
        column_format="".join(_latex_column(i, c) for i, c in enumerate(display.columns)),
        position="t",
        position_float="centering",
        hrules=True,
        label=f"tab:{label}",
        caption=_latex_escape(title),
        environment="table",
    )
    latex = latex.replace("\\centering\n", "\\centering\n\\small\n", 1)
    return latex.replace("\naverage & ", "\n\\midrule\naverage & ", 1)


def write_table(
    long: pd.DataFrame, display: pd.DataFrame, name: str, out_dir: Path, title: str | None = None
) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.{fmt}" for fmt in TABLE_FORMATS]
    title = title if title is not None else TITLES[name]
    long.to_csv(paths[0], index=False, float_format="%.10g")
    paths[1].write_text(to_markdown(display, title))
    paths[2].write_text(to_latex(display, title, name))
    return paths


# ---------------------------------------------------------------- comparisons, summary, claims
def _signed(value: float, scale: float, digits: int) -> str:
    return f"{round(value * scale, digits) + 0.0:+.{digits}f}".replace("-", "−")


def _estimate(value: float, lo: float, hi: float, scale: float = 100.0, digits: int = 1) -> str:
    """`+3.1 [+0.4, +5.9]` (points when scale is 100), `–` when unknown."""
    if _missing(value):
        return "–"
    text = _signed(value, scale, digits)
    if not (_missing(lo) or _missing(hi)):
        text += f" [{_signed(lo, scale, digits)}, {_signed(hi, scale, digits)}]"
    return text


def _p(value: float) -> str:
    if _missing(value):
        return "–"
    return "< 0.001" if value < 0.001 else f"{value:.2g}"


def _experiment(task: str, proxy: str) -> str:
    return f"{task}, proxy {proxy}"


def _with_experiment(long: pd.DataFrame, rows: list[dict]) -> pd.DataFrame:
    """The display rows, led by an experiment column when the table spans several."""
    display = pd.DataFrame(rows)
    several = len(long) and long[["task", "proxy"]].drop_duplicates().shape[0] > 1
    if several:
        display.insert(0, "experiment", [_experiment(t, p) for t, p in zip(long["task"], long["proxy"], strict=True)])  # fmt: skip
    return display


def comparisons_long(
    comparisons: Comparisons, pairs: Sequence[Pair], tests: pd.DataFrame
) -> pd.DataFrame:
    """Every pair across the languages of each (task, proxy), Holm-adjusted over the table, with
    the targets where the per-target test (Holm-adjusted within its task's table) finds the
    method higher (`n_higher`) or lower (`n_lower`)."""
    long = comparisons.language_table(pairs)
    long["p_holm"] = holm(long["p_value"].to_numpy()) if len(long) else []
    higher, lower = [], []
    for row in long.itertuples():
        mine = tests[
            (tests["task"] == row.task) & (tests["proxy"] == row.proxy)
            & (tests["method"] == row.method) & (tests["rival"] == row.rival)
        ] if len(tests) else tests  # fmt: skip
        significant = mine[mine["p_holm"] < ALPHA] if len(mine) else mine
        higher.append(int((significant["difference"] > 0).sum()) if len(significant) else 0)
        lower.append(int((significant["difference"] < 0).sum()) if len(significant) else 0)
    long["n_higher"], long["n_lower"] = higher, lower
    return long


def comparisons_display(long: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "comparison": f"{r.method} − {r.rival}",
            "Δ accuracy, pts [95% CI]": _estimate(r.difference, r.ci_lo, r.ci_hi),
            "p (Holm)": _p(r.p_holm),
            "targets Δ > 0": f"{r.n_positive}/{r.n_targets}",
            "targets differing ↑ / ↓": f"{r.n_higher} / {r.n_lower}",
        }
        for r in long.itertuples()
    ]
    if not rows:
        return pd.DataFrame(columns=["comparison"])
    return _with_experiment(long, rows)


def summary_display(long: pd.DataFrame) -> pd.DataFrame:
    if long.empty:
        return pd.DataFrame(columns=["method"])
    refs = ", ".join(dict.fromkeys(str(r) for r in long["reference"].dropna())) or "reference"
    rows = []
    for r in long.itertuples():
        reference = r.method == r.reference
        rows.append(
            {
                "method": r.method,
                "targets × seeds": f"{r.n_targets} × {r.n_seeds}",
                "accuracy (%)": _cell(r.accuracy_mean, None, 100.0),
                f"Δ vs {refs}, pts [95% CI]": "reference" if reference else _estimate(r.difference, r.ci_lo, r.ci_hi),
                f"wins vs {refs}": "–" if reference or _missing(r.wins) else f"{int(r.wins)}/{int(r.n_compared)}",
                "forgetting (pts)": "–" if _missing(r.forgetting_mean) else _signed(r.forgetting_mean, 100.0, 1),
                "% params updated (all / trainable)": f"{_params(r.pct_params_updated_mean)} / {_params(r.pct_params_updated_trainable_mean)}",
            }
        )  # fmt: skip
    return _with_experiment(long, rows)


def claims_display(long: pd.DataFrame) -> pd.DataFrame:
    if long.empty:
        return pd.DataFrame(columns=["claim"])
    rows = []
    for r in long.itertuples():
        rho = r.kind == "spearman"
        estimate = _estimate(r.estimate, r.ci_lo, r.ci_hi, 1.0 if rho else 100.0, 2 if rho else 1)
        rows.append(
            {
                "claim": r.text,
                "verdict": r.verdict + (f" ({r.note})" if r.note else ""),
                "estimate [95% CI]": ("ρ = " + estimate) if rho and estimate != "–" else estimate,
                "p": _p(r.p_value),
                "targets > 0": f"{r.n_positive}/{r.n_targets}" if r.n_targets else "–",
                "statistic": r.statistic,
            }
        )
    return _with_experiment(long, rows)


def build_tables(
    metrics_paths: Iterable[str | Path],
    out_dir: str | Path,
    tasks: Iterable[str] | None = None,
    compare: Mapping[str, Sequence[str]] | None = None,
    claims: Mapping[str, str | None] | None = None,
    n_boot: int = N_BOOT,
) -> dict[str, list[Path]]:
    """Write Table 1/2 for each task (default: the tasks present) and Table 3, with the marks of
    `compare` (the config's mapping method -> rivals); the comparisons table when `compare` is
    given, the summary and claims tables when `claims` (role -> method) is. Their paths by name."""
    records = read_records(metrics_paths)
    comparisons = Comparisons(records, n_boot)
    pairs = resolve(records, compare)
    marks = mark_symbols(pairs)
    out_dir = Path(out_dir)
    tasks = list(tasks) if tasks is not None else sorted(records["task"].unique())
    written, all_tests = {}, []
    for task in tasks:
        name = TABLE_OF_TASK[task]
        tests = target_tests(comparisons, pairs, task)
        all_tests.append(tests)
        long = task_table(records, task, tests, list(marks))
        display = task_display(long, marks) if not long.empty else pd.DataFrame(columns=["pair"])
        ran = {(t.method, t.rival) for t in tests.itertuples()}
        legend = marks_legend([p for p in pairs if (p.method, p.rival) in ran], len(tests))
        written[name] = write_table(long, display, name, out_dir, task_title(task, legend))
    long = forgetting_table(records)
    written[TABLE_FORGETTING] = write_table(
        long, forgetting_display(long), TABLE_FORGETTING, out_dir
    )
    if compare is not None:
        tests = pd.concat(all_tests, ignore_index=True) if all_tests else pd.DataFrame()
        long = comparisons_long(comparisons, pairs, tests)
        written[TABLE_COMPARISONS] = write_table(
            long, comparisons_display(long), TABLE_COMPARISONS, out_dir
        )
    if claims is not None:
        long = summary_rows(comparisons, claims)
        written[TABLE_SUMMARY] = write_table(long, summary_display(long), TABLE_SUMMARY, out_dir)
        long = claim_rows(comparisons, claims)
        written[TABLE_CLAIMS] = write_table(long, claims_display(long), TABLE_CLAIMS, out_dir)
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
