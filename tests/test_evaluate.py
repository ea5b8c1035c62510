"""Metric helpers: accuracy, macro-F1 over all labels, confusion layout, forgetting."""

from __future__ import annotations

import numpy as np
import pytest

from ctsft.evaluate import classification_metrics, forgetting


def test_metrics_on_a_hand_computed_example() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 0, 2])
    m = classification_metrics(labels, preds, ("negative", "neutral", "positive"))
    assert m["accuracy"] == pytest.approx(4 / 6)
    # per-class F1: neg P=1/2 R=1/2 -> 0.5; neu P=2/3 R=1 -> 0.8; pos P=1 R=1/2 -> 2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows gold, columns predicted
    assert m["n"] == 6 and m["labels"] == ["negative", "neutral", "positive"]


def test_a_label_never_predicted_counts_as_zero_f1() -> None:
    m = classification_metrics(np.array([0, 1, 2]), np.array([0, 0, 0]), ("a", "b", "c"))
    assert m["macro_f1"] == pytest.approx((2 * (1 / 3) * 1 / (1 / 3 + 1)) / 3)


def test_forgetting_is_after_minus_before() -> None:
    assert forgetting(0.70, 0.75) == pytest.approx(-0.05)
    assert forgetting(0.70, None) is None


def test_the_evaluate_step_puts_gold_labels_on_the_confusion_rows(
    tiny_model_dirs, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that always predicts label 0: every gold label's count sits in column 0 of its own
    row (rows gold, columns predicted), whatever order `predict` returns (preds, labels) in."""
    from ctsft.config import compose
    from ctsft.steps import evaluate as evaluate_step

    def always_negative(model, rows, batch_size=32):
        labels = np.array([int(row["label"]) for row in rows])
        return np.zeros_like(labels), labels

    from ctsft.models import load_task_model

    checkpoint = tmp_path / "proxy_checkpoint"
    load_task_model(tiny_model_dirs["tiny_bert"], "nusax").save(
        checkpoint, extra={"training": {"method": "full_ft", "trainable": 1}}
    )
    monkeypatch.setattr(evaluate_step, "predict", always_negative)
    cfg = compose(
        ["model=tiny_bert", "method=zero_shot", "target=jav", "task.eval_size=12", "threads=1"]
        + [f"io.checkpoint={checkpoint}", f"io.metrics={tmp_path / 'm.json'}"]
    )
    metrics = evaluate_step.run(cfg)
    assert metrics["confusion"] == [[4, 0, 0], [4, 0, 0], [4, 0, 0]]  # 12 rows, label-balanced
    assert metrics["accuracy"] == pytest.approx(1 / 3)
