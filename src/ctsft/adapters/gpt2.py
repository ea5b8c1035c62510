"""GPT-2 (`GPT2LMHeadModel`): pre-LayerNorm blocks, learned absolute positions, Conv1D projections.

GPT-2 stores its projections as `Conv1D` modules whose weight is `[in, out]` (the transpose of
`nn.Linear`), and q, k, v share one fused `c_attn` (`[d_model, 3 d_model]`, output columns q | k | v).
The engine and the adapter vocabulary read `nn.Linear`-shaped `[out, in]` weights, so the parts
are `ConvView`s: live transposed views of (a column range of) a Conv1D's own parameters, never
copies, so training, `model.to(...)` and in-place edits are always seen. Head slices name the real
Conv1D parameters in their own layout: a head's q/k/v "rows" are `c_attn.weight` columns (dim 1)
at offsets `h d_head`, `d_model + h d_head`, `2 d_model + h d_head` (plus the same `c_attn.bias`
entries); its o "columns" are `c_proj.weight` rows (dim 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from ctsft.adapters.base import (
    ArchAdapter,
    AttentionParts,
    Geometry,
    KVPolicy,
    LayerParts,
    MLPParts,
    NormSpec,
    ParamSlice,
    norm_spec_of,
)


class ConvView:
    """Output features [start, stop) of a `Conv1D`, seen as an `nn.Linear` (`weight` `[out, in]`).

    Duck-typed where the parts expect `nn.Linear`: `weight`, `bias`, call, forward hooks.
    `weight` and `bias` are recomputed views on every access (no copy, no stale storage). Hooks go
    to the Conv1D itself, which is only meaningful for a view of all its outputs (the attention
    output projection, whose input is the per-head output z), so partial views refuse them.
    """

    def __init__(self, conv: nn.Module, start: int = 0, stop: int | None = None) -> None:
        self.module = conv
        self.start = start
        self.stop = conv.weight.shape[1] if stop is None else stop

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight[:, self.start : self.stop].t()

    @property
    def bias(self) -> torch.Tensor | None:
        bias = self.module.bias
        return None if bias is None else bias[self.start : self.stop]

    @property
    def in_features(self) -> int:
        return int(self.module.weight.shape[0])

    @property
    def out_features(self) -> int:
        return self.stop - self.start

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.stop == self.module.weight.shape[1]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def _hookable(self) -> nn.Module:
        if not self.whole:
            raise ValueError("hooks on a partial Conv1D view would see the fused q|k|v output")
        return self.module

    def register_forward_pre_hook(self, hook: Callable[..., Any], **kwargs: Any) -> RemovableHandle:
        return self._hookable().register_forward_pre_hook(hook, **kwargs)

    def register_forward_hook(self, hook: Callable[..., Any], **kwargs: Any) -> RemovableHandle:
        return self._hookable().register_forward_hook(hook, **kwargs)

    def __repr__(self) -> str:
        return f"ConvView({self.module!r}, outputs {self.start}:{self.stop})"


class GPT2Adapter(ArchAdapter):
    """Adapts `GPT2LMHeadModel` (or a bare `GPT2Model`)."""

    family = "gpt2"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.base = getattr(model, "transformer", model)
        self.config = self.base.config

    @property
    def geometry(self) -> Geometry:
        cfg = self.config
        return Geometry(cfg.n_layer, cfg.n_head, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.n_embd)

    def layer(self, index: int) -> LayerParts:
        block = self.base.h[index]
        sa = block.attn
        d = self.config.n_embd
        attn = AttentionParts(
            q=ConvView(sa.c_attn, 0, d),
            k=ConvView(sa.c_attn, d, 2 * d),
            v=ConvView(sa.c_attn, 2 * d, 3 * d),
            o=ConvView(sa.c_proj),
            scaling=float(sa.scaling),  # 1/sqrt(d_head), and 1/(layer+1) if so configured
            causal=True,
        )
        mlp = MLPParts(
            kind="plain",
            up=ConvView(block.mlp.c_fc),
            down=ConvView(block.mlp.c_proj),
            act=block.mlp.act,
        )
        return LayerParts(
            index=index,
            attn=attn,
            mlp=mlp,
            norm_style="pre",
            pre_attn=norm_spec_of(block.ln_1, "layernorm"),
            pre_mlp=norm_spec_of(block.ln_2, "layernorm"),
        )

    def final_norm(self) -> NormSpec:
        return norm_spec_of(self.base.ln_f, "layernorm")

    def norm_modules(self) -> dict[str, nn.Module]:
        return self._modules_where(lambda module: isinstance(module, nn.LayerNorm))

    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token + learned position embeddings (positions 0..pos-1: right padding keeps them).

        `token_type_ids` are ignored: GPT-2 would add `wte(token_type_ids)`, but the causal task
        head never passes them, so CD-T decomposes the same forward the task model runs.
        """
        positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return self.base.wte(input_ids) + self.base.wpe(positions)

    def head_slices(
        self, layer: int, head: int, kv_policy: KVPolicy = "shared"
    ) -> list[ParamSlice]:
        """As `ArchAdapter.head_slices`, in Conv1D layout: q/k/v are `c_attn` columns (and bias
        entries), o is `c_proj` rows. No grouped-query attention, so k/v are the head's own."""
        geo = self.geometry
        sa = self.base.h[layer].attn
        named = self._names()
        w, b, o = sa.c_attn.weight, sa.c_attn.bias, sa.c_proj.weight
        h0, h1 = head * geo.d_head, (head + 1) * geo.d_head
        out = []
        for part in range(3 if kv_policy == "shared" else 1):  # q, then k and v
            a, z = part * geo.d_model + h0, part * geo.d_model + h1
            out.append(ParamSlice(named[id(w)], w, 1, a, z))
            if b is not None:
                out.append(ParamSlice(named[id(b)], b, 0, a, z))
        out.append(ParamSlice(named[id(o)], o, 0, h0, h1))
        return out
