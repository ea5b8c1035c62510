"""A small common vocabulary for transformer families, so decomposition and masking are written once.

An adapter maps one model family onto: geometry (layers, query heads, key/value heads, d_head),
per-layer parts (q/k/v/o projections, optional q/k norms, norms and their placement, the MLP),
the head slices of every projection (grouped-query attention included), all norm parameters,
and a hook point for the per-head attention output `[batch, pos, head, d_head]` (the input of
the output projection, i.e. `blocks.{layer}.attn.hook_z` in TransformerLens terms).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

NormKind = Literal["layernorm", "rmsnorm"]
KVPolicy = Literal["shared", "frozen"]


@dataclass(frozen=True)
class Geometry:
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without grouped-query attention)."""
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        """The key/value head that query head `head` reads."""
        return head // self.group_size


@dataclass(frozen=True)
class NormSpec:
    """A LayerNorm or RMSNorm as numbers: y = norm(x) * (weight + weight_offset) + bias."""

    kind: NormKind
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    weight_offset: float = 0.0

    @property
    def scale(self) -> torch.Tensor:
        return self.weight + self.weight_offset if self.weight_offset else self.weight


@dataclass(frozen=True)
class AttentionParts:
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    scaling: float
    q_norm: NormSpec | None = None
    k_norm: NormSpec | None = None
    sliding_window: int | None = None
    causal: bool = False
    layer_type: str | None = None


@dataclass(frozen=True)
class MLPParts:
    """`gelu`: down(act(up(x))); `gated`: down(act(gate(x)) * up(x))."""

    kind: Literal["plain", "gated"]
    up: nn.Linear
    down: nn.Linear
    act: Callable[[torch.Tensor], torch.Tensor]
    gate: nn.Linear | None = None


@dataclass(frozen=True)
class LayerParts:
    """One block. `norm_style` says where the norms sit:

    - `post` (BERT): h = post_attn(x + attn(x)); y = post_mlp(h + mlp(h))
    - `pre` (Llama, Qwen2): h = x + attn(pre_attn(x)); y = h + mlp(pre_mlp(h))
    - `sandwich` (Gemma3): h = x + post_attn(attn(pre_attn(x))); y = h + post_mlp(mlp(pre_mlp(h)))
    """

    index: int
    attn: AttentionParts
    mlp: MLPParts
    norm_style: Literal["post", "pre", "sandwich"]
    pre_attn: NormSpec | None = None
    post_attn: NormSpec | None = None
    pre_mlp: NormSpec | None = None
    post_mlp: NormSpec | None = None


@dataclass(frozen=True)
class ClassifierHead:
    """An encoder's task head read at position 0: logits = out(act(pool(h[:, 0]))).

    BERT: `bert.pooler.dense` + tanh, then `classifier`; RoBERTa / XLM-R: `classifier.dense` +
    tanh, then `classifier.out_proj` (dropout is off in eval mode, so it is not part of the maths).
    """

    pool: nn.Linear
    act: nn.Module
    out: nn.Linear

    def __iter__(self) -> Iterator[nn.Module]:
        """`pool, act, out = head` (the modules themselves, not copies)."""
        return iter((self.pool, self.act, self.out))


@dataclass(frozen=True)
class ParamSlice:
    """Rows (dim 0) or columns (dim 1) [start, stop) of a named parameter; a whole 1-D bias slice too."""

    name: str
    param: nn.Parameter
    dim: int
    start: int
    stop: int

    def view(self) -> torch.Tensor:
        return self.param.detach().narrow(self.dim, self.start, self.stop - self.start)


def norm_spec_of(module: nn.Module, kind: NormKind, weight_offset: float = 0.0) -> NormSpec:
    eps = getattr(module, "eps", None)
    if eps is None:
        eps = module.variance_epsilon
    return NormSpec(kind, module.weight, getattr(module, "bias", None), float(eps), weight_offset)


class ArchAdapter(ABC):
    """Base class: subclasses fill in the family-specific lookups."""

    family: str

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    # -- structure -----------------------------------------------------------------------
    @property
    @abstractmethod
    def geometry(self) -> Geometry: ...

    @abstractmethod
    def layer(self, index: int) -> LayerParts: ...

    def layers(self) -> list[LayerParts]:
        return [self.layer(i) for i in range(self.geometry.n_layers)]

    @abstractmethod
    def norm_modules(self) -> dict[str, nn.Module]:
        """Every LayerNorm/RMSNorm module by qualified name (trainable under CT-SFT)."""

    def _modules_where(self, is_norm: Callable[[nn.Module], bool]) -> dict[str, nn.Module]:
        """The modules of `self.model` that `is_norm` accepts, by qualified name, in model order:
        what every family's `norm_modules` is, with its own kind of norm."""
        return {name: module for name, module in self.model.named_modules() if is_norm(module)}

    @abstractmethod
    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The residual stream entering layer 0 `[batch, pos, d_model]`."""

    def classifier_head(self) -> ClassifierHead:
        """The encoder's pooler + classifier (CD-T reads the class logits through it)."""
        raise NotImplementedError(f"{self.family} models have no encoder classifier head")

    def rotary(self, hidden: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) for positions 0..pos-1 of layer `layer`, or None without rotary embeddings."""
        return None

    # -- parameters ----------------------------------------------------------------------
    def head_slices(
        self, layer: int, head: int, kv_policy: KVPolicy = "shared"
    ) -> list[ParamSlice]:
        """The parameters of query head `head` in `layer`.

        q rows (and bias slice), o columns, and, under `kv_policy="shared"`, the k/v rows (and bias
        slices) of the key/value head it reads. Under grouped-query attention that k/v head is
        shared with the other query heads of its group, so `shared` also changes what they read;
        `frozen` leaves k/v untouched and trains only q and o of the head.
        """
        geo = self.geometry
        parts = self.layer(layer).attn
        q0, q1 = head * geo.d_head, (head + 1) * geo.d_head
        kv = geo.kv_head(head)
        k0, k1 = kv * geo.d_head, (kv + 1) * geo.d_head
        named = self._names()
        out = [ParamSlice(named[id(parts.q.weight)], parts.q.weight, 0, q0, q1)]
        if parts.q.bias is not None:
            out.append(ParamSlice(named[id(parts.q.bias)], parts.q.bias, 0, q0, q1))
        if kv_policy == "shared":
            for proj in (parts.k, parts.v):
                out.append(ParamSlice(named[id(proj.weight)], proj.weight, 0, k0, k1))
                if proj.bias is not None:
                    out.append(ParamSlice(named[id(proj.bias)], proj.bias, 0, k0, k1))
        out.append(ParamSlice(named[id(parts.o.weight)], parts.o.weight, 1, q0, q1))
        return out

    def norm_parameters(self) -> dict[str, nn.Parameter]:
        """All norm weights and biases by qualified parameter name."""
        named = self._names()
        found: dict[str, nn.Parameter] = {}
        for module in self.norm_modules().values():
            for param in module.parameters(recurse=False):
                found[named[id(param)]] = param
        return found

    def _names(self) -> dict[int, str]:
        return {id(p): n for n, p in self.model.named_parameters()}

    # -- hooks ---------------------------------------------------------------------------
    def _split_heads(self, z: torch.Tensor) -> torch.Tensor:
        geo = self.geometry
        return z.reshape(*z.shape[:-1], geo.n_heads, geo.d_head)

    @contextlib.contextmanager
    def capture_head_outputs(
        self, layers: list[int] | None = None
    ) -> Iterator[dict[int, torch.Tensor]]:
        """Record each layer's per-head attention output `[batch, pos, head, d_head]` during forwards."""
        store: dict[int, torch.Tensor] = {}
        chosen = range(self.geometry.n_layers) if layers is None else layers

        def make_hook(index: int) -> Callable:
            def hook(_module: nn.Module, args: tuple) -> None:
                store[index] = self._split_heads(args[0]).detach()

            return hook

        handles = [self.layer(i).attn.o.register_forward_pre_hook(make_hook(i)) for i in chosen]
        try:
            yield store
        finally:
            for handle in handles:
                handle.remove()

    @contextlib.contextmanager
    def edit_head_outputs(
        self, edit: Callable[[int, torch.Tensor], torch.Tensor], layers: list[int] | None = None
    ) -> Iterator[None]:
        """Replace each layer's per-head output by `edit(layer, z)` (z: `[batch, pos, head, d_head]`)."""
        chosen = range(self.geometry.n_layers) if layers is None else layers

        def make_hook(index: int) -> Callable:
            def hook(_module: nn.Module, args: tuple) -> tuple:
                z = self._split_heads(args[0])
                edited = edit(index, z)
                return (edited.reshape(args[0].shape), *args[1:])

            return hook

        handles = [self.layer(i).attn.o.register_forward_pre_hook(make_hook(i)) for i in chosen]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    # -- summary -------------------------------------------------------------------------
    def describe(self) -> dict[str, int | str]:
        geo = self.geometry
        return {
            "family": self.family,
            "layers": geo.n_layers,
            "heads": geo.n_heads,
            "kv_heads": geo.n_kv_heads,
            "d_head": geo.d_head,
            "d_model": geo.d_model,
        }
