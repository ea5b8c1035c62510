"""The CD-T propagation rules on (beta, gamma) pairs, written once for both engine paths.

Conventions follow MISSION.md (the authors' released CD_Circuit code) under `reference`;
`simple` hands every bias wholly to gamma (a common simpler CD variant). Each rule keeps the
invariant beta' + gamma' = f(beta + gamma) exactly when `bias_eps` is 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Convention = Literal["reference", "simple"]


@dataclass(frozen=True)
class CDTOptions:
    """Switchable CD-T conventions (defaults = the authors' released implementation)."""

    convention: Convention = "reference"
    frozen_attention: bool = False
    normalize_rel_irrel: bool = True
    bias_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.convention not in ("reference", "simple"):
            raise ValueError(f"convention must be 'reference' or 'simple', got {self.convention!r}")
        if self.bias_eps < 0:
            raise ValueError("bias_eps must be >= 0")


def bias_shares(rel: torch.Tensor, irrel: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise shares |rel|/(|rel|+|irrel|+eps) and |irrel|/(...).

    With eps = 0 a 0/0 share goes wholly to gamma: where both parts vanish nothing is relevant,
    and the shares still sum to exactly 1 (which is what makes the float64 test exact).
    """
    a, b = rel.abs(), irrel.abs()
    denom = a + b
    if eps:
        denom = denom + eps
        return a / denom, b / denom
    zero = denom == 0
    denom = denom.masked_fill(zero, 1.0)
    share_rel = a / denom
    return share_rel, (b / denom).masked_fill(zero, 1.0)


def split_bias(
    rel: torch.Tensor, irrel: torch.Tensor, bias: torch.Tensor | None, opts: CDTOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add `bias` to the two parts, shared by their magnitudes (reference) or all to gamma (simple)."""
    if bias is None:
        return rel, irrel
    if opts.convention == "simple":
        return rel, irrel + bias
    share_rel, share_irrel = bias_shares(rel, irrel, opts.bias_eps)
    return rel + bias * share_rel, irrel + bias * share_irrel


def normalize_rel_irrel(beta: torch.Tensor, gamma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-conflict clean-up: where the parts disagree in sign the larger one takes the whole sum."""
    conflict = (beta * gamma) < 0
    total = beta + gamma
    beta_wins = beta.abs() > gamma.abs()
    new_beta = torch.where(conflict, torch.where(beta_wins, total, torch.zeros_like(total)), beta)
    new_gamma = torch.where(conflict, torch.where(beta_wins, torch.zeros_like(total), total), gamma)
    return new_beta, new_gamma


def layernorm_parts(
    beta: torch.Tensor,
    gamma: torch.Tensor,
    inv_std: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    opts: CDTOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm: variance of the total (`inv_std` = 1/sqrt(var + eps)), each part centred on its own
    mean; the bias is shared by the magnitudes of the *inputs*."""
    rel = (beta - beta.mean(-1, keepdim=True)) * inv_std * weight
    irrel = (gamma - gamma.mean(-1, keepdim=True)) * inv_std * weight
    if bias is None:
        return rel, irrel
    if opts.convention == "simple":
        return rel, irrel + bias
    share_rel, share_irrel = bias_shares(beta, gamma, opts.bias_eps)
    return rel + bias * share_rel, irrel + bias * share_irrel
