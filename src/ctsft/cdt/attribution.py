"""Attribution patching: a first-order estimate of every head's mean-ablation effect at once.

For head s with per-head activation a(s) (the input of its layer's output projection) and the
mean baseline mu(s), the score is

    attr(s) = sum over real positions and d_head of  d margin / d a(s)  *  (a(s) - mu(s)),

averaged over the examples, where margin = logit[gold] - mean(logit[other labels])
(`ctsft.cdt.margin.gold_margin`). Replacing a(s) by mu(s) changes the margin by
-attr(s) + O(|a - mu|^2), so attr approximates the `ablation` score (positive = the head's
deviation from mu pushes toward the gold label, like `directional`), from one forward and one
backward pass per batch for all heads instead of one ablated forward per head.

Written by hand because no library computes it for this read-out: attribution patching in
TransformerLens needs its HookedTransformer models, and captum's layer methods
(LayerGradientXActivation, ...) attribute to a whole layer output against no baseline or a zero
one, not per head against a per-head (or per-position) mean, nor for the class logits our
`TaskModel` reads (pooler + classifier at position 0, or label-token rows at the last real
token). It is a few hooks on the adapter's o-projection inputs.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn
from tqdm.auto import tqdm

from ctsft.adapters import ArchAdapter
from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.margin import gold_margin
from ctsft.errors import CtsftError
from ctsft.models.task_model import class_logits

Logits = Callable[..., torch.Tensor]  # `model(**batch)` -> class logits [batch, n_labels]


def engine_logits(engine: CDTEngine) -> Logits:
    """`TaskModel.forward` of the engine's model: the one read-out
    (`ctsft.models.task_model.class_logits`) on the engine's Hugging Face model, kind and label
    tokens (an engine may be built from a bare model, without a `TaskModel`)."""
    return functools.partial(class_logits, engine.hf, engine.kind, engine.label_ids)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Dropout off for the forward (the gradient is of the model as evaluated), mode restored."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _layer_mu(mu: torch.Tensor, layer: int, n_pos: int, like: torch.Tensor) -> torch.Tensor:
    """mu of one layer as `[H, dh]` or, per position, `[T, H, dh]` (cut to the batch's length)."""
    mu_l = mu[layer]
    if mu_l.dim() == 3:
        if mu_l.shape[0] < n_pos:
            raise CtsftError(
                f"per-position mu covers {mu_l.shape[0]} positions, the batch has {n_pos}"
            )
        mu_l = mu_l[:n_pos]
    return mu_l.to(device=like.device, dtype=torch.float64)


def head_attribution(
    model: Logits, adapter: ArchAdapter, batch: dict[str, torch.Tensor], mu: torch.Tensor
) -> torch.Tensor:
    """Per-example attribution `[batch, layer, head]` (float64) from one forward and one backward.

    `model(**batch)` gives class logits; `adapter` is its architecture adapter (the hooks sit on
    the input of each layer's output projection); `mu` is `[layer, head, d_head]` or per position
    `[layer, pos, head, d_head]`. Padding positions are left out, as in the directional score.
    """
    geo = adapter.geometry
    store: dict[int, torch.Tensor] = {}

    def keep(layer: int, z: torch.Tensor) -> torch.Tensor:
        if not z.requires_grad:  # nothing upstream needs a gradient (frozen weights): a leaf
            z = z.detach().requires_grad_(True)
        store[layer] = z
        return z

    with torch.enable_grad(), adapter.edit_head_outputs(keep):
        logits = model(**batch)
        margin = gold_margin(logits, batch["labels"])
        if len(store) != geo.n_layers:
            raise CtsftError(f"hooked {len(store)} of {geo.n_layers} layers' head outputs")
        z = [store[layer] for layer in range(geo.n_layers)]
        # rows are independent, so the gradient of the sum is each example's own gradient
        grads = torch.autograd.grad(margin.sum(), z)
    mask = batch["attention_mask"].to(torch.float64)  # [B, T]
    out = []
    for layer, (a, g) in enumerate(zip(z, grads, strict=True)):
        a = a.detach().to(torch.float64)  # [B, T, H, dh]
        delta = a - _layer_mu(mu, layer, a.shape[1], a)
        per_pos = (g.to(torch.float64) * delta).sum(-1)  # [B, T, H]
        out.append(torch.einsum("bth,bt->bh", per_pos, mask))
    return torch.stack(out, dim=1)


def attribution_scores(
    model: Logits,
    adapter: ArchAdapter,
    batches: Iterable[dict[str, torch.Tensor]],
    mu: torch.Tensor,
    progress: bool = True,
) -> tuple[torch.Tensor, int]:
    """Attribution scores `[layer, head]` averaged over all examples of `batches` (float32, CPU),
    and the example count; see the module docstring."""
    batches = list(batches)
    sums: torch.Tensor | None = None
    n = 0
    with _eval_mode(adapter.model):
        for batch in tqdm(batches, desc="attribution scores", disable=not progress, leave=False):
            value = head_attribution(model, adapter, batch, mu).sum(0)
            sums = value if sums is None else sums + value
            n += batch["labels"].shape[0]
    if n == 0 or sums is None:
        raise CtsftError("no examples to score")
    return (sums / n).to(device="cpu", dtype=torch.float32), n
