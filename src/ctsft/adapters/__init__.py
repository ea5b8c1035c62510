"""Architecture adapters: one per model family, a common vocabulary for the algorithms."""

from torch import nn

from ctsft.adapters.base import (
    ArchAdapter,
    AttentionParts,
    ClassifierHead,
    Geometry,
    LayerParts,
    MLPParts,
    NormSpec,
    ParamSlice,
)
from ctsft.adapters.bert import BertAdapter
from ctsft.adapters.decoder import DecoderAdapter, apply_rotary
from ctsft.adapters.gpt2 import GPT2Adapter
from ctsft.errors import CtsftError
from ctsft.facts import MODEL_TYPES

#: The adapter of each `config.model_type` (`ctsft.facts.MODEL_TYPES` lists them by kind, for the
#: validators that must not import torch; a test keeps the two equal).
ADAPTERS: dict[str, type[ArchAdapter]] = {
    "bert": BertAdapter,
    "xlm-roberta": BertAdapter,
    "roberta": BertAdapter,
    "llama": DecoderAdapter,
    "qwen2": DecoderAdapter,
    "gemma3_text": DecoderAdapter,
    "gemma3": DecoderAdapter,
    "mistral": DecoderAdapter,
    "gpt2": GPT2Adapter,
}


def get_adapter(model: nn.Module) -> ArchAdapter:
    """The adapter for a Hugging Face model, by its `config.model_type`."""
    model_type = model.config.model_type
    if model_type in ADAPTERS:
        return ADAPTERS[model_type](model)
    raise CtsftError(
        f"no architecture adapter for model_type {model_type!r}: supported are {', '.join(ADAPTERS)}"
    )


__all__ = [
    "ADAPTERS",
    "ArchAdapter",
    "AttentionParts",
    "BertAdapter",
    "ClassifierHead",
    "DecoderAdapter",
    "GPT2Adapter",
    "Geometry",
    "LayerParts",
    "MLPParts",
    "MODEL_TYPES",
    "NormSpec",
    "ParamSlice",
    "apply_rotary",
    "get_adapter",
]
