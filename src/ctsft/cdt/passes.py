"""The passes of the CD-T engine: one transformer walk, four ways to run its nodes.

`_Pass` walks the layers once for every mode (norm placement, attention with rotary / GQA /
sliding windows, MLP, read-out, read-out position pruning). What flows through it, and where the
totals come from, is what tells the passes apart:

| pass            | stream                | totals (matmul outputs, norm scales, P, z)    | starts at       |
|-----------------|-----------------------|-----------------------------------------------|-----------------|
| `CleanPass`     | totals `[1, B, T, D]` | computed, and recorded into the cache         | the embeddings  |
| `AblatePass`    | totals `[S, B, T, D]` | computed; the first layer's W_o z from cache  | first ablated   |
| `NaivePass`     | (beta, gamma) pairs   | recomputed from beta + gamma (the reference)  | the embeddings  |
| `DecomposePass` | (beta, gamma) pairs   | from the cache: gamma W = total W - beta W    | earliest source |

Shapes: S source (or head) sets, B batch rows, T positions, H heads, dh = d_head, D = d_model.
Every stream carries the leading set dim; cached totals have S = 1 and broadcast. Which positions a
stream holds is a value passed along the walk (`Positions`): all T, or (after the last layer's keys
and values, in a pruning pass) only each row's read-out position, T = 1. The walk returns it from
`attention` and hands it to every node that reads a cached total; no pass keeps it as state.

Passes change z, the per-head attention output `[S, B, T, H, dh]`, at one site: `_Pass.hook_z`
(TransformerLens's `hook_z`), just before the output projection. The decompositions split z at
the sources; mean ablation replaces heads by mu. At the start layer of a pass that begins from a
cache, `_start_output` projects the same edit of the cached z more cheaply (only the edited
heads' columns of W_o), from the same (mask, mu) as its `hook_z`.

Shapes in signatures are `Annotated[..., "S B T D"]` (`ctsft.cdt.shapes`; `#S` may be 1, a cached
total), checked on every call of the decorated methods when `CTSFT_CHECK_SHAPES=1` (the tests).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Generic, Literal, NamedTuple, Protocol, TypeVar

import torch
import torch.nn.functional as F

from ctsft.adapters import LayerParts, NormSpec
from ctsft.adapters.decoder import rotate_half
from ctsft.cdt.rules import Parts, activation_name, clean_up, gated_node, linear_node, node_rules
from ctsft.cdt.shapes import check_shapes
from ctsft.models.task_model import TaskModel

if TYPE_CHECKING:
    from ctsft.adapters import Geometry
    from ctsft.cdt.engine import CDTEngine, CleanCache, Source

Tensor = torch.Tensor
Activation = Callable[[Tensor], Tensor]
Stream = TypeVar("Stream", Tensor, Parts)  # totals, or (beta, gamma)
Rotary = tuple[Tensor, Tensor]  # (cos, sin) `[1, T, dh]`, or `[B, 1, dh]` at the read-out


class Affine(Protocol):
    """What a linear node reads of a layer (`nn.Linear`, the adapters' views, the unembedding)."""

    @property
    def weight(self) -> Tensor: ...  # [out, in]

    @property
    def bias(self) -> Tensor | None: ...  # [out]


class _Unembedding(NamedTuple):
    weight: Tensor  # [n_labels, D]: the label tokens' rows of the LM head
    bias: Tensor | None


# -- cache keys ---------------------------------------------------------------------------------
READOUT: Literal["ro"] = "ro"  # the "layer" of the read-out nodes (pooler / final norm, logits)
Node = Literal[
    "in",  # residual stream entering the layer `[1, B, T, D]`
    "rot",  # stacked rotary (cos, sin) `[2, 1, T, dh]`; empty without rotary embeddings
    "ln1", "ln2", "ln_pa", "ln_pm", "qn", "kn", "norm",  # norm scales 1/sqrt(var + eps) `[..., 1]`
    "q", "k", "v", "o", "up", "gate", "down", "pool", "cls", "lm",  # x W without the bias
    "p",  # attention probabilities `[1, B, H, T, T]`
    "z",  # per-head attention outputs `[1, B, T, H, dh]`
]  # fmt: skip


def cache_key(layer: int | Literal["ro"], node: Node) -> str:
    """The one name of a node's total in `CleanCache.tensors`: `"{layer}.{node}"` (e.g. `"0.z"`,
    `"ro.lm"`). Plain strings, so the cache stays an ordinary dict that callers can read."""
    return f"{layer}.{node}"


# -- helpers ------------------------------------------------------------------------------------
def _take(t: Tensor, sel: Tensor, dim: int = 2) -> Tensor:
    """Gather one position per batch row (`sel` `[B]`) along `dim` of a `[S, B, ...]` tensor."""
    shape = [1] * t.dim()
    shape[1] = sel.shape[0]
    idx = sel.view(shape)
    expand = list(t.shape)
    expand[dim] = 1
    return torch.gather(t, dim, idx.expand(expand))


@dataclass(frozen=True)
class Positions:
    """The positions a stream holds: every position (`readout` None), or only each row's read-out
    position (`readout` `[B]`, the position dim has size 1)."""

    readout: Tensor | None = None

    def take(self, t: Tensor, dim: int = 2) -> Tensor:
        """A cached total `[1, B, T, ...]` (or a mask) at these positions along `dim`."""
        return t if self.readout is None else _take(t, self.readout, dim)


ALL = Positions()  # every position: the walk's start, and the read-out totals (cached per row)


def inv_std(x: Tensor, spec: NormSpec) -> Tensor:
    """1 / sqrt(var + eps) of LayerNorm, 1 / sqrt(mean(x^2) + eps) of RMSNorm, over the last dim."""
    if spec.kind == "layernorm":
        return torch.rsqrt(x.var(-1, keepdim=True, unbiased=False) + spec.eps)
    return torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.eps)


def _probs(q: Tensor, k: Tensor, allowed: Tensor, scaling: float) -> Tensor:
    """Attention probabilities `[S, B, H, Tq, Tk]` of heads-first q `[S, B, H, Tq, dh]`, k."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scaling
    return torch.softmax(scores.masked_fill(~allowed, torch.finfo(q.dtype).min), dim=-1)


@dataclass
class _HeadColumns:
    """Each set's single source head in the start layer, with that head's d_head columns of W_o.

    Why: in the start layer only the source head's slice of z differs from the cache, so its
    output projection costs d_head per set instead of d_model (a large share of a scan's work).
    """

    heads: Tensor  # [S] head index of each set
    w: Tensor  # [S, dh, D]

    @classmethod
    def of(cls, engine: CDTEngine, layer: int, per_set: Tensor) -> _HeadColumns | None:
        """From the `[S, H]` heads of each set; None unless every set has exactly one head."""
        if not bool((per_set.sum(-1) == 1).all()):
            return None
        geo = engine.geo
        heads = per_set.float().argmax(-1)
        w = engine.parts[layer].attn.o.weight.detach()  # [D, H*dh]
        w_heads = w.view(w.shape[0], geo.n_heads, geo.d_head).permute(1, 2, 0)  # [H, dh, D]
        return cls(heads, w_heads[heads].contiguous())

    def project(self, zh: Tensor) -> Tensor:
        """`[S, B, T, dh]` (each set's head slice of z) -> its share of W_o z `[S, B, T, D]`."""
        s, b, t, dh = zh.shape
        return torch.bmm(zh.reshape(s, b * t, dh), self.w).view(s, b, t, -1)


# -- the shared walk ----------------------------------------------------------------------------
@dataclass
class _PassInput:
    """What a pass runs on: a fresh batch (no totals yet) or a clean cache (all totals)."""

    attention_mask: Tensor  # [B, T]
    readout: Tensor  # [B] read-out position of each row
    dtype: torch.dtype
    tensors: dict[str, Tensor]  # totals by `cache_key`

    @classmethod
    def of_cache(cls, cache: CleanCache) -> _PassInput:
        return cls(cache.attention_mask, cache.readout, cache.logits.dtype, cache.tensors)

    @classmethod
    def of_batch(cls, engine: CDTEngine, batch: dict[str, Tensor]) -> tuple[_PassInput, Tensor]:
        """And the embeddings `[1, B, T, D]`. The read-out position is 0 for an encoder (the
        pooler reads it), the last real token for a causal model."""
        mask = batch["attention_mask"]
        readout = TaskModel.readout_positions(mask, engine.kind)
        emb = engine.adapter.embed(batch["input_ids"], batch.get("token_type_ids"))
        return cls(mask, readout, emb.dtype, {}), emb.unsqueeze(0)


class _Pass(ABC, Generic[Stream]):
    """One pass over the layers. Subclasses say what a stream is (the node rules) and where the
    totals come from; the walk itself (which nodes, in which order, with which shapes) is here."""

    def __init__(self, engine: CDTEngine, given: _PassInput, prune: bool = False) -> None:
        self.e = engine
        self.opts = engine.options
        self.attention_mask = given.attention_mask  # [B, T]
        self.readout_pos = given.readout  # [B]
        self.dtype = given.dtype
        self.tensors = given.tensors  # the cache's totals, or (clean pass) what it records
        self.prune = prune  # in the last layer, propagate only the read-out query
        self._masks: dict[int, Tensor] = {}
        self._rotary_tables: dict[int, Rotary | None] = {}

    # -- node rules (per stream kind) -----------------------------------------------------------
    @abstractmethod
    def lin(
        self,
        key: str,
        at: Positions,
        x: Stream,
        f: Affine,
        clean: bool = False,
        act: Activation | None = None,
    ) -> Stream:
        """Linear map x W^T + b, then (optionally) the clean-up and an activation, as one node.
        `key` names the node's total, `at` the positions of x (and of the total read)."""

    @abstractmethod
    def norm(
        self, key: str, at: Positions, x: Stream, spec: NormSpec, clean: bool = False
    ) -> Stream:
        """LayerNorm or RMSNorm (then the optional clean-up)."""

    @abstractmethod
    def gated(self, gate: Stream, up: Stream, fn: Activation) -> Stream:
        """Gated MLP product fn(gate) * up."""

    @abstractmethod
    def add(self, a: Stream, b: Stream, clean: bool = False, a_zero: bool = False) -> Stream:
        """Residual add (then the optional clean-up); `a_zero`: a's beta is known to be zero."""

    @abstractmethod
    def _attend(
        self,
        layer: int,
        at: Positions,
        q: Stream,
        k: Stream,
        v: Stream,
        allowed: Tensor,
        scaling: float,
    ) -> Stream:
        """Heads-first q `[S, B, H, Tq, dh]`, k, v `[S, B, H, T, dh]` -> z `[S, B, Tq, H, dh]`
        (`at`: the query positions)."""

    @abstractmethod
    def _map(self, fn: Callable[[Tensor], Tensor], x: Stream) -> Stream:
        """Apply a linear, bias-free reshaping / gathering to every part of a stream."""

    # -- hooks ----------------------------------------------------------------------------------
    def _enter(self, layer: int, x: Stream) -> None:
        """Called with the stream entering each layer (the clean pass records it)."""

    @check_shapes
    def hook_z(
        self, layer: int, at: Positions, z: Annotated[Stream, "#S B T H dh"]
    ) -> Annotated[Stream, "#S B T H dh"]:
        """The one site where a pass edits z `[S, B, T, H, dh]` (TransformerLens's `hook_z`),
        right before the output projection: unchanged here; the decompositions patch the sources
        (`_TwoPartPass`), mean ablation puts mu in place of heads (`AblatePass`)."""
        return z

    def _start_output(self, layer: int, at: Positions, o: Affine) -> Annotated[Stream, "S B T D"]:
        """Attention output `[S, B, T, D]` of the start layer of a pass that begins from a cache:
        z is the cached one, edited as `hook_z` edits it (passes project that edit sparsely)."""
        raise NotImplementedError(f"{type(self).__name__} does not start from a cache")

    @check_shapes
    def _project_z(
        self, layer: int, at: Positions, o: Affine, z: Annotated[Stream, "#S B T H dh"]
    ) -> Annotated[Stream, "#S B T D"]:
        """Output projection of z `[S, B, T, H, dh]` -> `[S, B, T, D]`."""
        flat = self._map(lambda t: t.flatten(-2), z)
        return self.lin(cache_key(layer, "o"), at, flat, o)

    # -- positions ------------------------------------------------------------------------------
    def at_readout(self, t: Tensor, dim: int = 2) -> Tensor:
        """`[S, B, ..., T, ...]` -> the read-out position of each row along `dim` (size 1)."""
        return _take(t, self.readout_pos, dim)

    def rows_at_readout(self, t: Tensor, dim: int = 1) -> Tensor:
        """Same for a tensor without the set dim, `[B or 1, ...]` (position dim `dim`)."""
        rows = t.expand(self.readout_pos.shape[0], *t.shape[1:])
        return _take(rows.unsqueeze(0), self.readout_pos, dim + 1)[0]

    def take(self, x: Stream) -> Stream:
        return self._map(self.at_readout, x)

    def cached(self, key: str, at: Positions, dim: int = 2) -> Tensor:
        """A cached total `[1, B, T, ...]` at the positions `at` (along `dim`)."""
        return at.take(self.tensors[key], dim)

    # -- layers ---------------------------------------------------------------------------------
    def run_layers(
        self, x: Stream, start: int, keep: bool, from_cache: bool = False
    ) -> tuple[Stream, Positions, list[Stream | None]]:
        """Layers `start..` on x `[S, B, T, D]` (`from_cache`: the start layer's z is the cached
        one); the output, its positions, and with `keep` every layer output (else None)."""
        outputs: list[Stream | None] = [None] * self.e.geo.n_layers
        at = ALL
        for layer in range(start, self.e.geo.n_layers):
            x, at = self.block(layer, x, at, from_cache and layer == start)
            if keep:
                outputs[layer] = x
        return x, at, outputs

    def block(
        self, layer: int, x: Stream, at: Positions, from_cache: bool = False
    ) -> tuple[Stream, Positions]:
        """One layer `[S, B, T, D]` -> `[S, B, T, D]` (`[S, B, 1, D]` when its attention prunes),
        in the layer's norm placement (`LayerParts.norm_style`), and the output's positions.
        `from_cache`: z is the cached one (and beta entering is zero), so the attention input is
        not needed."""
        parts = self.e.parts[layer]
        style = parts.norm_style
        prune = self.prune and layer == self.e.geo.n_layers - 1
        self._enter(layer, x)
        if style == "post":
            a, at = self.attention(layer, parts, at, x, prune, from_cache)
            x = self.take(x) if prune else x
            h = self.norm(
                cache_key(layer, "ln1"), at, self.add(x, a, a_zero=from_cache), parts.post_attn
            )
            m_in = h
        else:
            a_in = x if from_cache else self.norm(cache_key(layer, "ln1"), at, x, parts.pre_attn)
            a, at = self.attention(layer, parts, at, a_in, prune, from_cache)
            if style == "sandwich":
                a = self.norm(cache_key(layer, "ln_pa"), at, a, parts.post_attn)
            x = self.take(x) if prune else x
            h = self.add(x, a, a_zero=from_cache)
            m_in = self.norm(cache_key(layer, "ln2"), at, h, parts.pre_mlp)
        d = self.mlp(layer, at, parts, m_in)
        if style == "sandwich":
            d = self.norm(cache_key(layer, "ln_pm"), at, d, parts.post_mlp)
        y = self.add(h, d, clean=True)
        if style == "post":
            y = self.norm(cache_key(layer, "ln2"), at, y, parts.post_mlp, clean=True)
        return y, at

    def attention(
        self,
        layer: int,
        parts: LayerParts,
        at: Positions,
        x: Stream,
        prune: bool,
        from_cache: bool = False,
    ) -> tuple[Stream, Positions]:
        """Self-attention up to and including the output projection, `[S, B, T, D]` in and out,
        and the positions of its output. With `prune` the keys and values cover every position but
        only the read-out query is computed (out `[S, B, 1, D]`, at the read-out positions)."""
        attn = parts.attn
        q_at = Positions(self.readout_pos) if prune else at  # the positions of the queries, z, out
        if from_cache:
            return self._start_output(layer, q_at, attn.o), q_at
        geo = self.e.geo
        allowed = self._mask(layer, parts)  # [B, 1, T, T]
        k = self._heads(self.lin(cache_key(layer, "k"), at, x, attn.k), geo.n_kv_heads)
        v = self._heads(self.lin(cache_key(layer, "v"), at, x, attn.v), geo.n_kv_heads)
        if attn.k_norm is not None:
            k = self.norm(cache_key(layer, "kn"), at, k, attn.k_norm)
        rotary = self._rotary(layer)
        if rotary is not None:
            k = self._rope(k, rotary)
        if prune:
            x = self.take(x)
            allowed = self.rows_at_readout(allowed, dim=2)  # [B, 1, 1, T]
            if rotary is not None:
                rotary = (self.rows_at_readout(rotary[0]), self.rows_at_readout(rotary[1]))
        q = self._heads(self.lin(cache_key(layer, "q"), q_at, x, attn.q), geo.n_heads)
        if attn.q_norm is not None:
            q = self.norm(cache_key(layer, "qn"), q_at, q, attn.q_norm)
        if rotary is not None:
            q = self._rope(q, rotary)
        rep = geo.group_size

        def kv_first(t: Tensor) -> Tensor:  # [S, B, T, H_kv, dh] -> [S, B, H, T, dh]
            t = t.transpose(2, 3)
            return t.repeat_interleave(rep, dim=2) if rep > 1 else t

        q = self._map(lambda t: t.transpose(2, 3), q)
        k, v = self._map(kv_first, k), self._map(kv_first, v)
        z = self._attend(layer, q_at, q, k, v, allowed, attn.scaling)
        return self._project_z(layer, q_at, attn.o, self.hook_z(layer, q_at, z)), q_at

    @check_shapes
    def _heads(self, x: Annotated[Stream, "#S B T HD"], n: int) -> Annotated[Stream, "#S B T * dh"]:
        """`[S, B, T, n*dh]` -> `[S, B, T, n, dh]`."""
        dh = self.e.geo.d_head
        return self._map(lambda t: t.reshape(*t.shape[:-1], n, dh), x)

    def _rope(self, x: Stream, rotary: Rotary) -> Stream:
        """Rotary embedding on `[S, B, T, H, dh]`: linear without bias, so every part rotates."""
        cos, sin = rotary[0][..., None, :], rotary[1][..., None, :]
        return self._map(lambda t: t * cos + rotate_half(t) * sin, x)

    def _mask(self, layer: int, parts: LayerParts) -> Tensor:
        """Allowed keys `[B, 1, T, T]`: padding, causal and sliding-window masks."""
        if layer in self._masks:
            return self._masks[layer]
        am = self.attention_mask
        n = am.shape[1]
        allowed = am.bool()[:, None, None, :].expand(-1, 1, n, n)
        q = torch.arange(n, device=am.device)[:, None]
        k = torch.arange(n, device=am.device)[None, :]
        if parts.attn.causal:
            allowed = allowed & (k <= q)
            if parts.attn.sliding_window is not None:
                allowed = allowed & (k > q - parts.attn.sliding_window)
        self._masks[layer] = allowed
        return allowed

    def _rotary(self, layer: int) -> Rotary | None:
        """(cos, sin) `[1, T, dh]` of the layer (None without rotary), stored with the totals so a
        cache computes them once; taken from the stream entering the layer (length, dtype)."""
        if layer not in self._rotary_tables:
            key = cache_key(layer, "rot")
            if key not in self.tensors:
                hidden = self.tensors[cache_key(layer, "in")][0]
                tables = self.e.adapter.rotary(hidden, layer)
                self.tensors[key] = (
                    hidden.new_empty(0) if tables is None else torch.stack(list(tables))
                )
            tab = self.tensors[key]
            self._rotary_tables[layer] = None if tab.numel() == 0 else (tab[0], tab[1])
        return self._rotary_tables[layer]

    def mlp(self, layer: int, at: Positions, parts: LayerParts, x: Stream) -> Stream:
        mp = parts.mlp
        if mp.kind == "gated":
            assert mp.gate is not None
            up = self.lin(cache_key(layer, "up"), at, x, mp.up, clean=True)
            gate = self.lin(cache_key(layer, "gate"), at, x, mp.gate, clean=True)
            hidden = self.gated(gate, up, mp.act)
        else:
            hidden = self.lin(cache_key(layer, "up"), at, x, mp.up, clean=True, act=mp.act)
        return self.lin(cache_key(layer, "down"), at, hidden, mp.down, clean=True)

    @check_shapes
    def readout(self, x: Annotated[Stream, "S B T D"], at: Positions) -> Annotated[Stream, "S B L"]:
        """Class logits `[S, B, n_labels]` from the read-out position of the last layer's output
        x (at positions `at`)."""
        e = self.e
        if at.readout is None:
            x = self.take(x)
        # the read-out totals are cached at the read-out position already: ALL reads them as is
        if e.kind == "encoder":
            pooled = self.lin(cache_key(READOUT, "pool"), ALL, x, e.pooler, act=e.pooler_act)
            out = self.lin(cache_key(READOUT, "cls"), ALL, pooled, e.classifier)
        else:
            normed = self.norm(cache_key(READOUT, "norm"), ALL, x, e.final_norm)
            lm_head = _Unembedding(e.unembed_w, e.unembed_b)
            out = self.lin(cache_key(READOUT, "lm"), ALL, normed, lm_head)
        return self._map(lambda t: t[:, :, 0], out)


# -- totals only: the clean forward and mean ablation -------------------------------------------
class _TotalsPass(_Pass[Tensor]):
    """The ordinary forward on totals; `_record` lets the clean pass keep every node's total.
    (`clean` and `a_zero` concern the two parts and do not apply here.)"""

    def _record(self, key: str, value: Tensor) -> None:
        """Keep a node's total (pre-bias matmul outputs, norm scales, P, z): clean pass only."""

    @check_shapes
    def lin(
        self,
        key: str,
        at: Positions,
        x: Annotated[Tensor, "#S B T I"],
        f: Affine,
        clean: bool = False,
        act: Activation | None = None,
    ) -> Annotated[Tensor, "#S B T O"]:
        tw = F.linear(x, f.weight)
        self._record(key, tw)
        bias = f.bias
        out = tw if bias is None else tw + bias
        return out if act is None else act(out)

    def norm(
        self, key: str, at: Positions, x: Tensor, spec: NormSpec, clean: bool = False
    ) -> Tensor:
        inv = inv_std(x, spec)
        self._record(key, inv)
        if spec.kind == "layernorm":
            y = (x - x.mean(-1, keepdim=True)) * inv * spec.scale
            return y if spec.bias is None else y + spec.bias
        return x * (inv * spec.scale)  # same rounding as the two-part rule

    def gated(self, gate: Tensor, up: Tensor, fn: Activation) -> Tensor:
        return fn(gate) * up

    def add(self, a: Tensor, b: Tensor, clean: bool = False, a_zero: bool = False) -> Tensor:
        return a + b

    @check_shapes
    def _attend(
        self,
        layer: int,
        at: Positions,
        q: Annotated[Tensor, "#S B H T dh"],
        k: Annotated[Tensor, "#S B H K dh"],
        v: Annotated[Tensor, "#S B H K dh"],
        allowed: Annotated[Tensor, "B 1 T K"],
        scaling: float,
    ) -> Annotated[Tensor, "#S B T H dh"]:
        p = _probs(q, k, allowed, scaling)
        z = torch.matmul(p, v).transpose(2, 3)  # [S, B, T, H, dh]
        self._record(cache_key(layer, "p"), p)
        self._record(cache_key(layer, "z"), z)
        return z

    def _map(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return fn(x)


class CleanPass(_TotalsPass):
    """The ordinary forward from the embeddings, recording every node's total into `tensors`."""

    def __init__(self, engine: CDTEngine, batch: dict[str, Tensor]) -> None:
        given, self.embedded = _PassInput.of_batch(engine, batch)
        super().__init__(engine, given)

    def _record(self, key: str, value: Tensor) -> None:
        self.tensors[key] = value

    def _enter(self, layer: int, x: Tensor) -> None:
        self._record(cache_key(layer, "in"), x)

    def run(self) -> tuple[Tensor, list[Tensor]]:
        """Class logits `[B, n_labels]` and the layer outputs `[B, T, D]`."""
        x, at, outputs = self.run_layers(self.embedded, 0, keep=True)
        hidden = [out[0] for out in outputs if out is not None]
        return self.readout(x, at)[0], hidden


@dataclass
class _Ablation:
    """The heads of one layer that each set replaces by mu."""

    heads: Tensor  # [S, H] bool
    mu: Tensor  # [H, dh], or per position [1, T, H, dh]


def _ablations(
    geo: Geometry, heads: Sequence[Sequence[tuple[int, int]]], mu: Tensor, like: Tensor, n_pos: int
) -> dict[int, _Ablation]:
    """Per-layer ablations of the head sets; mu on the device and in the dtype of `like`."""
    out: dict[int, _Ablation] = {}
    for s, hs in enumerate(heads):
        for layer, head in hs:
            if layer not in out:
                mu_l = mu[layer].to(device=like.device, dtype=like.dtype)
                if mu_l.dim() == 3:  # [T_mu, H, dh] -> [1, T, H, dh]
                    mu_l = mu_l[:n_pos].unsqueeze(0)
                none = torch.zeros(len(heads), geo.n_heads, dtype=torch.bool, device=like.device)
                out[layer] = _Ablation(none, mu_l)
            out[layer].heads[s, head] = True
    return out


class AblatePass(_TotalsPass):
    """Mean ablation from a cached prefix: the forward starts at the earliest ablated layer, where
    nothing upstream changed, so that layer's output projection is the cached W_o z plus
    W_o (mu - z) over the replaced heads only; later layers replace the heads' z by mu."""

    def __init__(self, engine: CDTEngine, cache: CleanCache) -> None:
        super().__init__(engine, _PassInput.of_cache(cache), prune=True)
        self.logits = cache.logits  # [B, n_labels]: the device and dtype of the pass
        self.ablation: dict[int, _Ablation] = {}  # of the current run
        self.head_columns: _HeadColumns | None = None  # the start layer's, of the current run

    def run(self, heads: Sequence[Sequence[tuple[int, int]]], mu: Tensor) -> Tensor:
        """Class logits `[S, B, n_labels]`, set s with the heads `heads[s]` replaced by mu."""
        n_pos = self.attention_mask.shape[1]
        self.ablation = _ablations(self.e.geo, heads, mu, self.logits, n_pos)
        start = min(self.ablation)
        self.head_columns = _HeadColumns.of(self.e, start, self.ablation[start].heads)
        entering = self.tensors[cache_key(start, "in")]
        x = entering.expand(len(heads), *entering.shape[1:])
        x, at, _ = self.run_layers(x, start, keep=False, from_cache=True)
        return self.readout(x, at)

    def _ablated(self, layer: int, at: Positions) -> tuple[Tensor, Tensor]:
        """(mask `[S, 1, 1, H, 1]` of the heads replaced, mu at the positions `at`)."""
        ablation = self.ablation[layer]
        mu = ablation.mu
        if mu.dim() == 4 and at.readout is not None:
            mu = self.rows_at_readout(mu)
        return ablation.heads[:, None, None, :, None], mu

    @check_shapes
    def hook_z(
        self, layer: int, at: Positions, z: Annotated[Tensor, "#S B T H dh"]
    ) -> Annotated[Tensor, "S B T H dh"]:
        """The ablated heads' z is mu."""
        if layer not in self.ablation:
            return z
        m, mu = self._ablated(layer, at)
        return torch.where(m, mu, z)

    @check_shapes
    def _start_output(self, layer: int, at: Positions, o: Affine) -> Annotated[Tensor, "S B T D"]:
        """Cached W_o z plus W_o (mu - z) over the replaced heads: `hook_z`'s edit of the cached
        z, projected through those heads' columns only (one head per set) or all of W_o."""
        m, mu = self._ablated(layer, at)
        z = self.cached(cache_key(layer, "z"), at)
        delta = (mu - z) * m  # [S, B, T, H, dh]
        if self.head_columns is not None:
            heads = self.head_columns.heads
            idx = heads.view(-1, 1, 1, 1, 1).expand(-1, *delta.shape[1:3], 1, delta.shape[-1])
            change = self.head_columns.project(torch.gather(delta, 3, idx).squeeze(3))
        else:
            change = F.linear(delta.flatten(-2), o.weight)
        out = self.cached(cache_key(layer, "o"), at) + change
        return out if o.bias is None else out + o.bias


# -- two parts: the decompositions --------------------------------------------------------------
@dataclass
class _Patch:
    """Where one layer's sources sit in each set, and the mu they are measured against."""

    mask: Tensor  # [S, B, T, H] bool (padding positions excluded)
    mu: Tensor  # [H, dh], or per position [B, T, H, dh]


def _source_patches(
    geo: Geometry,
    source_sets: Sequence[Sequence[Source]],
    mu: Tensor,
    attention_mask: Tensor,
    dtype: torch.dtype,
) -> dict[int, _Patch]:
    """Per-layer patches of the source sets (a source is (layer, head[, position]))."""
    am = attention_mask.bool()
    n_sets, n_pos = len(source_sets), am.shape[1]
    if mu.dim() == 4 and mu.shape[1] < n_pos:
        raise ValueError(f"per-position mu covers {mu.shape[1]} positions, the batch has {n_pos}")
    masks: dict[int, Tensor] = {}
    for s, sources in enumerate(source_sets):
        for src in sources:
            layer, head = int(src[0]), int(src[1])
            pos = src[2] if len(src) > 2 else None
            if not (0 <= layer < geo.n_layers and 0 <= head < geo.n_heads):
                raise ValueError(
                    f"source {src} outside {geo.n_layers} layers x {geo.n_heads} heads"
                )
            m = masks.setdefault(
                layer,
                torch.zeros(n_sets, *am.shape, geo.n_heads, dtype=torch.bool, device=am.device),
            )
            if pos is None:
                m[s, :, :, head] = True
            else:
                m[s, :, int(pos), head] = True
    if not masks:
        raise ValueError("no source heads given")
    patches = {}
    for layer, m in masks.items():
        m &= am[None, :, :, None]  # sources at padding positions contribute nothing
        mu_l = mu[layer]
        if mu_l.dim() == 3:  # [T_mu, H, dh] -> [B, T, H, dh]
            mu_l = mu_l[:n_pos].unsqueeze(0).expand(am.shape[0], -1, -1, -1)
        patches[layer] = _Patch(m, mu_l.to(device=am.device, dtype=dtype))
    return patches


class _TwoPartPass(_Pass[Parts]):
    """Streams are (beta, gamma) pairs: beta the part relevant to the source heads, gamma the
    rest, beta + gamma the real activation. The node rules are the shared ones of
    `ctsft.cdt.rules`; subclasses only say where each node's total comes from (the hooks below)."""

    def __init__(
        self, engine: CDTEngine, given: _PassInput, record_layers: bool, prune: bool = False
    ) -> None:
        super().__init__(engine, given, prune)
        self.rules = node_rules(self.opts.compile)
        self.simple = self.opts.convention == "simple"
        self.record_layers = record_layers
        self.patch: dict[int, _Patch] = {}

    # -- where the totals come from ---------------------------------------------------------------
    @abstractmethod
    def _gamma_w(
        self, key: str, at: Positions, gamma: Tensor, weight: Tensor
    ) -> tuple[Tensor, bool]:
        """(gamma W, False), or (the total W, True) for the rule to subtract beta W from."""

    @abstractmethod
    def _inv_std(self, key: str, at: Positions, x: Parts, spec: NormSpec) -> Tensor:
        """The norm scale of the total beta + gamma."""

    @abstractmethod
    def _attention_totals(
        self,
        layer: int,
        at: Positions,
        q: Parts,
        k: Parts,
        v: Parts,
        probs: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor | None, Tensor]:
        """(P of the totals, needed with frozen attention, else may be None; z of the totals)."""

    @abstractmethod
    def _z_total(self, layer: int, at: Positions, z: Parts) -> Tensor:
        """The total z `[S or 1, B, T, H, dh]` of a layer with sources."""

    # -- node rules -----------------------------------------------------------------------------
    @check_shapes
    def lin(
        self,
        key: str,
        at: Positions,
        x: Annotated[Parts, "#S B T I"],
        f: Affine,
        clean: bool = False,
        act: Activation | None = None,
    ) -> Annotated[Parts, "#S B T O"]:
        weight = f.weight
        bw = F.linear(x[0], weight)
        other, from_total = self._gamma_w(key, at, x[1], weight)
        return self._bias_split(bw, other, f.bias, from_total, clean, act)

    def _bias_split(
        self,
        bw: Tensor,
        other: Tensor,
        bias: Tensor | None,
        from_total: bool,
        clean: bool = False,
        act: Activation | None = None,
    ) -> Parts:
        """The rest of a linear node after beta W: bias split, clean-up, activation (fused)."""
        clean = clean and self.opts.normalize_rel_irrel
        args = (bw, other, bias, from_total, self.simple, self.opts.bias_eps, clean)
        name = None if act is None else activation_name(act)
        if act is not None and name is None:  # a module the fused rules cannot take by name
            return linear_node(*args, act)
        return self.rules.linear(*args, name)

    def norm(self, key: str, at: Positions, x: Parts, spec: NormSpec, clean: bool = False) -> Parts:
        beta, gamma = x
        inv = self._inv_std(key, at, x, spec)
        clean = clean and self.opts.normalize_rel_irrel
        if spec.kind == "layernorm":
            return self.rules.layernorm(
                beta, gamma, inv, spec.scale, spec.bias, self.simple, self.opts.bias_eps, clean
            )
        scale = inv * spec.scale
        out = (beta * scale, gamma * scale)
        return clean_up(*out) if clean else out

    def gated(self, gate: Parts, up: Parts, fn: Activation) -> Parts:
        """gamma' = fn(gate)_gamma * up_gamma; every term touching beta is relevant."""
        name = activation_name(fn)
        if name is None:  # a module the fused rules cannot take by name: eager
            return gated_node(gate[0], gate[1], up[0], up[1], fn)
        return self.rules.gated(gate[0], gate[1], up[0], up[1], name)

    def add(self, a: Parts, b: Parts, clean: bool = False, a_zero: bool = False) -> Parts:
        """With `a_zero` (the stream entering the start layer) beta is b's, bit for bit."""
        if a_zero and not clean:
            return b[0], a[1] + b[1]
        return self.rules.add(a[0], a[1], b[0], b[1], clean and self.opts.normalize_rel_irrel)

    @check_shapes
    def _attend(
        self,
        layer: int,
        at: Positions,
        q: Annotated[Parts, "#S B H T dh"],
        k: Annotated[Parts, "#S B H K dh"],
        v: Annotated[Parts, "#S B H K dh"],
        allowed: Annotated[Tensor, "B 1 T K"],
        scaling: float,
    ) -> Annotated[Parts, "#S B T H dh"]:
        """z_beta = P_rel v_beta (P_rel = P_total when frozen, else softmax of the beta scores);
        z_gamma = z_total - z_beta."""

        def probs(qx: Tensor, kx: Tensor) -> Tensor:
            return _probs(qx, kx, allowed, scaling)

        p_total, z_total = self._attention_totals(layer, at, q, k, v, probs)
        if self.opts.frozen_attention:
            assert p_total is not None
            p_rel = p_total
        else:
            p_rel = probs(q[0], k[0])
        zb = torch.matmul(p_rel, v[0]).transpose(2, 3)
        return zb, z_total - zb

    def _map(self, fn: Callable[[Tensor], Tensor], x: Parts) -> Parts:
        return fn(x[0]), fn(x[1])

    # -- sources --------------------------------------------------------------------------------
    def _patch_at(self, layer: int, at: Positions) -> tuple[Tensor, Tensor]:
        """(mask `[S, B, T, H]`, mu) of the layer's sources at the positions `at`."""
        patch = self.patch[layer]
        if at.readout is None:
            return patch.mask, patch.mu
        mu = self.rows_at_readout(patch.mu) if patch.mu.dim() == 4 else patch.mu
        return self.at_readout(patch.mask), mu

    @check_shapes
    def hook_z(
        self, layer: int, at: Positions, z: Annotated[Parts, "#S B T H dh"]
    ) -> Annotated[Parts, "S B T H dh"]:
        """At the sources, the relevant part of z is z - mu and the rest is mu."""
        if layer not in self.patch:
            return z
        mask, mu = self._patch_at(layer, at)
        total = self._z_total(layer, at, z)
        m = mask.unsqueeze(-1)
        return torch.where(m, total - mu, z[0]), torch.where(m, mu.expand_as(total), z[1])

    def _propagate(
        self, x: Parts, start: int, from_cache: bool = False
    ) -> tuple[Tensor, Tensor, list[Parts | None]]:
        """beta, gamma of the class logits `[S, B, n_labels]` and (with record_layers) every
        layer output from `start` on."""
        x, at, layers = self.run_layers(x, start, self.record_layers, from_cache)
        beta, gamma = self.readout(x, at)
        return beta, gamma, layers


class NaivePass(_TwoPartPass):
    """The reference: both parts from the embeddings, every total recomputed from beta + gamma."""

    def __init__(self, engine: CDTEngine, batch: dict[str, Tensor], record_layers: bool) -> None:
        given, self.embedded = _PassInput.of_batch(engine, batch)
        super().__init__(engine, given, record_layers)

    def run(
        self, source_sets: Sequence[Sequence[Source]], mu: Tensor
    ) -> tuple[Tensor, Tensor, list[Parts | None]]:
        self.patch = _source_patches(self.e.geo, source_sets, mu, self.attention_mask, self.dtype)
        gamma = self.embedded.expand(len(source_sets), *self.embedded.shape[1:])
        beta, gamma, layers = self._propagate((torch.zeros_like(gamma), gamma), 0)
        return beta, gamma, layers if self.record_layers else []

    def _enter(self, layer: int, x: Parts) -> None:
        # the rotary tables are the only totals this pass takes from the adapter: they need the
        # stream entering the layer for its length and dtype
        self.tensors[cache_key(layer, "in")] = x[1][:1]

    def _gamma_w(
        self, key: str, at: Positions, gamma: Tensor, weight: Tensor
    ) -> tuple[Tensor, bool]:
        return F.linear(gamma, weight), False

    def _inv_std(self, key: str, at: Positions, x: Parts, spec: NormSpec) -> Tensor:
        return inv_std(x[0] + x[1], spec)

    def _attention_totals(
        self,
        layer: int,
        at: Positions,
        q: Parts,
        k: Parts,
        v: Parts,
        probs: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor | None, Tensor]:
        p_total = probs(q[0] + q[1], k[0] + k[1])
        return p_total, torch.matmul(p_total, v[0] + v[1]).transpose(2, 3)

    def _z_total(self, layer: int, at: Positions, z: Parts) -> Tensor:
        return z[0] + z[1]


class DecomposePass(_TwoPartPass):
    """The fast path: all source sets stacked, from the earliest source layer on, every total
    from the clean cache. Since beta + gamma is the real activation at every node, gamma W is
    (cached total) W - beta W: one matmul per node instead of two; P and z totals are cached too.
    Below the start layer beta is zero, so that layer's z is the cached one (patched)."""

    def __init__(self, engine: CDTEngine, cache: CleanCache, record_layers: bool) -> None:
        # recorded layer outputs need every position: prune only without them
        super().__init__(engine, _PassInput.of_cache(cache), record_layers, not record_layers)
        self.head_columns: _HeadColumns | None = None  # the start layer's, of the current run

    def run(
        self, source_sets: Sequence[Sequence[Source]], mu: Tensor
    ) -> tuple[Tensor, Tensor, list[Parts | None]]:
        self.patch = _source_patches(self.e.geo, source_sets, mu, self.attention_mask, self.dtype)
        start = min(self.patch)
        per_set = self.patch[start].mask.any(1).any(1)  # [S, H]
        self.head_columns = _HeadColumns.of(self.e, start, per_set)
        gamma = self.tensors[cache_key(start, "in")]
        # a real zero tensor, not an expanded view: the fused rules would compile a stride-0 variant
        beta = gamma.new_zeros(len(source_sets), *gamma.shape[1:])
        return self._propagate((beta, gamma), start, from_cache=True)

    @check_shapes
    def _start_output(self, layer: int, at: Positions, o: Affine) -> Annotated[Parts, "S B T D"]:
        """The cached z (beta zero, nothing upstream is relevant), patched as `hook_z` patches
        it. When each set is one head, beta there is (z - mu) * mask on that head and zero
        elsewhere, so beta W_o needs only that head's columns."""
        z_total = self.cached(cache_key(layer, "z"), at)
        if self.head_columns is None:
            z = self.hook_z(layer, at, (torch.zeros_like(z_total), z_total))
            return self._project_z(layer, at, o, z)
        mask, mu = self._patch_at(layer, at)
        diff = z_total - mu
        heads = self.head_columns.heads  # [S]
        zh = diff[0][:, :, heads].permute(2, 0, 1, 3)  # diff [1, B, T, H, dh] -> [S, B, T, dh]
        keep = torch.gather(mask, 3, heads.view(-1, 1, 1, 1).expand(-1, *mask.shape[1:3], 1))
        zh = zh * keep.to(zh.dtype)  # = where(mask, z - mu, 0) without the slow `where`
        bw = self.head_columns.project(zh)
        o_total = self.cached(cache_key(layer, "o"), at)
        return self._bias_split(bw, o_total, o.bias, from_total=True)

    def _gamma_w(
        self, key: str, at: Positions, gamma: Tensor, weight: Tensor
    ) -> tuple[Tensor, bool]:
        return self.cached(key, at), True

    def _inv_std(self, key: str, at: Positions, x: Parts, spec: NormSpec) -> Tensor:
        return self.cached(key, at)

    def _attention_totals(
        self,
        layer: int,
        at: Positions,
        q: Parts,
        k: Parts,
        v: Parts,
        probs: Callable[[Tensor, Tensor], Tensor],
    ) -> tuple[Tensor | None, Tensor]:
        frozen = self.opts.frozen_attention
        p_total = self.cached(cache_key(layer, "p"), at, dim=3) if frozen else None  # query dim
        return p_total, self.cached(cache_key(layer, "z"), at)

    def _z_total(self, layer: int, at: Positions, z: Parts) -> Tensor:
        return self.cached(cache_key(layer, "z"), at)
