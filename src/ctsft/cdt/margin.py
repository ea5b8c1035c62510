"""The gold-label margin that every head score and the faithfulness check measure.

Its own module so that `scores` (which dispatches to `attribution`) and `attribution` (which
differentiates it) both import it from below, with no cycle between them.
"""

from __future__ import annotations

import torch


def gold_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logit[gold] - mean(logit[other labels]) over the last dim; `labels` broadcast over leading dims."""
    n = logits.shape[-1]
    gold = torch.gather(logits, -1, labels.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    return gold - (logits.sum(-1) - gold) / (n - 1)
