"""Every job's config composed once before any job starts, so a bad value is a parse-time error.

The Snakemake config check (workflow/rules/common.smk) calls `check_job_configs`: for each
experiment it composes the base config once with Hydra, then, for each kind of step and each
method variant and circuit size, applies that job's overrides (`hydra_overrides` of `all`, of the
step, of the experiment; the variant's `overrides`; `cdt.k`) to a copy, typed by the schemas
(`ctsft.config_schema`) and range-checked (`ctsft.config.VALUE_CHECKS`) exactly as the step will
compose it. A wrong type, an unknown key, a malformed override or a k the model cannot have is
one line naming the config key it came from, before any job has run; a k that selects every
head is a warning.

No torch: only Hydra and OmegaConf (Snakemake imports this on every invocation).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Callable, Iterator
from itertools import takewhile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ctsft.config import apply_overrides, compose_with_files, finish, hub_overrides
from ctsft.errors import CtsftError

#: the steps whose jobs compose a config, and what their rules add (common.smk)
PROXY_STEPS = ("finetune", "mean_baseline", "score_heads", "evaluate")
K_STEPS = ("select_circuit", "faithfulness", "mechanism")
PAIR_STEPS = ("transfer", "evaluate")

Override = tuple[str, str]  # (the override, the config key it came from)


def _shared(where: str) -> bool:
    """Whether every job of an experiment has the override: its task, `hydra_overrides.all`."""
    return where == "experiments" or where.startswith("hydra_overrides.all[")


def _error(message: str) -> Exception:
    from snakemake.exceptions import WorkflowError  # not at import: tests call this without it

    return WorkflowError(message)


def _sourced(config: dict, step: str, experiment: tuple[str, str] | None) -> list[Override]:
    """`ctsft.workflow_config.step_overrides` of a job (the same order: a test keeps them equal),
    each with the config key that holds it."""
    out: list[Override] = []
    layers = [("hydra_overrides", config.get("hydra_overrides") or {})]
    for i, exp in enumerate(config["experiments"]):
        if experiment is not None and (exp["task"], exp["proxy"]) == experiment:
            layers.append((f"experiments[{i}].hydra_overrides", exp.get("hydra_overrides") or {}))
    for where, extras in layers:
        for key in ("all", step):
            out += [(str(o), f"{where}.{key}[{j}]") for j, o in enumerate(extras.get(key, []))]
    return out


def jobs(config: dict) -> Iterator[tuple[str, list[Override]]]:
    """(job, its overrides with their sources) for every kind of job of the config, once per
    distinct override list (grid coordinates, paths and wandb names do not change a type)."""
    model = [(f"model={config['model']}", "model")]
    yield "prepare_model", model + _sourced(config, "prepare_model", None)
    for exp in config["experiments"]:
        key = (exp["task"], exp["proxy"])
        base = model + [(f"task={exp['task']}", "experiments")]
        where = f"{exp['task']}/{exp['proxy']}"
        for step in PROXY_STEPS:
            extra = [("method=zero_shot", step)] if step == "evaluate" else []
            yield f"{step} ({where})", base + _sourced(config, step, key) + extra
        for i, k in enumerate(config["ks"]):
            for step in K_STEPS:
                cdt_k = [(f"cdt.k={k}", f"ks[{i}]")]
                yield f"{step} ({where}, k {k})", base + _sourced(config, step, key) + cdt_k
        for i, spec in enumerate(config["methods"]):
            own = [(str(o), f"methods[{i}] ({spec['name']}).overrides") for o in spec["overrides"]]
            steps = PAIR_STEPS if spec.get("transfer", True) else ("evaluate",)
            for step in steps:
                yield f"{step} ({where}, {spec['name']})", base + _sourced(config, step, key) + own


def _compose_job(
    bases: dict[str, tuple[DictConfig, dict[str, str]]], overrides: list[Override]
) -> DictConfig:
    """One job's config: the task's Hydra composition, then the job's own overrides in order."""
    model = overrides[0][0]  # model=<name>: the one Hydra composition
    if model not in bases:
        bases[model] = compose_with_files([model])
    base_files = bases[model][1]
    # the prefix every job of an experiment shares (model, task, hydra_overrides.all): once
    shared = 1 + len(list(takewhile(lambda o: _shared(o[1]), overrides[1:])))
    prefix = tuple(o for o, _ in overrides[:shared])
    if prefix not in bases:
        cfg, files = copy.deepcopy(bases[model][0]), dict(base_files)
        _apply(cfg, overrides[1:shared], files)
        bases[prefix] = (cfg, files)
    cfg, files = copy.deepcopy(bases[prefix][0]), dict(bases[prefix][1])
    _apply(cfg, overrides[shared:], files)
    try:
        return finish(cfg, files, groups=[g for g in files if files[g] != base_files[g]])
    except CtsftError as err:
        raise _error(f"config: {_culprit(str(err), overrides)}: {err}") from None


def _apply(cfg: DictConfig, overrides: list[Override], files: dict[str, str]) -> None:
    for text, where in overrides:
        try:
            apply_overrides(cfg, hub_overrides([text]), files)
        except CtsftError as err:
            raise _error(f"config: {where}: {err}") from None


def _culprit(message: str, overrides: list[Override]) -> str:
    """The config key of the last override that set the key a message names."""
    named = re.search(r"bad config value ([\w.]+)=", message)
    if named:
        for text, where in reversed(overrides):
            if text.lstrip("+").split("=", 1)[0] == named.group(1):
                return where
    return "the composed config"


def model_heads(folder: str | Path | None, declared: int | None) -> int | None:
    """Attention heads of the model (layers x query heads): its prepared folder's config.json
    when it exists, else `model.total_heads` of its YAML (None: unknown)."""
    path = Path(folder) / "config.json" if folder else None
    if path is not None and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return declared
        data = data.get("text_config") or data
        layers = data.get("num_hidden_layers") or data.get("n_layer")
        heads = data.get("num_attention_heads") or data.get("n_head")
        if isinstance(layers, int) and isinstance(heads, int):
            return layers * heads
    return declared


def check_ks(ks: list[Any], heads: int | None, model: str, warn: Callable[[str], None]) -> None:
    """A head count beyond the model is an error; a k that selects every head, a warning."""
    if heads is None:
        return
    for i, k in enumerate(ks):
        fraction = isinstance(k, float) and not (k.is_integer() and k > 1)
        count = max(1, round(k * heads)) if fraction else int(k)  # ctsft.circuit.resolve_k
        if count > heads:
            raise _error(
                f"config: ks[{i}] is {k}, more heads than {model} has ({heads}): "
                f"use at most {heads}, or a fraction such as 0.05"
            )
        if count == heads:
            warn(
                f"config: warning: ks[{i}] = {k} selects all {heads} heads of {model}: the "
                "circuit, NearZero and random head sets are then the same heads"
            )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def check_job_configs(
    config: dict, model_dir: str | Path | None = None, warn: Callable[[str], None] = _stderr
) -> int:
    """Compose every kind of job's config of the (validated) Snakemake `config`; raise a one-line
    WorkflowError on the first bad value. `model_dir`: the prepared model folder, if any (its
    config.json gives the head count). Returns how many configs were composed."""
    bases: dict[str, tuple[DictConfig, dict[str, str]]] = {}
    seen: set[tuple[str, ...]] = set()
    heads: int | None = None
    try:
        for _, overrides in jobs(config):
            texts = tuple(o for o, _ in overrides)
            if texts in seen:
                continue
            seen.add(texts)
            cfg = _compose_job(bases, overrides)
            heads = cfg.model.total_heads if heads is None else heads
    except CtsftError as err:  # the base composition: the model or a task YAML
        raise _error(f"config: {err}") from None
    check_ks(list(config["ks"]), model_heads(model_dir, heads), str(config["model"]), warn)
    return len(seen)
