"""Label-balanced mean baseline mu(s) for every head: the neutral operating point of CD-T.

Because the discovery set has the same number of examples per label, class-directional signal
cancels in the mean, so beta = a - mu isolates what an input adds over a label-neutral head.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

import torch

from ctsft.data import balanced_indices
from ctsft.errors import CtsftError
from ctsft.evaluate import predict
from ctsft.models.task_model import TaskModel

if TYPE_CHECKING:  # datasets only in annotations: the engine imports without it
    from datasets import Dataset

log = logging.getLogger(__name__)
Pooling = Literal["all", "last", "first", "position"]
POOLINGS = ("all", "last", "first", "position")


def batches(
    task_model: Any, examples: list[dict[str, Any]], batch_size: int
) -> Iterator[dict[str, torch.Tensor]]:
    """Encoded batches (with labels) of `examples`, in order."""
    for start in range(0, len(examples), batch_size):
        yield task_model.encode(examples[start : start + batch_size])


def discovery_indices(
    task_model: Any,
    pool: Dataset,
    n_per_label: int,
    seed: int,
    correct_only: bool,
    batch_size: int = 32,
    pool_size: int | None = None,
) -> tuple[list[int], dict[str, Any]]:
    """Row indices (into `pool`) of the label-balanced discovery set M, and a record of how it
    was drawn.

    `pool_size` first keeps a seeded random subset of that many candidate rows, so that
    `correct_only` need not classify a large pool (XNLI's 2,241 rows) to keep a few dozen.
    `correct_only` then keeps the rows theta_1 predicts correctly, then balances. When a label has
    fewer correct rows than `n_per_label`, every label gets that smaller count (balance is what
    makes mu neutral) and the record says so.
    """
    labels = list(pool["label"])
    candidates = list(range(len(pool)))
    if pool_size is not None and pool_size < len(pool):
        generator = torch.Generator().manual_seed(seed)
        candidates = sorted(torch.randperm(len(pool), generator=generator)[:pool_size].tolist())
    info: dict[str, Any] = {
        "pool_size": len(pool),
        "candidates": len(candidates),
        "correct_only": correct_only,
        "n_per_label": n_per_label,
    }
    if correct_only:
        # batched in pool order (not by length), as M has always been drawn: other batches could
        # move a logit in its last bits and so the rows kept
        rows = [pool[i] for i in candidates]
        preds = predict(task_model, rows, batch_size, by_length=False)[0].tolist()
        candidates = [i for i, p in zip(candidates, preds, strict=True) if p == labels[i]]
        info["pool_accuracy"] = len(candidates) / max(len(rows), 1)
    kept = [labels[i] for i in candidates]
    counts = {lab: kept.count(lab) for lab in sorted(set(labels))}
    smallest = min(counts.values()) if counts else 0
    if smallest == 0:
        raise CtsftError(
            "discovery set: some label has no correctly classified example; train the proxy "
            "checkpoint longer or set cdt.correct_only=false"
        )
    if smallest < n_per_label:
        log.warning(
            "discovery set: only %d examples for some label, using %d per label", smallest, smallest
        )
        info["n_per_label_used"] = smallest
        n_per_label = smallest
    else:
        info["n_per_label_used"] = n_per_label
    picked = balanced_indices(kept, n_per_label, seed)
    return [candidates[i] for i in picked], info


@torch.inference_mode()
def mean_baseline(
    task_model: Any,
    examples: list[dict[str, Any]],
    pooling: Pooling = "all",
    batch_size: int = 16,
) -> torch.Tensor:
    """mu per head `[layer, head, d_head]` (or `[layer, pos, head, d_head]` for `position`),
    from forwards in the model's own dtype (never the runtime's autocast: see `cdt_precision`).

    `all`: each example's mean over its non-padding tokens, then the mean over examples (each
    example weighs the same, so label balance survives uneven lengths); `first`: position 0;
    `last`: the last real token; `position`: per position over the examples that reach it
    (positions no example reaches get the `all` mean), up to the model's max length.
    """
    if pooling not in POOLINGS:
        raise CtsftError(f"cdt.pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    if not examples:
        raise CtsftError("empty discovery set")
    adapter = task_model.adapter
    geo = adapter.geometry
    task_model.eval()
    # float64 sums on the model's device (no host sync per batch); fp64 is slow on GPUs but this
    # is a few small reductions per batch next to a forward pass
    dev = task_model.device
    sums = torch.zeros(geo.n_layers, geo.n_heads, geo.d_head, dtype=torch.float64, device=dev)
    n_pos = int(getattr(task_model, "max_length", 128))
    pos_sums = (
        torch.zeros(geo.n_layers, n_pos, geo.n_heads, geo.d_head, dtype=torch.float64, device=dev)
        if pooling == "position"
        else None
    )
    pos_counts = torch.zeros(n_pos, dtype=torch.float64, device=dev)
    count = 0
    for batch in batches(task_model, examples, batch_size):
        mask = batch["attention_mask"].to(torch.float64)  # [B, T]
        # no runtime autocast: mu is taken in the precision CD-T decomposes in (the model's own
        # dtype, cast by the step for cdt.precision), so a source equal to mu has beta exactly 0
        with adapter.capture_head_outputs() as store:
            task_model(**batch)
        z = torch.stack([store[i] for i in range(geo.n_layers)]).to(
            torch.float64
        )  # [L, B, T, H, dh]
        if pooling == "first":
            pooled = z[:, :, 0]
        elif pooling == "last":
            last = TaskModel.readout_positions(batch["attention_mask"], "causal")  # last real one
            pooled = z[:, torch.arange(z.shape[1], device=dev), last]
        else:
            weights = mask / mask.sum(1, keepdim=True)
            pooled = torch.einsum("lbthd,bt->lbhd", z, weights)
        sums += pooled.sum(1)
        count += z.shape[1]
        if pos_sums is not None:
            t = z.shape[2]
            pos_sums[:, :t] += torch.einsum("lbthd,bt->lthd", z, mask)
            pos_counts[:t] += mask.sum(0)
    mu = sums / count
    if pos_sums is not None:
        reached = pos_counts > 0
        per_pos = mu.unsqueeze(1).expand(-1, n_pos, -1, -1).clone()
        per_pos[:, reached] = pos_sums[:, reached] / pos_counts[reached, None, None]
        mu = per_pos
    return mu.to(device="cpu", dtype=torch.float32)
