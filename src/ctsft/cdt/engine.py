"""Contextual decomposition (CD-T) of a transformer's class logits, written once against the adapter.

One block implementation serves three modes, so the fast path cannot drift from the reference:

- `clean`: the ordinary forward (totals only). With recording on, it caches every node's total
  (pre-bias matmul outputs, norm statistics, activation outputs, attention probabilities, the
  per-head outputs z, the residual stream entering every layer).
- `naive`: the straightforward two-stream decomposition from the embeddings (the reference path).
- `fast`: many source sets stacked along a leading dim, starting at the earliest source layer from
  the cache. Because beta + gamma is the real activation at every node, the gamma part of a linear
  map is (cached total) W - beta W (one matmul per node instead of two), P_total and z_total come
  from the cache (z_gamma = z_total - z_beta), and after the last layer's attention only the
  read-out position is propagated.

Tensors carry a leading source dim: `[S, batch, pos, ...]` (the cache has S = 1 and broadcasts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ctsft.adapters import ArchAdapter, LayerParts, NormSpec, get_adapter
from ctsft.adapters.decoder import rotate_half
from ctsft.cdt.rules import (
    CDTOptions,
    activation_name,
    clean_up,
    gated_node,
    linear_node,
    node_rules,
)

Mode = Literal["clean", "naive", "fast"]
Pair = tuple[torch.Tensor | None, torch.Tensor]  # (beta or None in clean mode, gamma / total)
Source = (
    tuple[int, int] | tuple[int, int, int | None]
)  # (layer, head[, position]); None: all positions


@dataclass
class CleanCache:
    """Totals of one clean forward over a batch (leading dim 1), reused by every source set."""

    tensors: dict[str, torch.Tensor]
    attention_mask: torch.Tensor  # [B, T]
    readout: torch.Tensor  # [B] read-out position
    logits: torch.Tensor  # [B, n_labels]
    hidden: list[torch.Tensor]  # layer outputs [B, T, D]


@dataclass
class Decomposition:
    """Decomposed class logits `[S, B, n_labels]`; `logits` are the clean totals `[B, n_labels]`."""

    beta: torch.Tensor
    gamma: torch.Tensor
    logits: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)


def _take(t: torch.Tensor, sel: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """Gather one position per batch row (`sel` `[B]`) along `dim` of a `[S, B, ...]` tensor."""
    shape = [1] * t.dim()
    shape[1] = sel.shape[0]
    idx = sel.view(shape)
    expand = list(t.shape)
    expand[dim] = 1
    return torch.gather(t, dim, idx.expand(expand))


class CDTEngine:
    """CD-T over a Hugging Face model through its architecture adapter.

    `kind` is `encoder` (BERT classifier: position 0 -> pooler -> tanh -> classifier) or `causal`
    (final norm -> unembedding rows `label_ids` at the last real position).
    """

    def __init__(
        self,
        hf_model: nn.Module,
        kind: str,
        label_ids: Sequence[int] | None = None,
        options: CDTOptions | None = None,
        adapter: ArchAdapter | None = None,
    ) -> None:
        if kind not in ("encoder", "causal"):
            raise ValueError(f"kind must be 'encoder' or 'causal', got {kind!r}")
        self.hf = hf_model
        self.kind = kind
        self.adapter = adapter or get_adapter(hf_model)
        self.options = options or CDTOptions()
        self.geo = self.adapter.geometry
        self.device = next(hf_model.parameters()).device  # every tensor of a pass lives here
        self.parts: list[LayerParts] = self.adapter.layers()
        if kind == "encoder":
            self.pooler, self.pooler_act, self.classifier = self.adapter.classifier_head()
        else:
            if not label_ids:
                raise ValueError("a causal model needs label_ids")
            head = hf_model.lm_head
            ids = torch.tensor(list(label_ids), device=head.weight.device)
            self.unembed_w = head.weight.detach()[ids]
            self.unembed_b = None if head.bias is None else head.bias.detach()[ids]
            self.final_norm = self.adapter.final_norm()

    @classmethod
    def from_task_model(cls, task_model: nn.Module, options: CDTOptions | None = None) -> CDTEngine:
        return cls(
            task_model.hf, task_model.kind, task_model.label_ids, options, task_model.adapter
        )

    # -- public API ------------------------------------------------------------------------
    @torch.inference_mode()
    def clean(self, batch: dict[str, torch.Tensor]) -> CleanCache:
        """One ordinary forward caching every node's total."""
        run = _Run(self, "clean", record=True)
        return run.clean_forward(batch)

    @torch.inference_mode()
    def decompose(
        self,
        batch: dict[str, torch.Tensor],
        source_sets: Sequence[Sequence[Source]],
        mu: torch.Tensor,
        cache: CleanCache | None = None,
        record_layers: bool = False,
    ) -> Decomposition:
        """Fast path: all `source_sets` at once (stacked), starting from the cached totals.

        `mu`: `[layer, head, d_head]` or per position `[layer, pos, head, d_head]`.
        """
        cache = cache or self.clean(batch)
        run = _Run(self, "fast", cache=cache, prune=not record_layers, record_layers=record_layers)
        return run.decompose(source_sets, mu)

    @torch.inference_mode()
    def decompose_naive(
        self,
        batch: dict[str, torch.Tensor],
        source_sets: Sequence[Sequence[Source]],
        mu: torch.Tensor,
        record_layers: bool = False,
    ) -> Decomposition:
        """Reference path: explicit two-stream propagation from the embeddings, no cache."""
        run = _Run(self, "naive", record_layers=record_layers)
        return run.naive(batch, source_sets, mu)

    @torch.inference_mode()
    def ablate(
        self,
        cache: CleanCache,
        heads: Sequence[Sequence[tuple[int, int]]],
        mu: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits `[S, B, n_labels]` with each head set replaced by mu (cached-prefix forward)."""
        run = _Run(self, "clean", cache=cache, prune=True)
        return run.ablate(heads, mu)


class _Run:
    """State of one pass (mode, cache, position pruning)."""

    def __init__(
        self,
        engine: CDTEngine,
        mode: Mode,
        cache: CleanCache | None = None,
        record: bool = False,
        prune: bool = False,
        record_layers: bool = False,
    ) -> None:
        self.e = engine
        self.opts = engine.options
        self.rules = node_rules(engine.options.compile)
        self.simple = engine.options.convention == "simple"
        self.mode = mode
        self.cache = cache
        self.t: dict[str, torch.Tensor] = cache.tensors if cache is not None else {}
        self.record = record
        self.prune = prune
        self.record_layers = record_layers
        self.pruned = False  # positions already reduced to the read-out position
        self.sel: torch.Tensor | None = None
        self.rot: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.masks: dict[int, torch.Tensor] = {}
        self.patch: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> (mask, mu)
        self.start_zero = False  # beta entering the current layer is known to be zero
        self.o_slices: dict[
            int, tuple[torch.Tensor, torch.Tensor]
        ] = {}  # layer -> (heads [S], Wo [S,dh,D])
        self.ablation: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    # -- cached totals ---------------------------------------------------------------------
    def tot(self, key: str) -> torch.Tensor:
        t = self.t[key]
        if self.pruned and not key.startswith("ro."):
            return _take(t, self.sel)
        return t

    def put(self, key: str, value: torch.Tensor) -> None:
        if self.record:
            self.t[key] = value

    def take(self, pair: Pair) -> Pair:
        beta, gamma = pair
        return (None if beta is None else _take(beta, self.sel), _take(gamma, self.sel))

    # -- node rules ------------------------------------------------------------------------
    def lin(
        self,
        key: str,
        pair: Pair,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        clean: bool = False,
        act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Pair:
        """Linear map, then (optionally) the clean-up and an activation, as one node."""
        beta, gamma = pair
        if beta is None:
            tw = F.linear(gamma, weight)
            self.put(key, tw)
            out = tw if bias is None else tw + bias
            return (None, out) if act is None else (None, act(out))
        bw = F.linear(beta, weight)
        fast = self.mode == "fast"
        other = self.tot(key) if fast else F.linear(gamma, weight)
        return self._bias_split(bw, other, bias, fast, clean, act)

    def _bias_split(
        self,
        bw: torch.Tensor,
        other: torch.Tensor,
        bias: torch.Tensor | None,
        from_total: bool,
        clean: bool = False,
        act: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> Pair:
        clean = clean and self.opts.normalize_rel_irrel
        args = (bw, other, bias, from_total, self.simple, self.opts.bias_eps, clean)
        name = None if act is None else activation_name(act)
        if act is not None and name is None:  # a module the fused rules cannot take by name
            return linear_node(*args, act)
        return self.rules.linear(*args, name)

    def norm(self, key: str, pair: Pair, spec: NormSpec, clean: bool = False) -> Pair:
        beta, gamma = pair
        if beta is None:
            x = gamma
            if spec.kind == "layernorm":
                var = x.var(-1, keepdim=True, unbiased=False)
                inv = torch.rsqrt(var + spec.eps)
                self.put(key, inv)
                y = (x - x.mean(-1, keepdim=True)) * inv * spec.scale
                return None, y if spec.bias is None else y + spec.bias
            inv = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + spec.eps)
            self.put(key, inv)
            return None, x * (inv * spec.scale)  # same rounding as the two-part rule below
        if self.mode == "fast":
            inv = self.tot(key)
        else:
            total = beta + gamma
            if spec.kind == "layernorm":
                inv = torch.rsqrt(total.var(-1, keepdim=True, unbiased=False) + spec.eps)
            else:
                inv = torch.rsqrt(total.pow(2).mean(-1, keepdim=True) + spec.eps)
        if spec.kind == "layernorm":
            clean = clean and self.opts.normalize_rel_irrel
            return self.rules.layernorm(
                beta, gamma, inv, spec.scale, spec.bias, self.simple, self.opts.bias_eps, clean
            )
        scale = inv * spec.scale
        out = (beta * scale, gamma * scale)
        return clean_up(*out) if clean and self.opts.normalize_rel_irrel else out

    def gated(self, gate: Pair, up: Pair, fn: Callable[[torch.Tensor], torch.Tensor]) -> Pair:
        """Gated MLP act(gate) * up: gamma' = act(gate)_gamma * up_gamma, every term touching beta
        is relevant."""
        if gate[0] is None:
            return None, fn(gate[1]) * up[1]
        name = activation_name(fn)
        if name is None:  # a module the fused rules cannot take by name: eager
            return gated_node(gate[0], gate[1], up[0], up[1], fn)
        return self.rules.gated(gate[0], gate[1], up[0], up[1], name)

    def add(self, a: Pair, b: Pair, clean: bool = False, a_zero: bool = False) -> Pair:
        """Residual add (then the optional clean-up). `a_zero`: beta of `a` is known to be zero
        (the stream entering the source layer), so beta is b's, bit for bit."""
        if a[0] is None:
            return None, a[1] + b[1]
        assert b[0] is not None
        if a_zero and not clean:
            return b[0], a[1] + b[1]
        return self.rules.add(a[0], a[1], b[0], b[1], clean and self.opts.normalize_rel_irrel)

    # -- attention -------------------------------------------------------------------------
    def _mask(self, layer: int, parts: LayerParts) -> torch.Tensor:
        """Allowed keys `[B, 1, T, T]`: padding, causal and sliding-window masks."""
        if layer in self.masks:
            return self.masks[layer]
        am = self.attention_mask
        n = am.shape[1]
        allowed = am.bool()[:, None, None, :].expand(-1, 1, n, n)
        q = torch.arange(n, device=am.device)[:, None]
        k = torch.arange(n, device=am.device)[None, :]
        if parts.attn.causal:
            allowed = allowed & (k <= q)
            if parts.attn.sliding_window is not None:
                allowed = allowed & (k > q - parts.attn.sliding_window)
        self.masks[layer] = allowed
        return allowed

    def _rotary(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) `[1, T, dh]` of the layer (None without rotary), cached with the totals."""
        if layer not in self.rot:
            key = f"{layer}.rot"
            if key not in self.t:
                hidden = self.t[f"{layer}.in"][0]
                tables = self.e.adapter.rotary(hidden, layer)
                self.t[key] = hidden.new_empty(0) if tables is None else torch.stack(list(tables))
            tab = self.t[key]
            self.rot[layer] = None if tab.numel() == 0 else (tab[0], tab[1])  # type: ignore[assignment]
        return self.rot[layer]

    def _rope(self, pair: Pair, cos: torch.Tensor, sin: torch.Tensor) -> Pair:
        """Rotary embedding on `[S, B, T, H, dh]`: linear without bias, so rotate both parts."""
        cos, sin = cos[..., None, :], sin[..., None, :]

        def rot(x: torch.Tensor) -> torch.Tensor:
            return x * cos + rotate_half(x) * sin

        return (None if pair[0] is None else rot(pair[0]), rot(pair[1]))

    def _heads(self, pair: Pair, n: int) -> Pair:
        dh = self.e.geo.d_head

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(*x.shape[:-1], n, dh)

        return (None if pair[0] is None else split(pair[0]), split(pair[1]))

    def attention(self, layer: int, parts: LayerParts, pair: Pair, last: bool) -> Pair:
        """Attention block up to (and including) the output projection."""
        geo = self.e.geo
        at = parts.attn
        allowed = self._mask(layer, parts)
        if self.start_zero and self.mode == "fast":
            # everything in this layer below the source is all-gamma: use the cached z directly
            if last and self.prune:
                self.pruned = True
            z_total = self.tot(f"{layer}.z")
            z = (torch.zeros_like(z_total), z_total)
            return self._after_z(layer, parts, z)
        k = self._heads(self.lin(f"{layer}.k", pair, at.k.weight, at.k.bias), geo.n_kv_heads)
        v = self._heads(self.lin(f"{layer}.v", pair, at.v.weight, at.v.bias), geo.n_kv_heads)
        if at.k_norm is not None:
            k = self.norm(f"{layer}.kn", k, at.k_norm)
        tables = self._rotary(layer)
        rot = tables is not None
        if tables is not None:
            cos, sin = tables
            k = self._rope(k, cos, sin)
        if last and self.prune:
            self.pruned = True
            pair = self.take(pair)
            allowed = _take(allowed.unsqueeze(0), self.sel, dim=3)[0]
            if rot:
                cos, sin = (
                    _take(cos.expand(self.sel.shape[0], -1, -1).unsqueeze(0), self.sel)[0],
                    _take(sin.expand(self.sel.shape[0], -1, -1).unsqueeze(0), self.sel)[0],
                )
        q = self._heads(self.lin(f"{layer}.q", pair, at.q.weight, at.q.bias), geo.n_heads)
        if at.q_norm is not None:
            q = self.norm(f"{layer}.qn", q, at.q_norm)
        if rot:
            q = self._rope(q, cos, sin)
        rep = geo.group_size

        def heads_first(x: torch.Tensor, kv: bool) -> torch.Tensor:
            x = x.transpose(2, 3)  # [S, B, H, T, dh]
            if kv and rep > 1:
                x = x.repeat_interleave(rep, dim=2)
            return x

        qb, qg = (None if q[0] is None else heads_first(q[0], False)), heads_first(q[1], False)
        kb, kg = (None if k[0] is None else heads_first(k[0], True)), heads_first(k[1], True)
        vb, vg = (None if v[0] is None else heads_first(v[0], True)), heads_first(v[1], True)
        neg = torch.finfo(qg.dtype).min

        def probs(qx: torch.Tensor, kx: torch.Tensor) -> torch.Tensor:
            scores = torch.matmul(qx, kx.transpose(-1, -2)) * at.scaling
            return torch.softmax(scores.masked_fill(~allowed, neg), dim=-1)

        if qb is None:
            p_total = probs(qg, kg)
            z_total = torch.matmul(p_total, vg).transpose(2, 3)  # [S, B, T, H, dh]
            self.put(f"{layer}.p", p_total)
            self.put(f"{layer}.z", z_total)
            return self._after_z(layer, parts, (None, z_total))
        if self.mode == "fast":
            if self.opts.frozen_attention:
                p_total = self.t[f"{layer}.p"]
                if self.pruned:
                    p_total = _take(p_total, self.sel, dim=3)
            z_total = self.tot(f"{layer}.z")
        else:
            p_total = probs(qb + qg, kb + kg)
            z_total = torch.matmul(p_total, vb + vg).transpose(2, 3)
        p_rel = p_total if self.opts.frozen_attention else probs(qb, kb)
        zb = torch.matmul(p_rel, vb).transpose(2, 3)
        return self._after_z(layer, parts, (zb, z_total - zb))

    def _after_z(self, layer: int, parts: LayerParts, z: Pair) -> Pair:
        """Patch the sources of this layer into z, then the output projection."""
        o = parts.attn.o
        if layer in self.ablation:
            return self._ablate_o(layer, o, z[1])
        if layer in self.patch and z[0] is not None:
            mask, mu = self.patch[layer]
            if self.pruned:
                mask = _take(mask, self.sel)
                mu = _take(mu.unsqueeze(0), self.sel)[0] if mu.dim() == 4 else mu
            zb, zg = z
            total = self.tot(f"{layer}.z") if self.mode == "fast" else zb + zg
            if self.start_zero and layer in self.o_slices:
                return self._o_single_head(layer, o, total - mu, mask)
            m = mask.unsqueeze(-1)
            z = (torch.where(m, total - mu, zb), torch.where(m, mu.expand_as(total), zg))
        flat = tuple(None if x is None else x.flatten(-2) for x in z)
        return self.lin(f"{layer}.o", flat, o.weight, o.bias)  # type: ignore[arg-type]

    def _o_single_head(
        self, layer: int, o: nn.Linear, diff: torch.Tensor, mask: torch.Tensor
    ) -> Pair:
        """Output projection when each source set is one head and nothing else is relevant yet:
        beta W_o needs only that head's d_head columns, and beta there is (z - mu) * mask
        (z_beta = 0 elsewhere), so only the source head's slice of z - mu is taken."""
        heads, w = self.o_slices[layer]  # heads [S], w [S, dh, D]
        zh = diff[0][:, :, heads].permute(2, 0, 1, 3)  # diff [1, B, T, H, dh] -> [S, B, T, dh]
        keep = torch.gather(mask, 3, heads.view(-1, 1, 1, 1).expand(-1, *mask.shape[1:3], 1))
        zh = zh * keep.to(zh.dtype)  # = where(mask, z - mu, 0) without the slow `where`
        s, b, t, dh = zh.shape
        bw = torch.bmm(zh.reshape(s, b * t, dh), w).view(s, b, t, -1)
        return self._bias_split(bw, self.tot(f"{layer}.o"), o.bias, from_total=True)

    def _ablate_o(self, layer: int, o: nn.Linear, z: torch.Tensor) -> Pair:
        """Mean ablation at the output projection. In the first ablated layer nothing upstream
        changed: cached W_o z plus W_o,h (mu_h - z_h) over the replaced heads' d_head columns."""
        heads_mask, mu = self.ablation[layer]  # [S, H] bool, [H, dh] or [1, T, H, dh]
        if mu.dim() == 4 and self.pruned:
            mu = _take(mu.expand(self.sel.shape[0], -1, -1, -1).unsqueeze(0), self.sel)[0]
        m = heads_mask[:, None, None, :, None]
        if not self.start_zero:
            edited = torch.where(m, mu, z).flatten(-2)
            return self.lin(f"{layer}.o", (None, edited), o.weight, o.bias)
        delta = (mu - z) * m  # [S, B, T, H, dh]
        if layer in self.o_slices:
            heads, w = self.o_slices[layer]
            idx = heads.view(-1, 1, 1, 1, 1).expand(-1, *delta.shape[1:3], 1, delta.shape[-1])
            dh_ = torch.gather(delta, 3, idx).squeeze(3)
            s, b, t, dh = dh_.shape
            change = torch.bmm(dh_.reshape(s, b * t, dh), w).view(s, b, t, -1)
        else:
            change = F.linear(delta.flatten(-2), o.weight)
        out = self.tot(f"{layer}.o") + change
        return None, out if o.bias is None else out + o.bias

    # -- blocks ----------------------------------------------------------------------------
    def block(self, layer: int, pair: Pair) -> Pair:
        parts = self.e.parts[layer]
        last = layer == self.e.geo.n_layers - 1
        style = parts.norm_style
        self.put(f"{layer}.in", pair[1])
        was_pruned = self.pruned
        first = self.start_zero and self.mode == "fast"  # beta entering this layer is zero
        if style == "post":
            a = self.attention(layer, parts, pair, last)
            if self.pruned and not was_pruned:
                pair = self.take(pair)
            h = self.norm(f"{layer}.ln1", self.add(pair, a, a_zero=first), parts.post_attn)
            m_in = h
        else:
            # at the first layer of a fast pass the attention input is unused (z comes from the cache)
            x = pair if first else self.norm(f"{layer}.ln1", pair, parts.pre_attn)
            a = self.attention(layer, parts, x, last)
            if style == "sandwich":
                a = self.norm(f"{layer}.ln_pa", a, parts.post_attn)
            if self.pruned and not was_pruned:
                pair = self.take(pair)
            h = self.add(pair, a, a_zero=first)
            m_in = self.norm(f"{layer}.ln2", h, parts.pre_mlp)
        self.start_zero = False
        d = self.mlp(layer, parts, m_in)
        if style == "sandwich":
            d = self.norm(f"{layer}.ln_pm", d, parts.post_mlp)
        y = self.add(h, d, clean=True)
        if style == "post":
            y = self.norm(f"{layer}.ln2", y, parts.post_mlp, clean=True)
        return y

    def mlp(self, layer: int, parts: LayerParts, pair: Pair) -> Pair:
        mp = parts.mlp
        if mp.kind == "gated":
            assert mp.gate is not None
            up = self.lin(f"{layer}.up", pair, mp.up.weight, mp.up.bias, clean=True)
            gate = self.lin(f"{layer}.gate", pair, mp.gate.weight, mp.gate.bias, clean=True)
            hidden = self.gated(gate, up, mp.act)
        else:
            hidden = self.lin(f"{layer}.up", pair, mp.up.weight, mp.up.bias, clean=True, act=mp.act)
        return self.lin(f"{layer}.down", hidden, mp.down.weight, mp.down.bias, clean=True)

    def readout(self, pair: Pair) -> Pair:
        e = self.e
        if not self.pruned:
            pair = self.take(pair)
        self.pruned = False  # read-out keys ("ro.*") are stored at the read-out position already
        if e.kind == "encoder":
            pooled = self.lin("ro.pool", pair, e.pooler.weight, e.pooler.bias, act=e.pooler_act)
            out = self.lin("ro.cls", pooled, e.classifier.weight, e.classifier.bias)
        else:
            normed = self.norm("ro.norm", pair, e.final_norm)
            out = self.lin("ro.lm", normed, e.unembed_w, e.unembed_b)
        return (None if out[0] is None else out[0][:, :, 0], out[1][:, :, 0])

    # -- passes ----------------------------------------------------------------------------
    def _setup_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"]
        self.attention_mask = mask
        readout = mask.sum(1) - 1 if self.e.kind == "causal" else torch.zeros_like(mask[:, 0])
        self.sel = readout
        emb = self.e.adapter.embed(batch["input_ids"], batch.get("token_type_ids"))
        self.dtype = emb.dtype
        return emb.unsqueeze(0)

    def clean_forward(self, batch: dict[str, torch.Tensor]) -> CleanCache:
        emb = self._setup_batch(batch)
        pair: Pair = (None, emb)
        hidden = []
        for layer in range(self.e.geo.n_layers):
            pair = self.block(layer, pair)
            hidden.append(pair[1][0])
        logits = self.readout(pair)[1][0]
        return CleanCache(self.t, self.attention_mask, self.sel, logits, hidden)

    def _prepare_sources(
        self, source_sets: Sequence[Sequence[Source]], mu: torch.Tensor, n_pos: int
    ) -> int:
        """Per-layer patch masks `[S, B, T, H]` and mu; returns the earliest source layer."""
        geo = self.e.geo
        am = self.attention_mask.bool()
        n_sets = len(source_sets)
        if mu.dim() == 4 and mu.shape[1] < n_pos:
            raise ValueError(
                f"per-position mu covers {mu.shape[1]} positions, the batch has {n_pos}"
            )
        masks: dict[int, torch.Tensor] = {}
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
        for layer, m in masks.items():
            m &= am[None, :, :, None]  # sources at padding positions contribute nothing
            mu_l = mu[layer]
            if mu_l.dim() == 3:  # [T_mu, H, dh] -> [B, T, H, dh]
                mu_l = mu_l[:n_pos].unsqueeze(0).expand(am.shape[0], -1, -1, -1)
            self.patch[layer] = (m, mu_l.to(device=am.device, dtype=self.dtype))
        start = min(masks)
        self._single_head_slices(start, masks[start].any(1).any(1))
        return start

    def _single_head_slices(self, layer: int, per_set: torch.Tensor) -> None:
        """When every set has exactly one head in `layer` (`per_set` `[S, H]`), keep that head's
        d_head columns of W_o per set: the first projection then costs d_head, not d_model."""
        geo = self.e.geo
        if not bool((per_set.sum(-1) == 1).all()):
            return
        heads = per_set.float().argmax(-1)
        w = self.e.parts[layer].attn.o.weight.detach()  # [D, H*dh]
        w_heads = w.view(w.shape[0], geo.n_heads, geo.d_head).permute(1, 2, 0)  # [H, dh, D]
        self.o_slices[layer] = (heads, w_heads[heads].contiguous())

    def decompose(self, source_sets: Sequence[Sequence[Source]], mu: torch.Tensor) -> Decomposition:
        assert self.cache is not None
        self.attention_mask = self.cache.attention_mask
        self.sel = self.cache.readout
        self.dtype = self.cache.logits.dtype
        n_pos = self.attention_mask.shape[1]
        start = self._prepare_sources(source_sets, mu, n_pos)
        gamma = self.t[f"{start}.in"]
        # a real zero tensor, not an expanded view: the fused rules would compile a stride-0 variant
        pair: Pair = (gamma.new_zeros(len(source_sets), *gamma.shape[1:]), gamma)
        layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * self.e.geo.n_layers
        self.start_zero = True
        for layer in range(start, self.e.geo.n_layers):
            pair = self.block(layer, pair)
            if self.record_layers:
                layers[layer] = (pair[0], pair[1])  # type: ignore[assignment]
        beta, gamma_out = self.readout(pair)
        assert beta is not None
        return Decomposition(beta, gamma_out, self.cache.logits, layers)

    def naive(
        self,
        batch: dict[str, torch.Tensor],
        source_sets: Sequence[Sequence[Source]],
        mu: torch.Tensor,
    ) -> Decomposition:
        emb = self._setup_batch(batch)
        n_pos = emb.shape[2]
        self._prepare_sources(source_sets, mu, n_pos)
        self.o_slices.clear()
        gamma = emb.expand(len(source_sets), *emb.shape[1:])
        pair: Pair = (torch.zeros_like(gamma), gamma)
        self.t = {}
        # rotary tables are the only totals the naive path takes from a helper: compute them here
        layers: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for layer in range(self.e.geo.n_layers):
            self.t[f"{layer}.in"] = pair[1][:1]
            pair = self.block(layer, pair)
            layers.append((pair[0], pair[1]) if self.record_layers else None)  # type: ignore[arg-type]
        beta, gamma_out = self.readout(pair)
        assert beta is not None
        total = beta + gamma_out
        return Decomposition(beta, gamma_out, total[0], layers if self.record_layers else [])

    def ablate(self, heads: Sequence[Sequence[tuple[int, int]]], mu: torch.Tensor) -> torch.Tensor:
        """Cached-prefix mean ablation: start at the earliest ablated layer, totals only."""
        assert self.cache is not None
        geo = self.e.geo
        self.attention_mask = self.cache.attention_mask
        self.sel = self.cache.readout
        n_pos = self.attention_mask.shape[1]
        n_sets = len(heads)
        logits = self.cache.logits  # device and dtype of the pass
        for s, hs in enumerate(heads):
            for layer, head in hs:
                if layer not in self.ablation:
                    mu_l = mu[layer].to(device=logits.device, dtype=logits.dtype)
                    if mu_l.dim() == 3:
                        mu_l = mu_l[:n_pos].unsqueeze(0)
                    self.ablation[layer] = (
                        torch.zeros(n_sets, geo.n_heads, dtype=torch.bool, device=logits.device),
                        mu_l,
                    )
                self.ablation[layer][0][s, head] = True
        start = min(self.ablation)
        self._single_head_slices(start, self.ablation[start][0])
        gamma = self.t[f"{start}.in"]
        pair: Pair = (None, gamma.expand(n_sets, *gamma.shape[1:]))
        for layer in range(start, geo.n_layers):
            self.start_zero = layer == start
            pair = self._block_ablate(layer, pair, first=layer == start)
        return self.readout(pair)[1]

    def _block_ablate(self, layer: int, pair: Pair, first: bool) -> Pair:
        if not first:
            return self.block(layer, pair)
        # in the first ablated layer, z comes from the cache (nothing upstream changed)
        saved = self.mode
        self.mode = "fast"
        try:
            out = self.block(layer, pair)
        finally:
            self.mode = saved
        return out
