"""Faithfulness (beyond the paper): does ablating the circuit hurt more than ablating other heads?

Every head set is mean-ablated (its heads' outputs replaced by mu) on held-out data; all sets
are stacked along the batch dim and share one cached clean forward per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.margin import gold_margin


def ablation_report(
    engine: CDTEngine,
    batches: Iterable[dict[str, torch.Tensor]],
    mu: torch.Tensor,
    head_sets: Sequence[Sequence[Sequence[int]]],
) -> dict[str, Any]:
    """Clean accuracy / margin, and per head set: accuracy, accuracy drop, mean gold-margin drop."""
    n_sets = len(head_sets)
    correct = torch.zeros(n_sets, dtype=torch.float64, device=engine.device)
    margin_drop = torch.zeros(n_sets, dtype=torch.float64, device=engine.device)
    clean_correct = 0.0
    clean_margin = 0.0
    n = 0
    sets = [[(int(layer), int(head)) for layer, head in hs] for hs in head_sets]
    for batch in batches:
        labels = batch["labels"]
        cache = engine.clean(batch)
        base = gold_margin(cache.logits, labels)
        clean_correct += float((cache.logits.argmax(-1) == labels).sum())
        clean_margin += float(base.sum())
        if n_sets:
            logits = engine.ablate(cache, sets, mu)  # [S, B, C]
            correct += (logits.argmax(-1) == labels).sum(-1).to(torch.float64)
            margin_drop += (base - gold_margin(logits, labels)).sum(-1).to(torch.float64)
        n += labels.shape[0]
    clean_acc = clean_correct / max(n, 1)
    results = [
        {
            "heads": [list(h) for h in hs],
            "accuracy": float(correct[i] / n),
            "accuracy_drop": float(clean_acc - correct[i] / n),
            "margin_drop": float(margin_drop[i] / n),
        }
        for i, hs in enumerate(head_sets)
    ]
    return {
        "n_examples": n,
        "clean_accuracy": clean_acc,
        "clean_margin": clean_margin / max(n, 1),
        "sets": results,
    }


def summarize_random(sets: list[dict[str, Any]]) -> dict[str, float]:
    drops = np.array([s["margin_drop"] for s in sets])
    acc = np.array([s["accuracy_drop"] for s in sets])
    if len(drops) == 0:
        return {}
    return {
        "margin_drop_median": float(np.median(drops)),
        "margin_drop_mean": float(drops.mean()),
        "margin_drop_std": float(drops.std()),
        "accuracy_drop_median": float(np.median(acc)),
        "accuracy_drop_mean": float(acc.mean()),
    }
