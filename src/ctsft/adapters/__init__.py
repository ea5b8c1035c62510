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

_FAMILIES = {"bert": BertAdapter, "xlm-roberta": BertAdapter, "roberta": BertAdapter}
_DECODERS = ("llama", "qwen2", "gemma3_text", "gemma3", "mistral")
_CAUSAL_FAMILIES = {"gpt2": GPT2Adapter}
#: `config.model_type`s by task-model kind (what a checkpoint of each kind may be).
MODEL_TYPES = {"encoder": tuple(_FAMILIES), "causal": (*_DECODERS, *_CAUSAL_FAMILIES)}


def get_adapter(model: nn.Module) -> ArchAdapter:
    """The adapter for a Hugging Face model, by its `config.model_type`."""
    model_type = model.config.model_type
    if model_type in _FAMILIES:
        return _FAMILIES[model_type](model)
    if model_type in _DECODERS:
        return DecoderAdapter(model)
    if model_type in _CAUSAL_FAMILIES:
        return _CAUSAL_FAMILIES[model_type](model)
    raise CtsftError(
        f"no architecture adapter for model_type {model_type!r}: supported are "
        f"{', '.join([*_FAMILIES, *_DECODERS, *_CAUSAL_FAMILIES])}"
    )


__all__ = [
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
