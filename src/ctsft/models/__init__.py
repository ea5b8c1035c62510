"""Models: named offline/hub/tiny models, cached conversion, task heads."""

from ctsft.models.prepare import prepare_model
from ctsft.models.registry import MODELS, ModelSpec, get_model_spec
from ctsft.models.task_model import TaskModel, label_token_ids, load_task_model
from ctsft.models.tiny import TINY_ARCHES, tiny_config, tiny_model

__all__ = [
    "MODELS",
    "TINY_ARCHES",
    "ModelSpec",
    "TaskModel",
    "get_model_spec",
    "label_token_ids",
    "load_task_model",
    "prepare_model",
    "tiny_config",
    "tiny_model",
]
