"""Task data: local NusaX-Senti and XNLI loaders, task descriptions, balanced sampling."""

from ctsft.data.loaders import data_checksum, data_root, load_hub_split, load_split
from ctsft.data.sampling import balanced_indices, balanced_sample, subsample
from ctsft.data.tasks import NUSAX, TASKS, XNLI, TaskSpec, get_task

__all__ = [
    "NUSAX",
    "TASKS",
    "XNLI",
    "TaskSpec",
    "balanced_indices",
    "balanced_sample",
    "data_checksum",
    "data_root",
    "get_task",
    "load_hub_split",
    "load_split",
    "subsample",
]
