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
Every stream carries the leading set dim; cached totals have S = 1 and broadcast. Once pruned
(after the last layer's keys and values) T is 1: only the read-out position is propagated.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Literal, NamedTuple, Protocol, TypeVar

import torch
import torch.nn.functional as F

from ctsft.adapters import LayerParts, NormSpec
from ctsft.adapters.decoder import rotate_half
from ctsft.cdt.rules import Parts, activation_name, clean_up, gated_node, linear_node, node_rules
from ctsft.models.task_model import TaskModel

if TYPE_CHECKING:
    from ctsft.adapters import Geometry
    from ctsft.cdt.engine import CDTEngine, CleanCache, Source

Tensor = torch.Tensor
Activation = Callable[[Tensor], Tensor]
Stream = TypeVar("Stream", Tensor, Parts)  # totals, or (beta, gamma)
Rotary = tuple[Tensor, Tensor]  # (cos, sin) `[1, T, dh]`, or `[B, 1, dh]` once pruned


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
        self.pruned = False  # the streams (and cached totals read) are at the read-out position
        self.start: int | None = None  # layer whose attention output is the cached one
        self._masks: dict[int, Tensor] = {}
        self._rotary_tables: dict[int, Rotary | None] = {}

    # -- node rules (per stream kind) -----------------------------------------------------------
    @abstractmethod
    def lin(
        self, key: str, x: Stream, f: Affine, clean: bool = False, act: Activation | None = None
    ) -> Stream:
        """Linear map x W^T + b, then (optionally) the clean-up and an activation, as one node."""

    @abstractmethod
    def norm(self, key: str, x: Stream, spec: NormSpec, clean: bool = False) -> Stream:
        """LayerNorm or RMSNorm (then the optional clean-up)."""

    @abstractmethod
    def gated(self, gate: Stream, up: Stream, fn: Activation) -> Stream:
        """Gated MLP product fn(gate) * up."""

    @abstractmethod
    def add(self, a: Stream, b: Stream, clean: bool = False, a_zero: bool = False) -> Stream:
        """Residual add (then the optional clean-up); `a_zero`: a's beta is known to be zero."""

    @abstractmethod
    def _attend(
        self, layer: int, q: Stream, k: Stream, v: Stream, allowed: Tensor, scaling: float
    ) -> Stream:
        """Heads-first q `[S, B, H, Tq, dh]`, k, v `[S, B, H, T, dh]` -> z `[S, B, Tq, H, dh]`."""

    @abstractmethod
    def _map(self, fn: Callable[[Tensor], Tensor], x: Stream) -> Stream:
        """Apply a linear, bias-free reshaping / gathering to every part of a stream."""

    # -- hooks ----------------------------------------------------------------------------------
    def _enter(self, layer: int, x: Stream) -> None:
        """Called with the stream entering each layer (the clean pass records it)."""

    def _cached_z(self, layer: int) -> Stream:
        """z of the start layer from the cache (only passes that start from a cache have one)."""
        raise NotImplementedError(f"{type(self).__name__} does not start from a cache")

    def _project_z(self, layer: int, o: Affine, z: Stream) -> Stream:
        """Output projection of z `[S, B, T, H, dh]` -> `[S, B, T, D]`; passes that edit z (patch
        the sources, ablate heads) hook in here."""
        flat = self._map(lambda t: t.flatten(-2), z)
        return self.lin(cache_key(layer, "o"), flat, o)

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

    def cached(self, key: str, dim: int = 2) -> Tensor:
        """A cached total `[1, B, T, ...]`, at the read-out position (`dim`) once pruned."""
        t = self.tensors[key]
        return self.at_readout(t, dim) if self.pruned else t

    # -- layers ---------------------------------------------------------------------------------
    def run_layers(self, x: Stream, start: int, keep: bool) -> tuple[Stream, list[Stream | None]]:
        """Layers `start..` on x `[S, B, T, D]`; with `keep`, every layer output (else None)."""
        outputs: list[Stream | None] = [None] * self.e.geo.n_layers
        for layer in range(start, self.e.geo.n_layers):
            x = self.block(layer, x)
            if keep:
                outputs[layer] = x
        return x, outputs

    def block(self, layer: int, x: Stream) -> Stream:
        """One layer `[S, B, T, D]` -> `[S, B, T, D]` (`[S, B, 1, D]` once pruned), in the
        layer's norm placement (`LayerParts.norm_style`)."""
        parts = self.e.parts[layer]
        style = parts.norm_style
        prune = self.prune and layer == self.e.geo.n_layers - 1
        # z from the cache (and beta entering is zero): the attention input is not needed
        from_cache = layer == self.start
        self._enter(layer, x)
        if style == "post":
            a = self.attention(layer, parts, x, prune)
            x = self.take(x) if prune else x
            h = self.norm(
                cache_key(layer, "ln1"), self.add(x, a, a_zero=from_cache), parts.post_attn
            )
            m_in = h
        else:
            a_in = x if from_cache else self.norm(cache_key(layer, "ln1"), x, parts.pre_attn)
            a = self.attention(layer, parts, a_in, prune)
            if style == "sandwich":
                a = self.norm(cache_key(layer, "ln_pa"), a, parts.post_attn)
            x = self.take(x) if prune else x
            h = self.add(x, a, a_zero=from_cache)
            m_in = self.norm(cache_key(layer, "ln2"), h, parts.pre_mlp)
        d = self.mlp(layer, parts, m_in)
        if style == "sandwich":
            d = self.norm(cache_key(layer, "ln_pm"), d, parts.post_mlp)
        y = self.add(h, d, clean=True)
        if style == "post":
            y = self.norm(cache_key(layer, "ln2"), y, parts.post_mlp, clean=True)
        return y

    def attention(self, layer: int, parts: LayerParts, x: Stream, prune: bool) -> Stream:
        """Self-attention up to and including the output projection, `[S, B, T, D]` in and out.
        With `prune` the keys and values cover every position but only the read-out query is
        computed (out `[S, B, 1, D]`)."""
        at = parts.attn
        if layer == self.start:
            if prune:
                self.pruned = True
            return self._project_z(layer, at.o, self._cached_z(layer))
        geo = self.e.geo
        allowed = self._mask(layer, parts)  # [B, 1, T, T]
        k = self._heads(self.lin(cache_key(layer, "k"), x, at.k), geo.n_kv_heads)
        v = self._heads(self.lin(cache_key(layer, "v"), x, at.v), geo.n_kv_heads)
        if at.k_norm is not None:
            k = self.norm(cache_key(layer, "kn"), k, at.k_norm)
        rotary = self._rotary(layer)
        if rotary is not None:
            k = self._rope(k, rotary)
        if prune:
            self.pruned = True
            x = self.take(x)
            allowed = self.rows_at_readout(allowed, dim=2)  # [B, 1, 1, T]
            if rotary is not None:
                rotary = (self.rows_at_readout(rotary[0]), self.rows_at_readout(rotary[1]))
        q = self._heads(self.lin(cache_key(layer, "q"), x, at.q), geo.n_heads)
        if at.q_norm is not None:
            q = self.norm(cache_key(layer, "qn"), q, at.q_norm)
        if rotary is not None:
            q = self._rope(q, rotary)
        rep = geo.group_size

        def kv_first(t: Tensor) -> Tensor:  # [S, B, T, H_kv, dh] -> [S, B, H, T, dh]
            t = t.transpose(2, 3)
            return t.repeat_interleave(rep, dim=2) if rep > 1 else t

        q = self._map(lambda t: t.transpose(2, 3), q)
        k, v = self._map(kv_first, k), self._map(kv_first, v)
        z = self._attend(layer, q, k, v, allowed, at.scaling)
        return self._project_z(layer, at.o, z)

    def _heads(self, x: Stream, n: int) -> Stream:
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

    def mlp(self, layer: int, parts: LayerParts, x: Stream) -> Stream:
        mp = parts.mlp
        if mp.kind == "gated":
            assert mp.gate is not None
            up = self.lin(cache_key(layer, "up"), x, mp.up, clean=True)
            gate = self.lin(cache_key(layer, "gate"), x, mp.gate, clean=True)
            hidden = self.gated(gate, up, mp.act)
        else:
            hidden = self.lin(cache_key(layer, "up"), x, mp.up, clean=True, act=mp.act)
        return self.lin(cache_key(layer, "down"), hidden, mp.down, clean=True)

    def readout(self, x: Stream) -> Stream:
        """Class logits `[S, B, n_labels]` from the read-out position of the last layer's output."""
        e = self.e
        if not self.pruned:
            x = self.take(x)
        self.pruned = False  # the read-out totals are cached at the read-out position already
        if e.kind == "encoder":
            pooled = self.lin(cache_key(READOUT, "pool"), x, e.pooler, act=e.pooler_act)
            out = self.lin(cache_key(READOUT, "cls"), pooled, e.classifier)
        else:
            normed = self.norm(cache_key(READOUT, "norm"), x, e.final_norm)
            lm_head = _Unembedding(e.unembed_w, e.unembed_b)
            out = self.lin(cache_key(READOUT, "lm"), normed, lm_head)
        return self._map(lambda t: t[:, :, 0], out)


# -- totals only: the clean forward and mean ablation -------------------------------------------
class _TotalsPass(_Pass[Tensor]):
    """The ordinary forward on totals; `_record` lets the clean pass keep every node's total.
    (`clean` and `a_zero` concern the two parts and do not apply here.)"""

    def _record(self, key: str, value: Tensor) -> None:
        """Keep a node's total (pre-bias matmul outputs, norm scales, P, z): clean pass only."""

    def lin(
        self, key: str, x: Tensor, f: Affine, clean: bool = False, act: Activation | None = None
    ) -> Tensor:
        tw = F.linear(x, f.weight)
        self._record(key, tw)
        bias = f.bias
        out = tw if bias is None else tw + bias
        return out if act is None else act(out)

    def norm(self, key: str, x: Tensor, spec: NormSpec, clean: bool = False) -> Tensor:
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

    def _attend(
        self, layer: int, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scaling: float
    ) -> Tensor:
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
        x, outputs = self.run_layers(self.embedded, 0, keep=True)
        hidden = [out[0] for out in outputs if out is not None]
        return self.readout(x)[0], hidden


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
        self.ablation: dict[int, _Ablation] = {}
        self.head_columns: _HeadColumns | None = None

    def run(self, heads: Sequence[Sequence[tuple[int, int]]], mu: Tensor) -> Tensor:
        """Class logits `[S, B, n_labels]`, set s with the heads `heads[s]` replaced by mu."""
        n_pos = self.attention_mask.shape[1]
        self.ablation = _ablations(self.e.geo, heads, mu, self.logits, n_pos)
        self.start = min(self.ablation)
        self.head_columns = _HeadColumns.of(self.e, self.start, self.ablation[self.start].heads)
        entering = self.tensors[cache_key(self.start, "in")]
        x = entering.expand(len(heads), *entering.shape[1:])
        x, _ = self.run_layers(x, self.start, keep=False)
        return self.readout(x)

    def _cached_z(self, layer: int) -> Tensor:
        return self.cached(cache_key(layer, "z"))

    def _project_z(self, layer: int, o: Affine, z: Tensor) -> Tensor:
        if layer not in self.ablation:
            return super()._project_z(layer, o, z)
        ablation = self.ablation[layer]
        mu = ablation.mu
        if mu.dim() == 4 and self.pruned:
            mu = self.rows_at_readout(mu)
        m = ablation.heads[:, None, None, :, None]  # [S, 1, 1, H, 1]
        if layer != self.start:
            return super()._project_z(layer, o, torch.where(m, mu, z))
        delta = (mu - z) * m  # [S, B, T, H, dh]
        if self.head_columns is not None:
            heads = self.head_columns.heads
            idx = heads.view(-1, 1, 1, 1, 1).expand(-1, *delta.shape[1:3], 1, delta.shape[-1])
            change = self.head_columns.project(torch.gather(delta, 3, idx).squeeze(3))
        else:
            change = F.linear(delta.flatten(-2), o.weight)
        out = self.cached(cache_key(layer, "o")) + change
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
    def _gamma_w(self, key: str, gamma: Tensor, weight: Tensor) -> tuple[Tensor, bool]:
        """(gamma W, False), or (the total W, True) for the rule to subtract beta W from."""

    @abstractmethod
    def _inv_std(self, key: str, x: Parts, spec: NormSpec) -> Tensor:
        """The norm scale of the total beta + gamma."""

    @abstractmethod
    def _attention_totals(
        self, layer: int, q: Parts, k: Parts, v: Parts, probs: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor | None, Tensor]:
        """(P of the totals, needed with frozen attention, else may be None; z of the totals)."""

    @abstractmethod
    def _z_total(self, layer: int, z: Parts) -> Tensor:
        """The total z `[S or 1, B, T, H, dh]` of a layer with sources."""

    # -- node rules -----------------------------------------------------------------------------
    def lin(
        self, key: str, x: Parts, f: Affine, clean: bool = False, act: Activation | None = None
    ) -> Parts:
        weight = f.weight
        bw = F.linear(x[0], weight)
        other, from_total = self._gamma_w(key, x[1], weight)
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

    def norm(self, key: str, x: Parts, spec: NormSpec, clean: bool = False) -> Parts:
        beta, gamma = x
        inv = self._inv_std(key, x, spec)
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

    def _attend(
        self, layer: int, q: Parts, k: Parts, v: Parts, allowed: Tensor, scaling: float
    ) -> Parts:
        """z_beta = P_rel v_beta (P_rel = P_total when frozen, else softmax of the beta scores);
        z_gamma = z_total - z_beta."""

        def probs(qx: Tensor, kx: Tensor) -> Tensor:
            return _probs(qx, kx, allowed, scaling)

        p_total, z_total = self._attention_totals(layer, q, k, v, probs)
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
    def _patch_at(self, layer: int) -> tuple[Tensor, Tensor]:
        """(mask, mu) of the layer's sources at the pass's positions."""
        patch = self.patch[layer]
        if not self.pruned:
            return patch.mask, patch.mu
        mu = self.rows_at_readout(patch.mu) if patch.mu.dim() == 4 else patch.mu
        return self.at_readout(patch.mask), mu

    def _project_z(self, layer: int, o: Affine, z: Parts) -> Parts:
        """At the sources, the relevant part of z is z - mu and the rest is mu."""
        if layer in self.patch:
            mask, mu = self._patch_at(layer)
            total = self._z_total(layer, z)
            m = mask.unsqueeze(-1)
            z = (torch.where(m, total - mu, z[0]), torch.where(m, mu.expand_as(total), z[1]))
        return super()._project_z(layer, o, z)

    def _propagate(self, x: Parts, start: int) -> tuple[Tensor, Tensor, list[Parts | None]]:
        """beta, gamma of the class logits `[S, B, n_labels]` and (with record_layers) every
        layer output from `start` on."""
        x, layers = self.run_layers(x, start, keep=self.record_layers)
        beta, gamma = self.readout(x)
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

    def _gamma_w(self, key: str, gamma: Tensor, weight: Tensor) -> tuple[Tensor, bool]:
        return F.linear(gamma, weight), False

    def _inv_std(self, key: str, x: Parts, spec: NormSpec) -> Tensor:
        return inv_std(x[0] + x[1], spec)

    def _attention_totals(
        self, layer: int, q: Parts, k: Parts, v: Parts, probs: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor | None, Tensor]:
        p_total = probs(q[0] + q[1], k[0] + k[1])
        return p_total, torch.matmul(p_total, v[0] + v[1]).transpose(2, 3)

    def _z_total(self, layer: int, z: Parts) -> Tensor:
        return z[0] + z[1]


class DecomposePass(_TwoPartPass):
    """The fast path: all source sets stacked, from the earliest source layer on, every total
    from the clean cache. Since beta + gamma is the real activation at every node, gamma W is
    (cached total) W - beta W: one matmul per node instead of two; P and z totals are cached too.
    Below the start layer beta is zero, so that layer's z is the cached one (patched)."""

    def __init__(self, engine: CDTEngine, cache: CleanCache, record_layers: bool) -> None:
        # recorded layer outputs need every position: prune only without them
        super().__init__(engine, _PassInput.of_cache(cache), record_layers, not record_layers)
        self.head_columns: _HeadColumns | None = None

    def run(
        self, source_sets: Sequence[Sequence[Source]], mu: Tensor
    ) -> tuple[Tensor, Tensor, list[Parts | None]]:
        self.patch = _source_patches(self.e.geo, source_sets, mu, self.attention_mask, self.dtype)
        self.start = min(self.patch)
        per_set = self.patch[self.start].mask.any(1).any(1)  # [S, H]
        self.head_columns = _HeadColumns.of(self.e, self.start, per_set)
        gamma = self.tensors[cache_key(self.start, "in")]
        # a real zero tensor, not an expanded view: the fused rules would compile a stride-0 variant
        beta = gamma.new_zeros(len(source_sets), *gamma.shape[1:])
        return self._propagate((beta, gamma), self.start)

    def _cached_z(self, layer: int) -> Parts:
        z_total = self.cached(cache_key(layer, "z"))
        return torch.zeros_like(z_total), z_total

    def _project_z(self, layer: int, o: Affine, z: Parts) -> Parts:
        if layer == self.start and self.head_columns is not None:
            mask, mu = self._patch_at(layer)
            return self._project_source_heads(layer, o, self._z_total(layer, z) - mu, mask)
        return super()._project_z(layer, o, z)

    def _project_source_heads(self, layer: int, o: Affine, diff: Tensor, mask: Tensor) -> Parts:
        """Output projection of the start layer when each set is one head: beta there is
        (z - mu) * mask on that head and zero elsewhere, so beta W_o needs only its columns."""
        assert self.head_columns is not None
        heads = self.head_columns.heads  # [S]
        zh = diff[0][:, :, heads].permute(2, 0, 1, 3)  # diff [1, B, T, H, dh] -> [S, B, T, dh]
        keep = torch.gather(mask, 3, heads.view(-1, 1, 1, 1).expand(-1, *mask.shape[1:3], 1))
        zh = zh * keep.to(zh.dtype)  # = where(mask, z - mu, 0) without the slow `where`
        bw = self.head_columns.project(zh)
        return self._bias_split(bw, self.cached(cache_key(layer, "o")), o.bias, from_total=True)

    def _gamma_w(self, key: str, gamma: Tensor, weight: Tensor) -> tuple[Tensor, bool]:
        return self.cached(key), True

    def _inv_std(self, key: str, x: Parts, spec: NormSpec) -> Tensor:
        return self.cached(key)

    def _attention_totals(
        self, layer: int, q: Parts, k: Parts, v: Parts, probs: Callable[[Tensor, Tensor], Tensor]
    ) -> tuple[Tensor | None, Tensor]:
        frozen = self.opts.frozen_attention
        p_total = self.cached(cache_key(layer, "p"), dim=3) if frozen else None  # query dim 3
        return p_total, self.cached(cache_key(layer, "z"))

    def _z_total(self, layer: int, z: Parts) -> Tensor:
        return self.cached(cache_key(layer, "z"))
