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
