"""BERT-style encoders (BERT, multilingual-e5, RoBERTa, XLM-R layouts): post-LayerNorm blocks.

BERT and XLM-R share the blocks; they differ in the task head: BERT pools position 0 through
`bert.pooler` and then `classifier`, RoBERTa / XLM-R have no pooler and a two-layer
`classifier` (`dense` + tanh, `out_proj`). `classifier_head` hides the difference.
"""

from __future__ import annotations

import torch
from torch import nn

from ctsft.adapters.base import (
    ArchAdapter,
    AttentionParts,
    ClassifierHead,
    Geometry,
    LayerParts,
    MLPParts,
    norm_spec_of,
)
from ctsft.errors import CtsftError


class BertAdapter(ArchAdapter):
    """Adapts `BertModel`, `RobertaModel`, `XLMRobertaModel` or a `*ForSequenceClassification`
    wrapping one (attribute `bert` or `roberta`)."""

    family = "bert"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.encoder_model = (
            getattr(model, "bert", None) or getattr(model, "roberta", None) or model
        )
        self.config = self.encoder_model.config

    @property
    def geometry(self) -> Geometry:
        cfg = self.config
        d_head = cfg.hidden_size // cfg.num_attention_heads
        return Geometry(
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_attention_heads,
            d_head,
            cfg.hidden_size,
        )

    def layer(self, index: int) -> LayerParts:
        block = self.encoder_model.encoder.layer[index]
        self_attn = block.attention.self
        attn = AttentionParts(
            q=self_attn.query,
            k=self_attn.key,
            v=self_attn.value,
            o=block.attention.output.dense,
            scaling=self.geometry.d_head**-0.5,
        )
        mlp = MLPParts(
            kind="plain",
            up=block.intermediate.dense,
            down=block.output.dense,
            act=block.intermediate.intermediate_act_fn,
        )
        return LayerParts(
            index=index,
            attn=attn,
            mlp=mlp,
            norm_style="post",
            post_attn=norm_spec_of(block.attention.output.LayerNorm, "layernorm"),
            post_mlp=norm_spec_of(block.output.LayerNorm, "layernorm"),
        )

    def norm_modules(self) -> dict[str, nn.Module]:
        return self._modules_where(lambda module: isinstance(module, nn.LayerNorm))

    def embed(
        self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Word + position + token-type embeddings after the embedding LayerNorm (all gamma in CD-T)."""
        return self.encoder_model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)

    def classifier_head(self) -> ClassifierHead:
        """BERT: pooler dense + tanh, then `classifier`; RoBERTa / XLM-R: `classifier.dense` + tanh,
        then `classifier.out_proj`."""
        head = getattr(self.model, "classifier", None)
        if head is None:
            raise CtsftError(
                f"{type(self.model).__name__} has no classifier: load it as a sequence classifier "
                "(model.kind=encoder)"
            )
        if isinstance(head, nn.Linear):
            pooler = getattr(self.encoder_model, "pooler", None)
            if pooler is None:
                raise CtsftError(
                    f"{type(self.model).__name__} has a linear classifier but no pooler"
                )
            return ClassifierHead(pool=pooler.dense, act=pooler.activation, out=head)
        return ClassifierHead(pool=head.dense, act=nn.Tanh(), out=head.out_proj)
