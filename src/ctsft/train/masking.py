"""Head-level masking without optimizer state for frozen weights.

A parameter that is trainable as a whole keeps `requires_grad=True`. A partially trainable matrix
(a head's q/k/v rows, o columns, bias slices) is frozen and gets a parametrization that adds a small
delta tensor to each selected span: W(delta) = cat(W0[:a], W0[a:b] + delta, W0[b:]). Only the
deltas are optimised, so AdamW keeps state for exactly the selected entries, gradient masking is
exact by construction, and weight decay can never reach frozen entries. `merge` writes
W0[a:b] + delta into the original tensor (index-copy semantics): frozen entries are never
recomputed, so they stay bit-identical (no -0.0 + 0.0 surprises).

AdamW's decoupled decay should shrink the *effective* selected weights, not the deltas (which
would decay towards W0): `decay_deltas` applies delta -= lr * wd * (W0[a:b] + delta) before each
optimizer step, the same update AdamW makes to a weight, and the deltas sit in a zero-decay group.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from ctsft.train.methods import TrainablePlan, TrainEntry


class SliceDelta(nn.Module):
    """Parametrization adding trainable deltas to spans [start, stop) of `dim` of a frozen tensor."""

    def __init__(self, original: torch.Tensor, dim: int, spans: list[tuple[int, int]]) -> None:
        super().__init__()
        self.dim = dim
        self.spans = sorted(spans)
        self.deltas = nn.ParameterList(
            nn.Parameter(torch.zeros_like(original.narrow(dim, a, b - a))) for a, b in self.spans
        )

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        pieces, pos = [], 0
        for (a, b), delta in zip(self.spans, self.deltas, strict=True):
            if a > pos:
                pieces.append(weight.narrow(self.dim, pos, a - pos))
            pieces.append(weight.narrow(self.dim, a, b - a) + delta)
            pos = b
        if pos < weight.shape[self.dim]:
            pieces.append(weight.narrow(self.dim, pos, weight.shape[self.dim] - pos))
        return torch.cat(pieces, dim=self.dim)


@dataclass
class DeltaRef:
    """One trainable span: its delta, the frozen original and where the span sits."""

    name: str
    delta: nn.Parameter
    original: torch.Tensor
    dim: int
    start: int
    stop: int

    def base(self) -> torch.Tensor:
        return self.original.detach().narrow(self.dim, self.start, self.stop - self.start)


class MaskedModel:
    """Applies a `TrainablePlan` to a model; `merge()` removes the parametrizations afterwards."""

    def __init__(self, model: nn.Module, plan: TrainablePlan) -> None:
        self.model = model
        self.deltas: list[DeltaRef] = []
        self._modules: list[tuple[nn.Module, str]] = []
        params = dict(model.named_parameters())
        for param in model.parameters():
            param.requires_grad_(False)
        spans: dict[str, list[TrainEntry]] = {}
        for entry in plan.entries:
            if entry.dim is None:
                params[entry.name].requires_grad_(True)
            else:
                spans.setdefault(entry.name, []).append(entry)
        for name, entries in spans.items():
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            original = params[name]
            dims = {e.dim for e in entries}
            if (
                len(dims) != 1
            ):  # pragma: no cover - adapters never mix rows and columns of one tensor
                raise ValueError(f"{name}: slices along several dims")
            dim = dims.pop()
            assert dim is not None
            slicer = SliceDelta(original, dim, [(e.start, e.stop) for e in entries])
            parametrize.register_parametrization(module, attr, slicer)
            self._modules.append((module, attr))
            kept = getattr(module.parametrizations, attr).original
            kept.requires_grad_(False)
            for (a, b), delta in zip(slicer.spans, slicer.deltas, strict=True):
                self.deltas.append(DeltaRef(name, delta, kept, dim, a, b))

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]

    @torch.no_grad()
    def decay_deltas(self, lr: float, weight_decay: float) -> None:
        """AdamW's decoupled decay on the effective selected weights of matrices (not biases)."""
        if not weight_decay:
            return
        for ref in self.deltas:
            if ref.original.dim() >= 2:
                ref.delta.sub_((ref.base() + ref.delta) * (lr * weight_decay))

    @torch.no_grad()
    def merge(self) -> None:
        """Write W0[span] + delta into the original tensors and drop the parametrizations."""
        updates = [
            (ref.original, ref.dim, ref.start, ref.stop, ref.base() + ref.delta.detach())
            for ref in self.deltas
        ]
        for module, attr in self._modules:
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        for original, dim, start, stop, value in updates:
            original.data.narrow(dim, start, stop - start).copy_(value)
        self._modules.clear()
        self.deltas.clear()
