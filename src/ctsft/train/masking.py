"""Head-level masking without optimizer state or weight gradients for frozen weights.

A parameter that is trainable as a whole keeps `requires_grad=True`. A partially trainable
`nn.Linear` (a head's q/k/v rows, o columns, bias slices) stays frozen and gets a forward hook that
adds a small trainable delta over the selected spans only, as a separate small matmul:
rows [a, b) (weight dim 0, and bias): `out[..., a:b] += x @ dW.T + db`;
columns [a, b) (dim 1): `out += x[..., a:b] @ dW.T`.
That is mathematically `x @ (W0 + delta).T`, but autograd never computes the full weight gradient
`x^T dy` of the frozen matrix nor materialises `W0 + delta` (an earlier parametrization,
`cat(W0[:a], W0[a:b] + delta, W0[b:])`, paid both every step). Only the deltas are optimised, so
AdamW keeps state for exactly the selected entries, gradient masking is exact by construction, and
weight decay can never reach frozen entries. `merge` writes W0[a:b] + delta into the original
tensor (index-copy semantics): frozen entries are never recomputed, so they stay bit-identical
(no -0.0 + 0.0 surprises).

The deltas of a Linear live in a `SpanDeltas` child registered as `<linear>.span_deltas`, so they
appear in `named_parameters()` (resume state, clipping, counts); the training loop keeps them out
of its weight-decay group. AdamW's decoupled decay should shrink the *effective* selected
weights, not the deltas (which would decay towards W0): `decay_deltas` applies
delta -= lr * wd * (W0[a:b] + delta) before each optimizer step, the same update AdamW makes to a
weight. `decay_before_steps` registers it as the optimizer's step pre-hook, so it runs after the
loop's gradient clipping and right before AdamW's step, and the loop knows nothing of it.

Individual entries (`plan.scatter`, kind `sparse_random`) get the same treatment through a
`ScatterDeltas` child (`<linear>.scatter_deltas`): one 1-D delta per weight / bias holding only the
selected entries, scattered into a zero matrix in the hook, `out += F.linear(x, scatter(dW), db)`.
Entries spread over the whole matrix admit no smaller matmul, but W0 + delta is still never formed,
the deltas' gradient is the gather of theirs alone (AdamW state for exactly the selected entries),
and `merge` writes W0.flatten()[idx] + delta at idx only. A module takes spans or entries, not both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

from ctsft.train.methods import ScatterEntry, TrainablePlan, TrainEntry

HOLDER = "span_deltas"  # the attribute of a masked nn.Linear holding its `SpanDeltas`
SCATTER_HOLDER = "scatter_deltas"  # the attribute holding its `ScatterDeltas` (entries)


def _zero_deltas(
    original: torch.Tensor, dim: int, spans: list[tuple[int, int]]
) -> nn.ParameterList:
    return nn.ParameterList(
        nn.Parameter(torch.zeros_like(original.detach().narrow(dim, a, b - a))) for a, b in spans
    )


def _joined(tensors: list[torch.Tensor], dim: int) -> torch.Tensor:
    """`torch.cat` along `dim`, without a copy for a single tensor (the common single span)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=dim)


class SpanDeltas(nn.Module):
    """Trainable deltas on spans of a frozen `nn.Linear`, added to its output by a forward hook.

    `weight_dim` 0: deltas `[b - a, in]` on output rows; 1: deltas `[out, b - a]` on input columns.
    Bias deltas `[b - a]` are on output features. `transposed`: a GPT-2 `Conv1D`, whose weight is
    `[in, out]` (out = x @ W + b), so output features are dim 1 and input features dim 0.
    """

    def __init__(
        self,
        linear: nn.Module,
        weight_dim: int | None,
        weight_spans: list[tuple[int, int]],
        bias_spans: list[tuple[int, int]],
        transposed: bool = False,
    ) -> None:
        super().__init__()
        self.weight_dim = weight_dim
        self.transposed = transposed
        self.out_dim = 1 if transposed else 0  # the weight dim of the output features
        self.weight_spans = sorted(weight_spans)
        self.bias_spans = sorted(bias_spans)
        self.weight = _zero_deltas(linear.weight, weight_dim or 0, self.weight_spans)
        self.bias = (
            _zero_deltas(linear.bias, 0, self.bias_spans)
            if linear.bias is not None
            else nn.ParameterList()
        )
        # bias deltas on exactly the weight rows ride along in the same matmul (the common case)
        self._fused_bias = (
            weight_dim == self.out_dim
            and bool(self.bias_spans)
            and self.bias_spans == self.weight_spans
        )

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return self.add_to(args[0], output)

    def add_to(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """`out` (= x @ W0.T + b0) plus the contribution of the deltas."""
        if self.weight_spans and self.weight_dim != self.out_dim:  # spans of input features
            cols = _joined([x[..., a:b] for a, b in self.weight_spans], dim=-1)
            delta = _joined(list(self.weight), dim=self.weight_dim)  # [out, n] or [n, out]
            flat = torch.addmm(
                out.reshape(-1, out.shape[-1]),
                cols.reshape(-1, cols.shape[-1]),
                delta if self.transposed else delta.t(),
            )
            out = flat.view(out.shape)
        elif self.weight_spans:  # spans of output features
            rows = _joined(list(self.weight), dim=self.out_dim)  # [n, in] or [in, n]
            bias = _joined(list(self.bias), dim=0) if self._fused_bias else None
            extra = F.linear(x, rows.t() if self.transposed else rows, bias)
            pos = 0
            for a, b in self.weight_spans:
                out[..., a:b] += extra[..., pos : pos + b - a]
                pos += b - a
        if not self._fused_bias:
            for (a, b), delta in zip(self.bias_spans, self.bias, strict=True):
                out[..., a:b] += delta
        return out


class ScatterDeltas(nn.Module):
    """Trainable deltas on individual entries (flat indices) of a frozen `nn.Linear` / `Conv1D`.

    `weight` holds the deltas of the selected weight entries in index order, `bias` those of the
    bias (None where none is selected); the indices are non-persistent buffers, so they follow
    `.to(device)` but never reach a state dict. `transposed`: a GPT-2 `Conv1D` (weight `[in, out]`).
    """

    def __init__(
        self,
        linear: nn.Module,
        weight_index: torch.Tensor,
        bias_index: torch.Tensor,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        self.transposed = transposed
        self.weight_shape = tuple(linear.weight.shape)
        self.out_features = self.weight_shape[1 if transposed else 0]
        self.register_buffer("weight_index", weight_index, persistent=False)
        self.register_buffer("bias_index", bias_index, persistent=False)
        new = linear.weight.detach().new_zeros
        self.weight = nn.Parameter(new(weight_index.numel())) if weight_index.numel() else None
        self.bias = nn.Parameter(new(bias_index.numel())) if bias_index.numel() else None

    def hook(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        """`output` (= x @ W0.T + b0) plus x @ dW.T + db, in place (keeping autocast's dtype)."""
        bias = None
        if self.bias is not None:
            bias = self.bias.new_zeros(self.out_features).scatter(0, self.bias_index, self.bias)
        if self.weight is None:
            output += bias
            return output
        flat = self.weight.new_zeros(math.prod(self.weight_shape))
        weight = flat.scatter(0, self.weight_index, self.weight).view(self.weight_shape)
        output += F.linear(args[0], weight.t() if self.transposed else weight, bias)
        return output


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

    def store(self, value: torch.Tensor) -> None:
        """Write `value` over the span of the original tensor, and nowhere else."""
        self.original.data.narrow(self.dim, self.start, self.stop - self.start).copy_(value)


@dataclass
class EntryRef:
    """Scattered trainable entries of one parameter: their delta, the frozen original and where
    the entries sit (`coords`: the flat indices unravelled, one index tensor per dim)."""

    name: str
    delta: nn.Parameter
    original: torch.Tensor
    coords: tuple[torch.Tensor, ...]

    def base(self) -> torch.Tensor:
        return self.original.detach()[self.coords]

    def store(self, value: torch.Tensor) -> None:
        """Write `value` at the entries only (`index_put_`: the rest is never touched)."""
        self.original.data[self.coords] = value


class MaskedModel:
    """Applies a `TrainablePlan` to a model; `merge()` folds the deltas in and removes the hooks."""

    def __init__(self, model: nn.Module, plan: TrainablePlan) -> None:
        self.model = model
        self.deltas: list[DeltaRef | EntryRef] = []
        self._hooked: list[tuple[nn.Module, Any]] = []
        self._step_hooks: list[RemovableHandle] = []  # the delta decay on optimizers
        params = dict(model.named_parameters())
        for param in model.parameters():
            param.requires_grad_(False)
        by_module: dict[str, dict[str, list[TrainEntry]]] = {}
        for entry in plan.entries:
            if entry.dim is None:
                params[entry.name].requires_grad_(True)
            else:
                module_name, _, attr = entry.name.rpartition(".")
                by_module.setdefault(module_name, {}).setdefault(attr, []).append(entry)
        for module_name, attrs in by_module.items():
            module = model.get_submodule(module_name)
            transposed = type(module).__name__ == "Conv1D"  # GPT-2's [in, out] linear layer
            if not (isinstance(module, nn.Linear) or transposed) or set(attrs) - {"weight", "bias"}:
                raise ValueError(
                    f"{module_name}: slices are only supported on nn.Linear / Conv1D weights"
                )
            weight, bias = attrs.get("weight", []), attrs.get("bias", [])
            dims = {e.dim for e in weight}
            if (
                len(dims) > 1
            ):  # pragma: no cover - adapters never mix rows and columns of one tensor
                raise ValueError(f"{module_name}.weight: slices along several dims")
            if any(e.dim != 0 for e in bias):  # pragma: no cover - a bias has one dim
                raise ValueError(f"{module_name}.bias: slices must be along dim 0")
            weight_dim = dims.pop() if dims else None
            holder = SpanDeltas(
                module,
                weight_dim,
                [(e.start, e.stop) for e in weight],
                [(e.start, e.stop) for e in bias],
                transposed=transposed,
            )
            module.register_module(HOLDER, holder)
            self._hooked.append((module, module.register_forward_hook(holder.hook)))
            for attr, dim, spans, deltas in (
                ("weight", weight_dim, holder.weight_spans, holder.weight),
                ("bias", 0, holder.bias_spans, holder.bias),
            ):
                for (a, b), delta in zip(spans, deltas, strict=True):
                    assert dim is not None
                    original = getattr(module, attr)
                    self.deltas.append(
                        DeltaRef(f"{module_name}.{attr}", delta, original, dim, a, b)
                    )
        whole = {e.name for e in plan.entries if e.dim is None}
        scattered: dict[str, dict[str, ScatterEntry]] = {}
        for scatter_entry in plan.scatter.entries if plan.scatter else []:
            module_name, _, attr = scatter_entry.name.rpartition(".")
            if module_name in by_module or scatter_entry.name in whole:
                raise ValueError(
                    f"{scatter_entry.name}: scattered entries cannot share a module with spans "
                    "or a whole trainable parameter"
                )
            scattered.setdefault(module_name, {})[attr] = scatter_entry
        for module_name, attrs in scattered.items():
            self._attach_entries(module_name, attrs)

    def _attach_entries(self, module_name: str, attrs: dict[str, ScatterEntry]) -> None:
        """A `ScatterDeltas` on one nn.Linear / Conv1D for its selected weight / bias entries."""
        attrs = {attr: entry for attr, entry in attrs.items() if len(entry.indices)}
        if not attrs:
            return
        module = self.model.get_submodule(module_name)
        transposed = type(module).__name__ == "Conv1D"
        if not (isinstance(module, nn.Linear) or transposed) or set(attrs) - {"weight", "bias"}:
            raise ValueError(f"{module_name}: entries are only supported on nn.Linear / Conv1D")
        device = module.weight.device
        index = {
            attr: torch.as_tensor(
                attrs[attr].indices if attr in attrs else [], dtype=torch.long
            ).to(device)
            for attr in ("weight", "bias")
        }
        holder = ScatterDeltas(module, index["weight"], index["bias"], transposed=transposed)
        module.register_module(SCATTER_HOLDER, holder)
        self._hooked.append((module, module.register_forward_hook(holder.hook)))
        for attr in attrs:
            original = getattr(module, attr)
            coords = torch.unravel_index(index[attr], original.shape)
            delta = getattr(holder, attr)
            self.deltas.append(EntryRef(f"{module_name}.{attr}", delta, original, coords))

    @torch.no_grad()
    def decay_deltas(self, lr: float, weight_decay: float) -> None:
        """AdamW's decoupled decay on the effective selected weights of matrices (not biases)."""
        if not weight_decay:
            return
        for ref in self.deltas:
            if ref.original.dim() >= 2:
                ref.delta.sub_((ref.base() + ref.delta) * (lr * weight_decay))

    def decay_before_steps(self, optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
        """Run `decay_deltas` before every `optimizer.step()` (a step pre-hook), at the learning
        rate of that step (the scheduler has set it in the param groups; all groups share it).

        A step that a grad scaler skips (fp16, non-finite gradients) skips the decay too, as AdamW
        skips its own. `merge` removes the hook."""

        def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
            self.decay_deltas(opt.param_groups[0]["lr"], weight_decay)

        self._step_hooks.append(optimizer.register_step_pre_hook(hook))

    @torch.no_grad()
    def merge(self) -> None:
        """Write W0[span] + delta (W0[idx] + delta for entries) into the original tensors and
        drop the hooks and deltas."""
        for ref in self.deltas:
            ref.store(ref.base() + ref.delta.detach())
        for module, handle in self._hooked:
            handle.remove()
            delattr(module, HOLDER if hasattr(module, HOLDER) else SCATTER_HOLDER)
        self._hooked.clear()
        for step_hook in self._step_hooks:
            step_hook.remove()
        self._step_hooks.clear()
        self.deltas.clear()
