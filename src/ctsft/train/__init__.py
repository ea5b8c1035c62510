"""Training: methods as a registry of trainable-parameter plans, head-level masking, LoRA, the
single loop.

Names are imported on first use (PEP 562), so importing one module does not load the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_MODULES = {
    "loop": ("RunLog", "TrainConfig", "Trainer", "optimizer_state_bytes", "train_to_checkpoint"),
    "masking": ("MaskedModel", "SpanDeltas"),
    "methods": (
        "HEAD_METHODS", "METHODS", "TrainablePlan", "TrainEntry", "build_plan", "circuit_heads",
        "register_kind",
    ),
}  # fmt: skip
_HOMES = {name: module for module, names in _MODULES.items() for name in names}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"ctsft.train.{_HOMES[name]}"), name)
