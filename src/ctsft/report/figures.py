"""The paper's figures from evaluation metrics files (head-score heatmaps come from score_heads).

- accuracy_vs_params: target accuracy against the % of parameters a method updates (log x axis),
  one panel per task and proxy; small dots are (target, seed) runs, large markers the method mean.
- forgetting: proxy accuracy change by transfer (after − before, negative = forgotten), mean ± std
  over targets and seeds, per method.
- tradeoff: editing vs. preserving, the figure of the claim `harder_favours_circuit`
  (`ctsft.report.claims`). For every target, the gain of training the circuit heads over
  training the NearZero heads (target accuracy of the config's `claims` roles method − near_zero,
  mean over seeds, error bar: the sample std of the per-seed gains) against the zero-shot
  accuracy there (the zero_shot role: how hard the transfer is), with Spearman's rho in the
  legend. The paper's finding: hard transfers (low zero-shot accuracy) favour editing circuit
  heads, easy ones favour NearZero, i.e. rho < 0.
- mechanism_transfer (`mechanism_figure`, from the mechanism records and their per-head TSVs):
  proxy head scores against the same heads' scores on the target language, by theta_1 and by the
  CT-SFT model, one panel each per pair (first seed); proxy circuit heads in red, the target's
  own top-k ringed.

    build_figures(metrics_paths, {"accuracy_vs_params": "a.png", "forgetting": "f.png", "tradeoff": "t.png"},
                  claims={"method": "ctsft", "near_zero": "near_zero", "zero_shot": "zero_shot"})
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ctsft.layout import FIGURES as FIGURES  # noqa: E402  (re-exported: the figure names)
from ctsft.report.claims import MIN_TARGETS_RHO, difficulty_points  # noqa: E402
from ctsft.report.mechanism import COMPARISON_LABELS, COMPARISONS, read_mechanism  # noqa: E402
from ctsft.report.records import method_sort_key, read_records  # noqa: E402
from ctsft.report.stats import rank_correlation  # noqa: E402


def _panels(records: pd.DataFrame) -> list[tuple[str, str]]:
    return sorted({(t, p) for t, p in zip(records["task"], records["proxy"], strict=True)})


def _colors(labels: Iterable[str]) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {label: cmap(i % 10) for i, label in enumerate(sorted(set(labels), key=method_sort_key))}


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _figure(n: int, width: float = 5.0, height: float = 4.0):
    fig, axes = plt.subplots(1, max(n, 1), figsize=(width * max(n, 1), height), squeeze=False)
    return fig, axes[0]


def _panel_figure(records: pd.DataFrame):
    """One titled panel per (task, proxy): the figure, the method colours and (axes, runs) pairs."""
    panels = _panels(records)
    fig, axes = _figure(len(panels))
    if not panels:
        _empty(axes[0], "no evaluations")
    cells = []
    for ax, (task, proxy) in zip(axes, panels, strict=False):
        ax.set_title(f"{task}, proxy {proxy}")
        cells.append((ax, records[(records["task"] == task) & (records["proxy"] == proxy)]))
    return fig, _colors(records["label"]), cells


def accuracy_vs_params(records: pd.DataFrame, out: str | Path) -> Path:
    fig, colors, cells = _panel_figure(records)
    for ax, runs in cells:
        for label in sorted(runs["label"].unique(), key=method_sort_key):
            sub = runs[runs["label"] == label]
            x = sub["pct_params_updated"].fillna(0.0)
            ax.scatter(x, sub["accuracy"], color=colors[label], alpha=0.3, s=12)
            ax.scatter(
                x.mean(),
                sub["accuracy"].mean(),
                color=colors[label],
                s=80,
                edgecolor="k",
                label=label,
            )
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("% of all weights updated (symlog)")
        ax.set_ylabel("target accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def forgetting_bars(records: pd.DataFrame, out: str | Path) -> Path:
    fig, colors, cells = _panel_figure(records)
    for ax, runs in cells:
        stats = runs.groupby("label")["forgetting"].agg(["mean", "std"]).fillna(0.0)
        order = sorted(stats.index, key=method_sort_key)
        ax.bar(
            range(len(order)),
            stats.loc[order, "mean"],
            yerr=stats.loc[order, "std"],
            color=[colors[label] for label in order],
            capsize=3,
        )
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_ylabel("proxy accuracy change (after − before)")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def tradeoff_points(
    records: pd.DataFrame, roles: Mapping[str, str | None] | None = None
) -> pd.DataFrame:
    """Per target: zero-shot accuracy and the mean accuracy gain of the `method` role over the
    `near_zero` role, with its spread over seeds (`ctsft.report.claims.difficulty_points`; the
    roles are the config's `claims`)."""
    return difficulty_points(records, roles)


def _rho_label(points: pd.DataFrame) -> str:
    """Spearman's rho of the points (claim harder_favours_circuit: claimed < 0), for the legend."""
    if len(points) < MIN_TARGETS_RHO:
        return ""
    rho = rank_correlation(points["zero_shot"], points["gain"])
    return "" if math.isnan(rho) else f", ρ = {rho:.2f}"


def tradeoff(
    records: pd.DataFrame, out: str | Path, roles: Mapping[str, str | None] | None = None
) -> Path:
    points = tradeoff_points(records, roles)
    fig, axes = _figure(1, width=6.0)
    ax = axes[0]
    if points.empty:
        needs = ", ".join(str((roles or {}).get(r) or r) for r in ("zero_shot", "method", "near_zero"))  # fmt: skip
        _empty(ax, f"needs {needs} evaluations of the same pairs\n(the config's claims roles)")
    else:
        cmap = plt.get_cmap("tab10")
        groups = points.groupby(["task", "proxy", "method", "rival"], sort=True)
        for i, ((task, proxy, method, rival), group) in enumerate(groups):
            ax.errorbar(
                group["zero_shot"],
                group["gain"],
                yerr=group["seed_sd"].fillna(0.0),
                fmt="o",
                capsize=3,
                color=cmap(i % 10),
                label=f"{task}, proxy {proxy}: {method} − {rival}{_rho_label(group)}",
            )
            for _, row in group.iterrows():
                ax.annotate(
                    row["target"],
                    (row["zero_shot"], row["gain"]),
                    fontsize=8,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.set_xlabel("zero-shot target accuracy (transfer difficulty: low = hard)")
        ax.set_ylabel("accuracy gain: circuit heads − NearZero heads\n(mean over seeds, ± seed sd)")
        ax.set_title("editing vs. preserving (claimed: ρ < 0)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


MECHANISM_PAIRS_PER_ROW = 3


def _first_seeds(
    records: list[dict], tables: list[pd.DataFrame]
) -> list[tuple[dict, pd.DataFrame]]:
    """One (record, per-head table) per pair and variant: the lowest seed (a panel per seed
    would multiply the figure by the seeds; the table has them all)."""
    chosen: dict[tuple, tuple[dict, pd.DataFrame]] = {}
    for record, table in sorted(
        zip(records, tables, strict=True), key=lambda rt: int(rt[0]["grid"].get("seed") or 0)
    ):
        g = record["grid"]
        chosen.setdefault((g["task"], g["proxy"], g["target"], g.get("variant")), (record, table))
    return [chosen[key] for key in sorted(chosen, key=str)]


def _mechanism_panel(ax, record: dict, table: pd.DataFrame, comparison: str) -> None:
    g, result = record["grid"], record["comparisons"][comparison]
    top = {tuple(h) for h in result["top_k"]}
    in_top = [(a, b) in top for a, b in zip(table["layer"], table["head"], strict=True)]
    circuit = table["in_circuit"].astype(str).str.lower() == "true"
    rest = ~circuit
    ax.scatter(
        table["proxy"][rest], table[comparison][rest], s=10, color="0.6", label="other heads"
    )
    ax.scatter(
        table["proxy"][circuit], table[comparison][circuit], s=24, color="tab:red",
        label="proxy circuit",
    )  # fmt: skip
    ax.scatter(
        table["proxy"][in_top], table[comparison][in_top], s=70, facecolors="none",
        edgecolors="k", label=f"target top-{record['k']}",
    )  # fmt: skip
    ov = result["overlap"]["circuit"]
    who = COMPARISON_LABELS.get(comparison, comparison)
    ax.set_title(
        f"{g['proxy']} → {g['target']} ({g.get('variant')}): {who}\n"
        f"circuit {ov['overlap']}/{record['k']} in top-k, J={ov['jaccard']:.2f}, "
        f"p={ov['p_value']:.2g}, rho={result['spearman']['rho']:.2f}",
        fontsize=8,
    )
    ax.set_xlabel(f"proxy ({g['proxy']}) {record['score_kind']} score", fontsize=8)
    ax.set_ylabel(f"target ({g['target']}) score, {who}", fontsize=8)
    ax.grid(alpha=0.3)


def mechanism_figure(
    record_paths: Iterable[str | Path], score_paths: Iterable[str | Path], out: str | Path
) -> Path:
    """Proxy vs target head scores, one panel per (pair, model scored on the target)."""
    records = [read_mechanism(p) for p in record_paths]
    tables = [pd.read_csv(p, sep="\t") for p in score_paths]
    cells = _first_seeds(records, tables)
    per_row = 2 * min(max(len(cells), 1), MECHANISM_PAIRS_PER_ROW)
    n_rows = max(1, -(-len(cells) * 2 // per_row))
    fig, axes = plt.subplots(n_rows, per_row, figsize=(3.6 * per_row, 3.2 * n_rows), squeeze=False)
    flat = list(axes.flat)
    if not cells:
        _empty(flat[0], "no mechanism records")
    for i, (record, table) in enumerate(cells):
        for j, comparison in enumerate(COMPARISONS):
            _mechanism_panel(flat[2 * i + j], record, table, comparison)
    if cells:
        flat[0].legend(fontsize=7, loc="best", framealpha=0.6)
        for ax in flat[2 * len(cells) :]:
            ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, out, dpi=150 if len(cells) <= 6 else 100)


def _save(fig, out: str | Path, dpi: int = 150) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out


def build_figures(
    metrics_paths: Iterable[str | Path],
    outputs: Mapping[str, str | Path],
    claims: Mapping[str, str | None] | None = None,
) -> dict[str, Path]:
    """Draw the figures named in `outputs` (a subset of FIGURES) to the given paths; `claims`
    (role -> method, the config's) says which methods the tradeoff figure compares."""
    records = read_records(metrics_paths)
    draw = {
        "accuracy_vs_params": accuracy_vs_params,
        "forgetting": forgetting_bars,
        "tradeoff": lambda frame, path: tradeoff(frame, path, claims),
    }
    return {name: draw[name](records, path) for name, path in outputs.items()}
