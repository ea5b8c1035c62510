"""Models: named offline/hub/tiny models, cached conversion, task heads.

Tiny random models live in `ctsft.models.tiny` (not imported here: it pulls in every config class).
"""

from ctsft.models.prepare import prepare_model
from ctsft.models.registry import MODELS, ModelSpec, get_model_spec
from ctsft.models.task_model import TaskModel, label_token_ids, load_task_model

__all__ = [
    "MODELS",
    "ModelSpec",
    "TaskModel",
    "get_model_spec",
    "label_token_ids",
    "load_task_model",
    "prepare_model",
]
