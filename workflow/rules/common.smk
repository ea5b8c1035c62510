# Target lists, path patterns and named input/param functions shared by every rule file.
# Every path comes from ctsft.layout.path (its docstring draws the layout); a rule's output is
# path(<artifact>) with wildcards, its consumers name it as rules.<rule>.output where they can.

import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.iocontainers import Wildcards
from snakemake.logging import logger

from ctsft.data.tasks import TASKS
from ctsft.layout import (
    CIRCUIT_JOB,
    FIGURES,
    PROXY_JOB,
    RUN_JOB,
    SEED_JOB,
    TABLE_CLAIMS,
    TABLE_COMPARISONS,
    TABLE_FORGETTING,
    TABLE_FORMATS,
    TABLE_OF_TASK,
    TABLE_SUMMARY,
    path,
    variant_name,
)
from ctsft.job_configs import check_job_configs
from ctsft.profile_check import check_profile
from ctsft.workflow_config import (
    check_config,
    hydra_quote,
    model_slug,
    override_value,
    resolve_data_root,
    step_overrides,
    variant_method_config,
)

R = config["results_dir"].rstrip("/")
M = config["models_dir"].rstrip("/")
# MODEL_ID: a name of config/hydra/model/ or hub:<org>/<name>; MODEL: its path component (the
# {model} wildcard), hub--<org>--<name> for a hub model (a path component cannot hold `/`).
MODEL_ID = config["model"]
MODEL = model_slug(MODEL_ID)
SEEDS = [int(s) for s in config["seeds"]]
PROXY_SEED = int(config["proxy_seed"])
KS = [str(k) for k in config["ks"]]
METHODS = {spec["name"]: spec for spec in config["methods"]}
TASKS_RUN = sorted({exp["task"] for exp in config["experiments"]})
WANDB = config["wandb"]
# `gpu` resource of every heavy rule: `--resources gpu=N` runs at most N of them at once locally,
# and the SLURM plugin requests that many GPUs per job (0 on a CPU-only cluster).
GPUS_PER_JOB = int(config.get("gpus_per_job", 1))


def _check_config():
    """What the schema cannot say (ctsft.workflow_config.check_config): unique names, targets
    other than the proxy, method variants that name their method and the circuit it needs.
    Then every kind of job's Hydra config, composed once (ctsft.job_configs): a wrong type, an
    unknown key or a k beyond the model's heads stops here, before any job runs.
    """
    check_config(config)
    check_job_configs(config, path("model_dir", M=M, model=MODEL), logger.warning)


def _check_profile():
    """A cluster profile with `<...>` placeholders left in (ctsft.profile_check): a submission
    stops in one line naming the key and the file, a dry run warns."""
    settings = workflow.resource_settings
    default = settings.default_resources
    check_profile(
        getattr(default, "args", None) or [],
        settings.overwrite_resources or {},
        sys.argv,
        WorkflowError,
        logger.warning,
    )


_check_config()
_check_profile()


def _alternatives(values):
    """A regex that matches exactly one of `values` (a closed wildcard)."""
    return "|".join(re.escape(str(v)) for v in sorted(set(values), key=str))


def targets_of(experiment):
    """Target languages of one experiment (`all`: every language of the task but the proxy;
    an explicit list naming the proxy was rejected by the config check)."""
    targets = experiment.get("targets", "all")
    if targets == "all":
        return [
            t for t in TASKS[experiment["task"]].languages if t != experiment["proxy"]
        ]
    return list(targets)


def variants():
    """Every (variant, method name, k or None) of the config: one per circuit size for circuit methods."""
    out = []
    for name, spec in METHODS.items():
        if spec.get("circuit", False):
            out.extend((variant_name(name, k), name, k) for k in KS)
        else:
            out.append((name, name, None))
    return out


VARIANTS = {variant: (name, k) for variant, name, k in variants()}
TRANSFER_VARIANTS = [
    v for v, (name, _) in VARIANTS.items() if METHODS[name].get("transfer", True)
]


def trains_every_parameter(spec):
    """Whether a method variant is of kind `all` (continued full fine-tuning): its checkpoint is
    the large one, which `keep_full_checkpoints: false` makes temporary."""
    overrides = spec["overrides"]
    method = variant_method_config(override_value(overrides, "method"), overrides)
    return method.get("kind") == "all"


# With keep_full_checkpoints false, full fine-tuning's variants go to `transfer_temp`, whose
# checkpoint Snakemake deletes once its evaluation (and mechanism) jobs are done.
TEMP_VARIANTS = [
    v
    for v in TRANSFER_VARIANTS
    if not config.get("keep_full_checkpoints", True)
    and trains_every_parameter(METHODS[VARIANTS[v][0]])
]
KEPT_VARIANTS = [v for v in TRANSFER_VARIANTS if v not in TEMP_VARIANTS]
# Variants evaluated as is (theta_1 itself, zero-shot): one `evaluate_as_is` job each; every
# transferred variant of a pair and seed is scored by one `evaluate` job.
AS_IS_VARIANTS = [v for v in VARIANTS if v not in TRANSFER_VARIANTS]


def split_variant(variant):
    """(method name, k or None) of a variant wildcard."""
    return VARIANTS[variant]


def pairs():
    """Every configured (task, proxy, target)."""
    return [
        (exp["task"], exp["proxy"], target)
        for exp in config["experiments"]
        for target in targets_of(exp)
    ]


def proxies():
    """Every configured (task, proxy)."""
    return list(
        dict.fromkeys((exp["task"], exp["proxy"]) for exp in config["experiments"])
    )


def run_seeds(variant):
    """Seeds of a variant: zero-shot evaluates the one proxy checkpoint once."""
    name, _ = split_variant(variant)
    return SEEDS if METHODS[name].get("transfer", True) else [PROXY_SEED]


# ---------------------------------------------------------------- paths
def at(artifact, **coordinates):
    """ctsft.layout.path with this config's folders (R, M): a rule's output pattern when given
    no coordinates, a concrete path when given all of them."""
    return path(artifact, R=R, M=M, **coordinates)


PROXY = PROXY_JOB  # wildcards of a proxy-level job (its log and benchmark names)
RUN = RUN_JOB  # wildcards of one transfer run
SEED = SEED_JOB  # wildcards of one pair and seed (the evaluation of all its transfers)


def logfile(rule, job, root=R):
    """Log file of a job of `rule` (job: the job's wildcards)."""
    return path("log", root=root, rule=rule, job=job)


def benchfile(rule, job, root=R):
    """Benchmark TSV of a job of `rule`."""
    return path("benchmark", root=root, rule=rule, job=job)


def metrics_files():
    """Every evaluation of the grid (the inputs of the tables and figures)."""
    return [
        at(
            "metrics",
            task=task,
            model=MODEL,
            proxy=proxy,
            target=target,
            variant=variant,
            seed=seed,
        )
        for task, proxy, target in pairs()
        for variant in VARIANTS
        for seed in run_seeds(variant)
    ]


def proxy_files(artifact, per_k=False):
    """`artifact` of every configured (task, proxy), and every k when `per_k`."""
    return [
        at(artifact, task=task, model=MODEL, proxy=proxy, **({"k": k} if per_k else {}))
        for task, proxy in proxies()
        for k in (KS if per_k else [None])
    ]


def faithfulness_files():
    if not config.get("report", {}).get("faithfulness", True):
        return []
    return proxy_files("faithfulness", per_k=True)


# The statistics of the config's compare and claims (ctsft.report.claims), beside Tables 1-3.
STATISTICS_TABLES = [TABLE_COMPARISONS, TABLE_SUMMARY, TABLE_CLAIMS]


def table_files():
    names = [TABLE_OF_TASK[task] for task in TASKS_RUN] + [TABLE_FORGETTING]
    names += STATISTICS_TABLES
    return [
        at("table", table=name, format=fmt) for name in names for fmt in TABLE_FORMATS
    ]


def table_caption(path):
    """The report caption of a table file: the paper's tables, or the statistics."""
    statistics = Path(path).stem in STATISTICS_TABLES
    return "../report/statistics.rst" if statistics else "../report/tables.rst"


def table_category(path):
    return (
        "Claims and comparisons" if Path(path).stem in STATISTICS_TABLES else "Tables"
    )


def figure_files():
    return [at("figure", figure=name) for name in FIGURES]


def all_targets():
    return (
        table_files()
        + figure_files()
        + proxy_files("heatmap")
        + proxy_files("circuit", per_k=True)
        + faithfulness_files()
    )


# ---------------------------------------------------------------- input functions
# (where the variant decides the input; the other inputs are rules.<rule>.output)
def proxy_checkpoint(wildcards):
    return at("proxy_checkpoint", **wildcards)


def transfer_inputs(wildcards):
    """The proxy checkpoint, plus the circuit of the variant's k for circuit methods."""
    name, k = split_variant(wildcards.variant)
    inputs = {"proxy_checkpoint": proxy_checkpoint(wildcards)}
    if METHODS[name].get("circuit", False):
        inputs["circuit"] = at("circuit", **{**wildcards, "k": k})
    return inputs


def with_variant(wildcards, variant):
    """The wildcards of a pair-and-seed job, completed to one run's."""
    return Wildcards(fromdict={**dict(wildcards.items()), "variant": variant})


def seed_checkpoints(wildcards):
    """Every transferred checkpoint of one pair and seed (the inputs of its `evaluate` job)."""
    return [at("checkpoint", **with_variant(wildcards, v)) for v in TRANSFER_VARIANTS]


def seed_metrics():
    """Output pattern of an `evaluate` job: one metrics.json per transferred variant."""
    return expand(at("metrics"), variant=TRANSFER_VARIANTS, allow_missing=True)


# ---------------------------------------------------------------- Hydra overrides (params)
# The data folder the steps read, resolved now (config data_root, else $CTSFT_DATA_ROOT, else
# ../shared/data) and passed to every step as data.root: a params change, so pointing it
# elsewhere reruns every job that reads data.
DATA_ROOT = resolve_data_root(config.get("data_root"))


def model_override(wildcards):
    """`model=<name>` of the {model} wildcard (closed over MODEL): the config's model itself, as
    the path holds only its slug (ctsft.config.compose reads model=hub:<org>/<name>)."""
    return f"model={MODEL_ID}"


def _common(wildcards, step, rule):
    """Overrides every step gets: task, model, data root, wandb grouping, per-step extras."""
    overrides = [
        f"task={wildcards.task}",
        model_override(wildcards),
        f"grid.model={hydra_quote(MODEL_ID)}",  # the record's coordinates (ctsft.config.coordinates)
        f"data.root={hydra_quote(DATA_ROOT)}",
    ]
    # wandb run name: the wildcards, e.g. task-nusax_model-e5_small_proxy-ind_..._variant-ctsft-k0.05
    name = re.sub(r"[^\w.-]+", "-", "_".join(f"{k}-{v}" for k, v in wildcards.items()))
    overrides += [
        f"wandb.mode={WANDB.get('mode', 'disabled')}",
        f"wandb.project={WANDB.get('project', 'ctsft')}",
        f"wandb.group={wildcards.task}",  # the table: nusax (Table 1) or xnli (Table 2)
        f"wandb.job_type={rule}",
        f"wandb.name={name or rule}",
    ]
    return overrides + step_extras(step, wildcards)


def step_extras(step, wildcards=None):
    """`hydra_overrides` of `step` for a job (ctsft.workflow_config.step_overrides)."""
    if wildcards is None or "proxy" not in wildcards.keys():
        return step_overrides(config, step)
    return step_overrides(config, step, (wildcards.task, wildcards.proxy))


def overrides_model(wildcards):
    return [model_override(wildcards)] + step_extras("prepare_model")


def _proxy(wildcards, step, rule):
    """Overrides of a proxy-level job (seed = proxy_seed)."""
    return _common(wildcards, step, rule) + [
        f"proxy={wildcards.proxy}",
        f"target={wildcards.proxy}",
        f"seed={PROXY_SEED}",
    ]


def _circuit_size(wildcards, step):
    """Overrides of a job of one circuit size: cdt.k, and k as the record's coordinate."""
    k = wildcards.k
    return _proxy(wildcards, step, step) + [f"cdt.k={k}", f"grid.k='{k}'"]


def overrides_finetune(wildcards):
    return _proxy(wildcards, "finetune", "finetune")


def overrides_proxy_eval(wildcards):
    return _proxy(wildcards, "evaluate", "evaluate_proxy") + ["method=zero_shot"]


def overrides_mean_baseline(wildcards):
    return _proxy(wildcards, "mean_baseline", "mean_baseline")


def overrides_score_heads(wildcards):
    return _proxy(wildcards, "score_heads", "score_heads")


def overrides_select_circuit(wildcards):
    return _circuit_size(wildcards, "select_circuit")


def overrides_faithfulness(wildcards):
    return _circuit_size(wildcards, "faithfulness")


def _pair(wildcards, step, rule):
    name, k = split_variant(wildcards.variant)
    ov = _common(wildcards, step, rule)
    ov += [
        f"proxy={wildcards.proxy}",
        f"target={wildcards.target}",
        f"seed={wildcards.seed}",
        f"grid.variant={name}",
    ]
    ov += [] if k is None else [f"grid.k='{k}'"]
    return ov + list(METHODS[name]["overrides"])


def overrides_transfer(wildcards):
    return _pair(wildcards, "transfer", "transfer")


def overrides_evaluate(wildcards):
    return _pair(wildcards, "evaluate", "evaluate_as_is")


def evaluation_runs(wildcards):
    """One override list per transferred variant of a pair and seed, its io.* paths included:
    the `evaluate` job runs `ctsft.steps.evaluate` once per list, in one process."""
    runs = []
    for variant in TRANSFER_VARIANTS:
        run = with_variant(wildcards, variant)
        io = {
            "checkpoint": at("checkpoint", **run),
            "baseline_metrics": at("proxy_metrics", **wildcards),
            "metrics": at("metrics", **run),
        }
        runs.append(
            _pair(run, "evaluate", "evaluate")
            + [f"++io.{key}={hydra_quote(value)}" for key, value in io.items()]
        )
    return runs
