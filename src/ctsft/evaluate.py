"""Classification metrics of a task model: accuracy, macro-F1, confusion matrix, forgetting.

Evaluation subsets (`task.eval_size`) are drawn with a fixed seed (`EVAL_SEED`), not the run's
seed, so every method and seed is scored on the same test rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ctsft.models.task_model import TaskModel

if TYPE_CHECKING:
    from datasets import Dataset

EVAL_SEED = 0


def predict(
    model: TaskModel,
    rows: list[dict[str, Any]] | Dataset,
    batch_size: int = 32,
    by_length: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted and gold label ids for `rows` (eval mode, no gradients), in the input order.

    `by_length` batches rows in order of token length, so little compute is spent on padding;
    `False` batches them in the given order (what CD-T's discovery set has always been drawn
    with). The two are kept apart because which rows share a batch sets the padded shape, which
    can move logits in the last bits and so flip an argmax near a tie. Forward passes run on the
    model's device under its runtime's autocast.
    """
    examples = rows.to_list() if hasattr(rows, "to_list") else list(rows)  # a datasets.Dataset
    if by_length:
        lengths = [len(model.tokenizer(*model.format(ex))["input_ids"]) for ex in examples]
        order = np.argsort(lengths, kind="stable")
    else:
        order = np.arange(len(examples))
    preds = np.zeros(len(examples), dtype=int)
    model.eval()
    with torch.inference_mode(), model.autocast():
        for start in range(0, len(examples), batch_size):
            chunk = order[start : start + batch_size]
            batch = model.encode([examples[i] for i in chunk])
            batch.pop("labels", None)
            preds[chunk] = model(**batch).argmax(dim=-1).cpu().numpy()
    labels = np.array([int(ex["label"]) for ex in examples])
    return preds, labels


def classification_metrics(
    labels: np.ndarray, preds: np.ndarray, label_names: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, macro-F1 over all labels (absent ones count as 0) and the confusion matrix (rows: gold)."""
    from sklearn.metrics import confusion_matrix, f1_score  # lazy: a second of import time per job

    ids = list(range(len(label_names)))
    return {
        "accuracy": float((labels == preds).mean()) if len(labels) else float("nan"),
        "macro_f1": float(f1_score(labels, preds, labels=ids, average="macro", zero_division=0)),
        "confusion": confusion_matrix(labels, preds, labels=ids).tolist(),
        "labels": list(label_names),
        "n": int(len(labels)),
    }


def forgetting(proxy_accuracy: float, baseline_proxy_accuracy: float | None) -> float | None:
    """Proxy-language accuracy after transfer minus before (negative = forgotten)."""
    if baseline_proxy_accuracy is None:
        return None
    return float(proxy_accuracy - baseline_proxy_accuracy)
