"""Task data: local NusaX-Senti and XNLI loaders, task descriptions, balanced sampling.

The names are resolved lazily (PEP 562), so `ctsft.data.tasks` (what models and the training
loop need) imports without `datasets`: the GPU benchmark runs on a bare PyTorch machine.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "data_checksum": "loaders",
    "data_root": "loaders",
    "load_split": "loaders",
    "balanced_indices": "sampling",
    "balanced_sample": "sampling",
    "subsample": "sampling",
    "NUSAX": "tasks",
    "TASKS": "tasks",
    "XNLI": "tasks",
    "TaskSpec": "tasks",
    "get_task": "tasks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ctsft.data' has no attribute {name!r}")
    return getattr(import_module(f"ctsft.data.{_EXPORTS[name]}"), name)
