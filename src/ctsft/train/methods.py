"""Which parameters a method trains, declared as data (a `TrainablePlan`) before anything is touched.

Methods:
- `full_ft`: every parameter (the proxy competence tuning and the continued-fine-tuning baseline).
- `ctsft` / `near_zero` / `random_heads`: the q/k/v rows and o columns (and bias slices) of the
  chosen heads, via `adapter.head_slices`, plus every LayerNorm/RMSNorm parameter when
  `method.train_norms`. Under grouped-query attention `kv_policy: shared` also trains the k/v rows
  of the key/value head each chosen query head reads (shared with the rest of its group, so the
  group's other heads see the change); `frozen` trains only q rows and o columns.
- `lora`: PEFT LoRA matrices on the q/k/v/o projections (see `ctsft.train.lora`).
- `zero_shot`: nothing.

The encoder classifier head (pooler + classifier) was trained in the proxy step: it stays frozen in
every method but `full_ft`, so CT-SFT updates exactly heads + norms as in the paper, and the
controls and LoRA get the same treatment. `model.freeze_embeddings` freezes the token-embedding
table in every method (including `full_ft`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ctsft.errors import CtsftError

HEAD_METHODS = ("ctsft", "near_zero", "random_heads")
METHODS = ("full_ft", *HEAD_METHODS, "lora", "zero_shot")
HEAD_LISTS = ("circuit", "near_zero", "random")


@dataclass(frozen=True)
class TrainEntry:
    """A trainable region of one parameter: the whole tensor (`dim` None) or [start, stop) along `dim`."""

    name: str
    dim: int | None = None
    start: int = 0
    stop: int = 0


@dataclass
class TrainablePlan:
    """What one method trains. `entries` index `TaskModel.hf.named_parameters()`; LoRA adds `lora_rank`."""

    method: str
    entries: list[TrainEntry] = field(default_factory=list)
    total: int = 0
    heads: list[tuple[int, int]] = field(default_factory=list)
    lora_rank: int | None = None
    lora_modules: list[str] = field(default_factory=list)
    trainable: int = 0

    def describe(self) -> str:
        """The one-line summary printed before training."""
        n = self.trainable
        pct = 100.0 * n / self.total if self.total else 0.0
        return f"{n:,} trainable, {pct:.2f}% of the model, in: {self.where()}"

    def where(self) -> str:
        if self.method == "lora":
            mods = sorted({re.sub(r"\.\d+\.", ".*.", m) for m in self.lora_modules})
            return f"LoRA rank {self.lora_rank} on " + ", ".join(mods)
        if not self.entries:
            return "nothing"
        groups: dict[str, str] = {}
        for e in self.entries:
            module = re.sub(r"\.\d+\.", ".*.", e.name.rsplit(".", 1)[0])
            part = "" if e.dim is None else ("[rows]" if e.dim == 0 else "[cols]")
            groups.setdefault(module + part, "")
        return ", ".join(sorted(groups))

    def to_dict(self) -> dict[str, Any]:
        n = self.trainable
        return {
            "method": self.method,
            "trainable": n,
            "total": self.total,
            "percent": round(100.0 * n / self.total, 6) if self.total else 0.0,
            "where": self.where(),
            "heads": [list(h) for h in self.heads],
            "lora_rank": self.lora_rank,
            "entries": [[e.name, e.dim, e.start, e.stop] for e in self.entries],
        }


def _entry_numel(entry: TrainEntry, param: nn.Parameter) -> int:
    if entry.dim is None:
        return param.numel()
    return (entry.stop - entry.start) * (param.numel() // param.shape[entry.dim])


def merge_entries(entries: list[TrainEntry]) -> list[TrainEntry]:
    """Union of overlapping slices of the same parameter and dim (GQA heads share k/v rows)."""
    whole = {e.name for e in entries if e.dim is None}
    by_key: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for e in entries:
        if e.dim is not None and e.name not in whole:
            by_key.setdefault((e.name, e.dim), []).append((e.start, e.stop))
    out = [TrainEntry(n) for n in sorted(whole)]
    for (name, dim), spans in sorted(by_key.items()):
        spans.sort()
        merged = [list(spans[0])]
        for start, stop in spans[1:]:
            if start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], stop)
            else:
                merged.append([start, stop])
        out.extend(TrainEntry(name, dim, a, b) for a, b in merged)
    return out


def classifier_parameter_names(hf_model: nn.Module) -> list[str]:
    """Task-head parameters of an encoder (pooler + classifier); none for a causal LM."""
    return [
        n
        for n, _ in hf_model.named_parameters()
        if n.startswith(("classifier.", "bert.pooler.", "roberta.pooler."))
    ]


def embedding_parameter_names(hf_model: nn.Module) -> list[str]:
    """The token-embedding table (what `model.freeze_embeddings` freezes)."""
    table = hf_model.get_input_embeddings().weight
    return [n for n, p in hf_model.named_parameters() if p is table]


def load_circuit(path: str | Path, geometry: Any = None) -> dict[str, Any]:
    """The circuit JSON of the CD-T step; a one-line error when missing, malformed or (given
    `geometry`) for another model (see `ctsft.artifacts.read_circuit`)."""
    from ctsft.artifacts import read_circuit

    return read_circuit(path, geometry)


def circuit_heads(
    circuit: dict[str, Any], which: str, n_layers: int, n_heads: int
) -> list[tuple[int, int]]:
    """The (layer, head) list `which` of a circuit, checked against the model geometry."""
    if which not in HEAD_LISTS:
        raise CtsftError(f"method.heads must be one of {', '.join(HEAD_LISTS)}, got {which!r}")
    heads = [(int(a), int(b)) for a, b in circuit[which]]
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise CtsftError(
                f"circuit head ({layer}, {head}) is outside this model ({n_layers} layers x {n_heads} "
                "heads): the circuit was selected on another model"
            )
    if len(set(heads)) != len(heads):
        raise CtsftError(f"circuit list {which!r} repeats heads: re-create the circuit file")
    return heads


def head_entries(
    adapter: Any, heads: list[tuple[int, int]], kv_policy: str, train_norms: bool
) -> list[TrainEntry]:
    """Slices of the given heads (+ norms) as entries; names are `adapter.model` parameter names."""
    if kv_policy not in ("shared", "frozen"):
        raise CtsftError(f"method.kv_policy must be shared or frozen, got {kv_policy!r}")
    entries = [
        TrainEntry(s.name, s.dim, s.start, s.stop)
        for layer, head in heads
        for s in adapter.head_slices(layer, head, kv_policy=kv_policy)
    ]
    if train_norms:
        entries.extend(TrainEntry(name) for name in adapter.norm_parameters())
    return merge_entries(entries)


def build_plan(
    hf_model: nn.Module,
    adapter: Any,
    method_cfg: Any,
    circuit: dict[str, Any] | None = None,
    freeze_embeddings: bool = False,
) -> TrainablePlan:
    """The trainable set of `method_cfg.name` for this model (circuit needed by head methods and LoRA)."""
    method = str(method_cfg.name)
    if method not in METHODS:
        raise CtsftError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    total = sum(p.numel() for p in hf_model.parameters())
    plan = TrainablePlan(method=method, total=total)
    frozen_tables = set(embedding_parameter_names(hf_model)) if freeze_embeddings else set()
    if method == "full_ft":
        plan.entries = [
            TrainEntry(n) for n, _ in hf_model.named_parameters() if n not in frozen_tables
        ]
    elif method in HEAD_METHODS:
        geo = adapter.geometry
        if circuit is None:
            raise CtsftError(
                f"method {method} needs io.circuit (the circuit JSON of the CD-T step)"
            )
        plan.heads = circuit_heads(circuit, str(method_cfg.heads), geo.n_layers, geo.n_heads)
        plan.entries = head_entries(
            adapter,
            plan.heads,
            str(method_cfg.get("kv_policy", "shared")),
            bool(method_cfg.get("train_norms", True)),
        )
    elif method == "lora":
        from ctsft.train.lora import choose_rank, lora_target_modules

        plan.lora_modules = lora_target_modules(hf_model, adapter)
        rank = method_cfg.get("rank")
        if rank is None:
            if circuit is None:
                raise CtsftError(
                    "method lora with method.rank=null matches CT-SFT's budget: it needs io.circuit "
                    "(or set method.rank)"
                )
            geo = adapter.geometry
            heads = circuit_heads(circuit, "circuit", geo.n_layers, geo.n_heads)
            target = sum(
                _entry_numel(e, dict(hf_model.named_parameters())[e.name])
                for e in head_entries(adapter, heads, "shared", True)
            )
            rank = choose_rank(hf_model, plan.lora_modules, target)
        plan.lora_rank = int(rank)
        from ctsft.train.lora import lora_count

        plan.trainable = lora_count(hf_model, plan.lora_modules, plan.lora_rank)
        return plan
    params = dict(hf_model.named_parameters())
    plan.trainable = sum(_entry_numel(e, params[e.name]) for e in plan.entries)
    return plan
