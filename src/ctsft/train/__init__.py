"""Training: methods as a registry of trainable-parameter plans, head-level masking, LoRA, the
single loop.

Names are imported on first use (PEP 562), so `ctsft.train.methods` (the registry the workflow's
config check reads) loads without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "RunLog": "loop",
    "TrainConfig": "loop",
    "Trainer": "loop",
    "optimizer_state_bytes": "loop",
    "train_to_checkpoint": "loop",
    "MaskedModel": "masking",
    "SpanDeltas": "masking",
    "HEAD_METHODS": "methods",
    "METHODS": "methods",
    "TrainablePlan": "methods",
    "TrainEntry": "methods",
    "build_plan": "methods",
    "circuit_heads": "methods",
    "load_circuit": "methods",
    "register_kind": "methods",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"ctsft.train.{_HOMES[name]}"), name)
