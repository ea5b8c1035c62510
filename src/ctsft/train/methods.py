"""Methods as a registry: a method is a YAML of config/hydra/method/ whose `kind` names a
registered plan builder; the kind, once, says what the method trains (a `TrainablePlan`, declared
as data before anything is touched). Whether it trains at all and whether it reads a circuit are
torch-free facts of the kind (`ctsft.facts.METHOD_KINDS`), which the steps and the workflow ask
through `ctsft.config_files.method_trains` and `method_needs_circuit`. Nothing else in the code
names a method.

Kinds (PEFT's `register_peft_method` is the model):
- `all`: every parameter (`full_ft`: the proxy competence tuning and the continued-fine-tuning
  baseline).
- `heads`: the q/k/v rows and o columns (and bias slices) of the heads `method.heads` names in the
  circuit JSON (`ctsft`, `near_zero`, `random_heads`), via `adapter.head_slices`, plus every
  LayerNorm/RMSNorm parameter when `method.train_norms`. With `heads: random` and an int
  `method.seed` (`random_heads`: the run's seed) the k heads are drawn anew with that seed
  (`draw_heads`) instead of read from the circuit's one draw. Under grouped-query attention
  `kv_policy: shared` also trains the k/v rows of the key/value head each chosen query head reads
  (shared with the rest of its group, so the group's other heads see the change); `frozen` trains
  only q rows and o columns.
- `lora`: PEFT LoRA matrices on the q/k/v/o projections (see `ctsft.train.lora`); with
  `method.rank: null` the rank matches CT-SFT's budget, read from the circuit.
- `none`: nothing (`zero_shot`: the proxy checkpoint is evaluated as is).
- `norms`: only the norm parameters CT-SFT trains, no head (`norms_only`: a control).
- `sparse_random`: as many individual q/k/v/o weight and bias entries as CT-SFT's head budget for
  the circuit's k heads (same `kv_policy`, norms excluded), drawn uniformly at random
  (`method.seed`) from every entry of every layer's attention projections, plus the norms when
  `method.train_norms` (`sparse_random`: a control separating "the circuit" from "any small
  update of the same size"). The entries travel as `plan.scatter`, trained by
  `ctsft.train.masking` entry by entry.

Adding a method is one YAML (`kind: heads` with `kv_policy: frozen` under a new name), plus at
most one function registered with `@register_kind` for a new way of choosing parameters.

The encoder classifier head (pooler + classifier) was trained in the proxy step: it stays frozen in
every kind but `all`, so CT-SFT updates exactly heads + norms as in the paper, and the controls
and LoRA get the same treatment. `model.freeze_embeddings` freezes the token-embedding table in
every method (including `full_ft`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ctsft.config_files import complete_method, method_config, method_names
from ctsft.errors import CtsftError
from ctsft.facts import METHOD_KINDS, KindFacts
from ctsft.train.lora import choose_rank, lora_count, lora_target_modules

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray
    from torch import nn

HEAD_LISTS = ("circuit", "near_zero", "random")


@dataclass(frozen=True)
class TrainEntry:
    """A trainable region of one parameter: the whole tensor (`dim` None) or [start, stop) along `dim`."""

    name: str
    dim: int | None = None
    start: int = 0
    stop: int = 0


@dataclass(frozen=True, eq=False)
class ScatterEntry:
    """Individual trainable entries of one parameter: sorted, distinct flat (row-major) indices
    into it in its own layout (a GPT-2 Conv1D weight is `[in, out]`)."""

    name: str
    indices: NDArray[np.int64]


@dataclass(eq=False)
class ScatterSelection:
    """Entries drawn at random, parameter by parameter, and how they were drawn. The record keeps
    a count and a sha256 of the indices, not the indices themselves (thousands to millions)."""

    entries: list[ScatterEntry]
    seed: int
    pool: int  # how many entries they were drawn from
    budget_heads: list[tuple[int, int]]  # the heads whose CT-SFT budget the count matches

    @property
    def numel(self) -> int:
        return sum(len(e.indices) for e in self.entries)

    def sha256(self) -> str:
        """Fingerprint of every (parameter, index): a resume or a record names the exact draw."""
        digest = hashlib.sha256()
        for e in self.entries:
            digest.update(e.name.encode() + b"\0" + e.indices.astype("<i8").tobytes())
        return digest.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "count": self.numel,
            "sha256": self.sha256(),
            "seed": self.seed,
            "pool": self.pool,
            "budget_heads": [list(h) for h in self.budget_heads],
            "parameters": {e.name: len(e.indices) for e in self.entries},
        }


@dataclass
class TrainablePlan:
    """What one method trains. `entries` index `TaskModel.hf.named_parameters()`; LoRA adds
    `lora_rank`, `sparse_random` individual entries in `scatter`."""

    method: str
    entries: list[TrainEntry] = field(default_factory=list)
    total: int = 0
    heads: list[tuple[int, int]] = field(default_factory=list)
    lora_rank: int | None = None
    lora_modules: list[str] = field(default_factory=list)
    trainable: int = 0
    scatter: ScatterSelection | None = None  # individual entries (kind sparse_random)

    def describe(self) -> str:
        """The one-line summary printed before training."""
        n = self.trainable
        pct = 100.0 * n / self.total if self.total else 0.0
        return f"{n:,} trainable, {pct:.2f}% of the model, in: {self.where()}"

    def where(self) -> str:
        if self.lora_rank is not None:
            mods = sorted({re.sub(r"\.\d+\.", ".*.", m) for m in self.lora_modules})
            return f"LoRA rank {self.lora_rank} on " + ", ".join(mods)
        if not self.entries and self.scatter is None:
            return "nothing"
        groups: dict[str, str] = {}
        for e in self.entries:
            module = re.sub(r"\.\d+\.", ".*.", e.name.rsplit(".", 1)[0])
            part = "" if e.dim is None else ("[rows]" if e.dim == 0 else "[cols]")
            groups.setdefault(module + part, "")
        for s in self.scatter.entries if self.scatter else []:
            groups.setdefault(re.sub(r"\.\d+\.", ".*.", s.name.rsplit(".", 1)[0]) + "[entries]", "")
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
            **({"scatter": self.scatter.to_dict()} if self.scatter else {}),
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


def embedding_parameter_names(hf_model: nn.Module) -> list[str]:
    """The token-embedding table (what `model.freeze_embeddings` freezes)."""
    table = hf_model.get_input_embeddings().weight
    return [n for n, p in hf_model.named_parameters() if p is table]


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


@dataclass(frozen=True)
class PlanInputs:
    """What a plan builder may read: the model, its adapter, the method config and the circuit."""

    hf_model: nn.Module
    adapter: Any
    method: Mapping[str, Any]
    circuit: dict[str, Any] | None
    frozen_tables: frozenset[str]

    def need_circuit(self, why: str) -> dict[str, Any]:
        if self.circuit is None:
            raise CtsftError(f"method {self.method['name']} {why}: it needs io.circuit (the circuit JSON of the CD-T step)")  # fmt: skip
        return self.circuit


PlanBuilder = Callable[[TrainablePlan, PlanInputs], None]


@dataclass(frozen=True)
class MethodKind:
    """A registered way of choosing what to train, with its torch-free facts."""

    name: str
    build: PlanBuilder
    facts: KindFacts


KINDS: dict[str, MethodKind] = {}


def register_kind(
    name: str, facts: KindFacts | None = None
) -> Callable[[PlanBuilder], PlanBuilder]:
    """Register `build(plan, inputs)` as method kind `name` (a method YAML's `kind:`).

    Its facts (trains? reads a circuit?) are `ctsft.facts.METHOD_KINDS[name]`; a kind new to ctsft
    passes its own (default: trains, reads no circuit), which are added there for the workflow.
    """

    def register(build: PlanBuilder) -> PlanBuilder:
        kind_facts = facts or METHOD_KINDS.get(name) or KindFacts()
        METHOD_KINDS[name] = kind_facts
        KINDS[name] = MethodKind(name, build, kind_facts)
        return build

    return register


def method_kind(method: Mapping[str, Any]) -> MethodKind:
    """The registered kind of a method config; one line naming the choices otherwise."""
    kind = complete_method(method).get("kind")
    if kind not in KINDS:
        raise CtsftError(f"method {method.get('name')!r} has kind {kind!r}: set method.kind to one of {', '.join(KINDS)}")  # fmt: skip
    return KINDS[kind]


@register_kind("all")
def _plan_all(plan: TrainablePlan, inputs: PlanInputs) -> None:
    plan.entries = [
        TrainEntry(n)
        for n, _ in inputs.hf_model.named_parameters()
        if n not in inputs.frozen_tables
    ]


@register_kind("heads")
def _plan_heads(plan: TrainablePlan, inputs: PlanInputs) -> None:
    geo = inputs.adapter.geometry
    circuit = inputs.need_circuit("trains selected heads")
    method = inputs.method
    plan.heads = circuit_heads(circuit, str(method["heads"]), geo.n_layers, geo.n_heads)
    if method["heads"] == "random" and method.get("seed") is not None:
        plan.heads = draw_heads(len(plan.heads), geo.n_layers, geo.n_heads, _method_seed(method))
    plan.entries = head_entries(
        inputs.adapter, plan.heads, str(method["kv_policy"]), bool(method["train_norms"])
    )


@register_kind("lora")
def _plan_lora(plan: TrainablePlan, inputs: PlanInputs) -> None:
    hf_model, adapter = inputs.hf_model, inputs.adapter
    plan.lora_modules = lora_target_modules(hf_model, adapter)
    rank = inputs.method.get("rank")
    if rank is None:
        circuit = inputs.need_circuit("with method.rank=null matches CT-SFT's budget (or set method.rank)")  # fmt: skip
        geo = adapter.geometry
        heads = circuit_heads(circuit, "circuit", geo.n_layers, geo.n_heads)
        params = dict(hf_model.named_parameters())
        target = sum(
            _entry_numel(e, params[e.name]) for e in head_entries(adapter, heads, "shared", True)
        )
        rank = choose_rank(hf_model, plan.lora_modules, target)
    plan.lora_rank = int(rank)
    plan.trainable = lora_count(hf_model, plan.lora_modules, plan.lora_rank)


@register_kind("none")
def _plan_none(plan: TrainablePlan, inputs: PlanInputs) -> None:
    """Nothing to train."""


@register_kind("norms")
def _plan_norms(plan: TrainablePlan, inputs: PlanInputs) -> None:
    """Exactly the norms `head_entries` adds to CT-SFT's heads, so the two cannot drift."""
    plan.entries = head_entries(inputs.adapter, [], "shared", train_norms=True)


def attention_parameter_names(hf_model: nn.Module, adapter: Any) -> list[str]:
    """Every layer's q/k/v/o weights and biases, in layer order, each once (GPT-2's fused
    `c_attn` serves q, k and v: its parts are `ConvView`s of one Conv1D)."""
    names = {id(p): n for n, p in hf_model.named_parameters()}
    found: dict[str, None] = {}
    for layer in adapter.layers():
        for proj in (layer.attn.q, layer.attn.k, layer.attn.v, layer.attn.o):
            module = getattr(proj, "module", proj)  # a ConvView's Conv1D
            for param in (module.weight, module.bias):
                if param is not None:
                    found.setdefault(names[id(param)], None)
    return list(found)


def sample_indices(n: int, k: int, seed: int) -> NDArray[np.int64]:
    """`k` distinct indices of range(n), uniformly at random, sorted; the same for the same seed.

    The first k distinct values of a stream of uniform draws are a uniform k-subset, so memory is
    O(k) even for the billions of attention entries of a large model (a permutation of range(n)
    would not fit); above n/2 the complement is drawn instead, so the rejections stay few.
    """
    import numpy as np

    if not 0 <= k <= n:
        raise CtsftError(f"cannot draw {k} distinct entries out of {n}")
    if 2 * k > n:
        dropped = sample_indices(n, n - k, seed)
        return np.setdiff1d(np.arange(n, dtype=np.int64), dropped, assume_unique=True)
    rng = np.random.default_rng(seed)
    chosen = np.empty(0, dtype=np.int64)
    while chosen.size < k:
        drawn = np.concatenate([chosen, rng.integers(0, n, size=2 * (k - chosen.size))])
        _, first = np.unique(drawn, return_index=True)  # first occurrences, in draw order
        chosen = drawn[np.sort(first)][:k]
    return np.sort(chosen)


def draw_heads(k: int, n_layers: int, n_heads: int, seed: int) -> list[tuple[int, int]]:
    """k distinct heads drawn uniformly from all of them, in (layer, head) order: `random_heads`
    draws its own with the transfer seed, so each seed's run trains a different set."""
    flat = sample_indices(n_layers * n_heads, k, seed)
    return [(int(i) // n_heads, int(i) % n_heads) for i in flat]


def _method_seed(method: Mapping[str, Any]) -> int:
    seed = method.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CtsftError(f"method {method['name']}: method.seed must be an int, got {seed!r} (the YAML's ${{seed}} resolves only in a composed config)")  # fmt: skip
    return seed


@register_kind("sparse_random")
def _plan_sparse_random(plan: TrainablePlan, inputs: PlanInputs) -> None:
    """CT-SFT's head budget, spent on entries drawn uniformly from all attention projections."""
    import numpy as np

    adapter, method = inputs.adapter, inputs.method
    circuit = inputs.need_circuit("matches CT-SFT's head budget")
    geo = adapter.geometry
    heads = circuit_heads(circuit, str(method.get("heads") or "circuit"), geo.n_layers, geo.n_heads)
    params = dict(inputs.hf_model.named_parameters())
    spans = head_entries(adapter, heads, str(method["kv_policy"]), train_norms=False)
    budget = sum(_entry_numel(e, params[e.name]) for e in spans)
    names = attention_parameter_names(inputs.hf_model, adapter)
    bounds = np.cumsum([0] + [params[n].numel() for n in names])
    seed = _method_seed(method)
    flat = sample_indices(int(bounds[-1]), budget, seed)
    cuts = np.searchsorted(flat, bounds)  # flat[cuts[i]:cuts[i + 1]] fall in parameter i
    entries = [
        ScatterEntry(name, flat[cuts[i] : cuts[i + 1]] - bounds[i])
        for i, name in enumerate(names)
        if cuts[i + 1] > cuts[i]
    ]
    plan.scatter = ScatterSelection(entries, seed, int(bounds[-1]), heads)
    plan.entries = head_entries(adapter, [], "shared", bool(method["train_norms"]))


def build_plan(
    hf_model: nn.Module,
    adapter: Any,
    method_cfg: Any,
    circuit: dict[str, Any] | None = None,
    freeze_embeddings: bool = False,
) -> TrainablePlan:
    """The trainable set of `method_cfg` (its registered `kind`) for this model."""
    method_cfg = complete_method(method_cfg)
    kind = method_kind(method_cfg)
    plan = TrainablePlan(method=str(method_cfg["name"]), total=sum(p.numel() for p in hf_model.parameters()))  # fmt: skip
    frozen = frozenset(embedding_parameter_names(hf_model)) if freeze_embeddings else frozenset()
    kind.build(plan, PlanInputs(hf_model, adapter, method_cfg, circuit, frozen))
    if plan.lora_rank is None:
        params = dict(hf_model.named_parameters())
        plan.trainable = sum(_entry_numel(e, params[e.name]) for e in plan.entries)
        plan.trainable += plan.scatter.numel if plan.scatter else 0
    return plan


def __getattr__(name: str) -> tuple[str, ...]:
    """`METHODS` (every method YAML) and `HEAD_METHODS` (those of kind `heads`), read from
    config/hydra/method/ when first asked for, so they cannot drift from the YAML."""
    if name == "METHODS":
        return tuple(method_names())
    if name == "HEAD_METHODS":
        return tuple(n for n in method_names() if method_config(n).get("kind") == "heads")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
