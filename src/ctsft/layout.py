"""Where every artifact of the workflow lives: one template per artifact, one function to fill it.

    R/{task}/{model}/{proxy}/proxy_checkpoint/            theta_1 (competence tuning)
    R/{task}/{model}/{proxy}/proxy_eval/metrics.json      theta_1 on the proxy test set
    R/{task}/{model}/{proxy}/mu.safetensors               label-balanced mean baseline
    R/{task}/{model}/{proxy}/scores.tsv, heatmap.png      CD-T head scores
    R/{task}/{model}/{proxy}/k{k}/circuit.json            selected heads (+ near_zero, random)
    R/{task}/{model}/{proxy}/k{k}/faithfulness.json
    R/{task}/{model}/{proxy}-{target}/{variant}/seed{seed}/checkpoint/     transfer
    R/{task}/{model}/{proxy}-{target}/{variant}/seed{seed}/metrics.json    evaluation
    R/{task}/{model}/{proxy}-{target}/{variant}/seed{seed}/mechanism.json  heads re-scored on
        the target by theta_1 and CT-SFT vs the proxy (+ mechanism_scores.tsv; ctsft variants)
    R/tables/, R/figures/, R/logs/{rule}/{job}.log, R/benchmarks/{rule}/{job}.tsv
    M/{model}/ the prepared base model (its log and benchmark under M/logs, M/benchmarks)

R is the config's results_dir, M its models_dir. {variant} is a method variant's name, or
`<name>/k<k>` for a variant that reads a circuit (the circuit size is part of what varies);
{model} is the model's path component (`hub--org--name` for `hub:org/name`).

The rules call `path(artifact, **coordinates)`: coordinates it is not given stay `{wildcards}`,
so the same call gives a rule's output pattern and an input function's concrete path. Nothing
parses these paths back: every record a step writes names its own grid coordinates
(`ctsft.config.coordinates`), and the tables read those. Torch-free: Snakemake imports it.
"""

from __future__ import annotations

import string
from typing import Any

#: The wildcards of a proxy-level job, of one circuit size, of one transfer run and of one pair and
#: seed (the evaluation of all its runs): their folders, log and benchmark names.
PROXY_JOB = "{task}/{model}/{proxy}"
CIRCUIT_JOB = PROXY_JOB + "/k{k}"
RUN_JOB = "{task}/{model}/{proxy}-{target}/{variant}/seed{seed}"
SEED_JOB = "{task}/{model}/{proxy}-{target}/seed{seed}"
PROXY = "{R}/" + PROXY_JOB
CIRCUIT = "{R}/" + CIRCUIT_JOB
RUN = "{R}/" + RUN_JOB

TEMPLATES: dict[str, str] = {
    "model_dir": "{M}/{model}",
    "proxy_checkpoint": f"{PROXY}/proxy_checkpoint",
    "proxy_metrics": f"{PROXY}/proxy_eval/metrics.json",
    "mu": f"{PROXY}/mu.safetensors",
    "scores": f"{PROXY}/scores.tsv",
    "heatmap": f"{PROXY}/heatmap.png",
    "circuit": f"{CIRCUIT}/circuit.json",
    "faithfulness": f"{CIRCUIT}/faithfulness.json",
    "checkpoint": f"{RUN}/checkpoint",
    "metrics": f"{RUN}/metrics.json",
    "mechanism": f"{RUN}/mechanism.json",
    "mechanism_scores": f"{RUN}/mechanism_scores.tsv",
    "table": "{R}/tables/{table}.{format}",
    "figure": "{R}/figures/{figure}.png",
    "log": "{root}/logs/{rule}/{job}.log",
    "benchmark": "{root}/benchmarks/{rule}/{job}.tsv",
}

#: Table file name of each task (also the wandb group), the forgetting table, their formats.
TABLE_OF_TASK = {"nusax": "table1_nusax", "xnli": "table2_xnli"}
TABLE_FORGETTING = "table3_forgetting"
#: The statistics of the config's `compare` and `claims` (ctsft.report.claims): every comparison
#: across the languages of a proxy, one row per method against the reference, the paper's claims.
TABLE_COMPARISONS = "comparisons"
TABLE_SUMMARY = "summary"
TABLE_CLAIMS = "claims"
TABLE_FORMATS = ("csv", "md", "tex")
FIGURES = ("accuracy_vs_params", "forgetting", "tradeoff")
#: Table and figure of the mechanism-transfer comparison (rule mechanism_report; only built when a
#: variant trains the circuit heads, so kept apart from the tables and FIGURES of every run).
TABLE_MECHANISM = "mechanism_transfer"
FIGURE_MECHANISM = "mechanism_transfer"


class _Partial(dict):
    """Format mapping that leaves a missing coordinate as its `{wildcard}`."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def path(artifact: str, **coordinates: Any) -> str:
    """The path of `artifact` at `coordinates` (R and M included); the rest stay wildcards."""
    if artifact not in TEMPLATES:
        raise KeyError(f"unknown artifact {artifact!r}: one of {', '.join(TEMPLATES)}")
    return string.Formatter().vformat(TEMPLATES[artifact], (), _Partial(coordinates))


def variant_name(name: str, k: Any | None) -> str:
    """The {variant} path component of a method variant (`ctsft/k0.05` for a circuit size)."""
    return name if k is None else f"{name}/k{k}"
