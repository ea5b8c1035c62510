"""Facts that many layers share: file names, column lists, kinds and what each method kind does.

A leaf: it imports nothing of ctsft (the import-linter contract in pyproject.toml puts it at the
very bottom), so a low-level validator (`ctsft.artifacts`) and the torch-free Snakemake layer
(`ctsft.workflow_config`) can know what a checkpoint folder holds or whether a method reads a
circuit without reaching up into `models`, `cdt` or `train`, which own the code behind them.
Values only: what uses them lives in the layer that owns it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# -- model folders and checkpoints (written by ctsft.models, read by ctsft.artifacts) ------------
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"  # a sharded model's tensor -> file map
TASK_MODEL_FILE = "task_model.json"  # a checkpoint's record (kind, task, read-out, training)
PROVENANCE_FILE = "provenance.json"  # what prepare_model (a converter) made a model folder from
TRAINED_FILE = "trained.safetensors"  # a checkpoint that stores only what it trained
ADAPTER_FILE = "adapter_model.safetensors"  # a LoRA checkpoint: a PEFT adapter
ADAPTER_CONFIG_FILE = "adapter_config.json"

#: `config.model_type`s by task-model kind (what a checkpoint of each kind may be); each has an
#: architecture adapter in `ctsft.adapters` (a test keeps the two equal).
MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "encoder": ("bert", "xlm-roberta", "roberta"),
    "causal": ("llama", "qwen2", "gemma3_text", "gemma3", "mistral", "gpt2"),
}

# -- hub models ----------------------------------------------------------------------------------
HUB_PREFIX = "hub:"  # `model=hub:<org>/<name>`: any hub model of a supported family
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def check_hub_id(model: str, error: Callable[[str], Exception], prefix: str = "") -> str:
    """The `<org>/<name>` of `hub:<org>/<name>`; raises `error(one line)` when malformed (the
    caller picks the exception: Snakemake's WorkflowError or ctsft's CtsftError)."""
    hub_id = model[len(HUB_PREFIX) :]
    if not HUB_ID.fullmatch(hub_id):
        raise error(f"{prefix}model {model!r}: a hub model is hub:<org>/<name>")
    return hub_id


# -- head scores (written by ctsft.cdt.scores, read by ctsft.artifacts) --------------------------
SCORE_KINDS = ("directional", "cdt_ratio", "ablation", "attribution")
TSV_COLUMNS = ["layer", "head", "score", "rank", "n_examples", "score_kind"]


# -- method kinds (a method YAML's `kind:`; the plan builders are in ctsft.train.methods) --------
@dataclass(frozen=True)
class KindFacts:
    """What the workflow must know of a method kind before anything is loaded: whether it trains,
    and whether it reads the circuit JSON of the CD-T step (always, or unless the method sets
    `circuit_unless`: LoRA reads it only to match CT-SFT's budget when `method.rank` is null)."""

    trains: bool = True
    reads_circuit: bool = False
    circuit_unless: str | None = None

    def needs_circuit(self, method: Mapping[str, Any]) -> bool:
        if self.circuit_unless is not None:
            return method.get(self.circuit_unless) is None
        return self.reads_circuit


#: The kinds ctsft registers. A kind registered by `ctsft.train.methods.register_kind` with its
#: own facts is added here, so Snakemake (which never imports torch) sees it as well.
METHOD_KINDS: dict[str, KindFacts] = {
    "all": KindFacts(),
    "heads": KindFacts(reads_circuit=True),
    "lora": KindFacts(circuit_unless="rank"),
    "none": KindFacts(trains=False),
    "norms": KindFacts(),
    "sparse_random": KindFacts(reads_circuit=True),
}
