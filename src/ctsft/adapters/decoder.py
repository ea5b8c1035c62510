"""Decoder-only causal LMs: Llama and Qwen2 (pre-RMSNorm) and Gemma3 (sandwich RMSNorm, q/k norms)."""

from __future__ import annotations

import torch
from torch import nn

from ctsft.adapters.base import (
    ArchAdapter,
    AttentionParts,
    Geometry,
    LayerParts,
    MLPParts,
    norm_spec_of,
)


class DecoderAdapter(ArchAdapter):
    """Adapts `LlamaForCausalLM`, `Qwen2ForCausalLM`, `Gemma3ForCausalLM` (or their base models)."""

    family = "decoder"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.base = getattr(model, "model", model)
        self.config = self.base.config
        self.is_gemma = self.config.model_type.startswith("gemma")
        self.family = self.config.model_type

    @property
    def geometry(self) -> Geometry:
        cfg = self.config
        d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return Geometry(
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            d_head,
            cfg.hidden_size,
        )

    def _norm(self, module: nn.Module):
        return norm_spec_of(module, "rmsnorm", weight_offset=1.0 if self.is_gemma else 0.0)

    def layer(self, index: int) -> LayerParts:
        block = self.base.layers[index]
        sa = block.self_attn
        layer_type = getattr(sa, "layer_type", None)
        attn = AttentionParts(
            q=sa.q_proj,
            k=sa.k_proj,
            v=sa.v_proj,
            o=sa.o_proj,
            scaling=float(sa.scaling),
            q_norm=self._norm(sa.q_norm) if hasattr(sa, "q_norm") else None,
            k_norm=self._norm(sa.k_norm) if hasattr(sa, "k_norm") else None,
            sliding_window=getattr(sa, "sliding_window", None),
            causal=True,
            layer_type=layer_type,
        )
        mlp = MLPParts(
            kind="gated",
            up=block.mlp.up_proj,
            down=block.mlp.down_proj,
            act=block.mlp.act_fn,
            gate=block.mlp.gate_proj,
        )
        if self.is_gemma:
            return LayerParts(
                index=index,
                attn=attn,
                mlp=mlp,
                norm_style="sandwich",
                pre_attn=self._norm(block.input_layernorm),
                post_attn=self._norm(block.post_attention_layernorm),
                pre_mlp=self._norm(block.pre_feedforward_layernorm),
                post_mlp=self._norm(block.post_feedforward_layernorm),
            )
        return LayerParts(
            index=index,
            attn=attn,
            mlp=mlp,
            norm_style="pre",
            pre_attn=self._norm(block.input_layernorm),
            pre_mlp=self._norm(block.post_attention_layernorm),
        )

    def final_norm(self):
        return self._norm(self.base.norm)

    def norm_modules(self) -> dict[str, nn.Module]:
        return self._modules_where(lambda module: type(module).__name__.endswith("RMSNorm"))

    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Token embeddings (Gemma3's are scaled by sqrt(d_model) inside its embedding module)."""
        return self.base.embed_tokens(input_ids)

    def rotary(self, hidden: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
        layer_type = self.layer(layer).attn.layer_type
        if self.is_gemma:
            return self.base.rotary_emb(hidden, positions, layer_type)
        return self.base.rotary_emb(hidden, positions)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `x` `[batch, head, pos, d_head]` by (cos, sin) `[batch, pos, d_head]` (linear, no bias)."""
    return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)
