"""The types of every config value: one Hydra Structured Config per config group.

Each YAML of config/hydra extends its group's schema through its defaults list
(`defaults: [schema, _self_]`, `[schema_heads, _self_]` for a head method, or a YAML that does,
such as `[ctsft, _self_]`), and config/hydra/ctsft.yaml extends `ctsft_schema`. Hydra then types
every value as it composes: `method.train_norms=no` is the boolean false, `train.lr=abc` or
`train.deterministic=abc` is refused, and a key the schema does not declare (a misspelt
`kv_polcy:` in a method YAML, `train.lrr=1` on the command line) is refused, one line each
(`ctsft.config.compose`).

Where the defaults live: in the YAML files, only there. Every field here is `MISSING` (no
default); the YAML of the group gives the value, and the library's dataclasses (`TrainConfig`,
`CDTOptions`, the task prompts) read the same YAML (`ctsft.config_files.group_config`). A schema
says what a key *is*, the YAML what it *is set to*. Ranges and choices (lr > 0, a known
schedule) are `ctsft.config.VALUE_CHECKS`, checked once composed.

Methods differ in their keys: `METHOD_SCHEMAS` maps each method kind of the registry
(`ctsft.train.methods.KINDS`, a test keeps them equal) to the schema its YAML extends, and a
method YAML without a defaults list is typed by its kind's schema once composed.
`io.<name>` paths that the YAML does not declare come as `++io.<name>=<path>`
(workflow/scripts/run_step.py), which adds the key on purpose; a plain `io.<name>=` must name a
declared one.

Imports only `ctsft.config_files` and no torch: the workflow's up-front check composes with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from ctsft.config_files import SCHEMA


@dataclass
class ModelSchema:
    name: str = MISSING
    kind: str = MISSING
    freeze_embeddings: bool = MISSING
    total_heads: int | None = MISSING
    model_types: list[str] | None = MISSING


@dataclass
class TaskSchema:
    name: str = MISSING
    train_size: int | None = MISSING
    eval_size: int | None = MISSING
    prompt: str = MISSING
    label_words: list[str] = MISSING


@dataclass
class TrainSchema:
    epochs: int = MISSING
    max_steps: int | None = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    grad_accum: int = MISSING
    max_length: int = MISSING
    weight_decay: float = MISSING
    warmup_ratio: float = MISSING
    schedule: str = MISSING
    max_grad_norm: float | None = MISSING
    early_stopping: bool = MISSING
    patience: int = MISSING
    eval_batch_size: int = MISSING
    resume_every: int = MISSING
    deterministic: bool = MISSING
    log_every: int = MISSING


@dataclass
class MethodSchema:
    """Kinds `all`, `none`, `norms`: a name, a kind and (null) heads."""

    name: str = MISSING
    kind: str = MISSING
    heads: str | None = MISSING


@dataclass
class HeadsMethodSchema(MethodSchema):
    """Kind `heads`: which head set of the circuit, grouped-query k/v policy, norms."""

    kv_policy: str = MISSING
    train_norms: bool = MISSING
    seed: int | None = (
        None  # `heads: random`: draw the heads with this seed (null: the circuit's list)
    )


@dataclass
class SparseRandomMethodSchema(HeadsMethodSchema):
    """Kind `sparse_random`: a head method's budget, drawn with its own seed."""

    seed: int = MISSING


@dataclass
class LoraMethodSchema(MethodSchema):
    """Kind `lora`: rank (null: matched to CT-SFT's budget), alpha / rank, dropout."""

    rank: int | None = MISSING
    alpha_over_rank: float = MISSING
    dropout: float = MISSING


#: method kind -> the schema of its YAML (ctsft.train.methods registers the kinds)
METHOD_SCHEMAS: dict[str, type[MethodSchema]] = {
    "all": MethodSchema,
    "none": MethodSchema,
    "norms": MethodSchema,
    "heads": HeadsMethodSchema,
    "sparse_random": SparseRandomMethodSchema,
    "lora": LoraMethodSchema,
}


@dataclass
class CdtSchema:
    n_per_label: int = MISSING
    correct_only: bool = MISSING
    pool_size: int | None = MISSING
    pooling: str = MISSING
    score: str = MISSING
    convention: str = MISSING
    frozen_attention: bool = MISSING
    normalize_rel_irrel: bool = MISSING
    bias_eps: float = MISSING
    compile: bool = MISSING
    path: str = MISSING
    precision: str = MISSING
    tf32: bool = MISSING
    head_batch: int = MISSING
    batch_size: int = MISSING
    k: Any = MISSING  # a head count (int) or a fraction (float): VALUE_CHECKS says which
    random_sets: int = MISSING
    seed: int = MISSING


@dataclass
class RuntimeSchema:
    device: str = MISSING
    precision: str = MISSING
    attention: str = MISSING


@dataclass
class DataSchema:
    root: str | None = MISSING


@dataclass
class GridSchema:
    variant: str | None = MISSING
    k: str | None = MISSING
    model: str | None = MISSING


@dataclass
class IoSchema:
    model_dir: str | None = MISSING
    proxy_checkpoint: str | None = MISSING
    checkpoint: str | None = MISSING
    mu: str | None = MISSING
    scores: str | None = MISSING
    heatmap: str | None = MISSING
    circuit: str | None = MISSING
    faithfulness: str | None = MISSING
    metrics: str | None = MISSING
    baseline_metrics: str | None = MISSING
    log: str | None = MISSING
    mechanism: str | None = MISSING
    mechanism_scores: str | None = MISSING


@dataclass
class WandbSchema:
    mode: str = MISSING
    project: str = MISSING
    group: str | None = MISSING
    job_type: str | None = MISSING
    name: str | None = MISSING


@dataclass
class CtsftSchema:
    """config/hydra/ctsft.yaml: the groups are typed by their own schemas (a method's keys
    depend on its kind), the rest here."""

    model: Any = MISSING
    task: Any = MISSING
    train: Any = MISSING
    method: Any = MISSING
    cdt: Any = MISSING
    runtime: Any = MISSING
    data: DataSchema = field(default_factory=DataSchema)
    proxy: str = MISSING
    target: str = MISSING
    seed: int = MISSING
    threads: int | None = MISSING
    grid: GridSchema = field(default_factory=GridSchema)
    io: IoSchema = field(default_factory=IoSchema)
    wandb: WandbSchema = field(default_factory=WandbSchema)


#: group -> its schema (the method group: `METHOD_SCHEMAS`)
GROUP_SCHEMAS: dict[str, type] = {
    "model": ModelSchema,
    "task": TaskSchema,
    "train": TrainSchema,
    "cdt": CdtSchema,
    "runtime": RuntimeSchema,
}


def schema_entries() -> dict[tuple[str | None, str], type]:
    """(group, name) -> schema of every ConfigStore entry the YAML files may extend."""
    entries: dict[tuple[str | None, str], type] = {(None, "ctsft_schema"): CtsftSchema}
    entries.update({(group, SCHEMA): node for group, node in GROUP_SCHEMAS.items()})
    entries[("method", SCHEMA)] = MethodSchema
    for kind, node in METHOD_SCHEMAS.items():
        if node is not MethodSchema:
            entries[("method", f"{SCHEMA}_{kind}")] = node
    return entries


def register() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent; before composing)."""
    store = ConfigStore.instance()
    for (group, name), node in schema_entries().items():
        store.store(group=group, name=name, node=node)
