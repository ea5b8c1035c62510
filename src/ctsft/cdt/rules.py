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


def _add_bias_shares(
    rel: torch.Tensor,
    irrel: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """rel += bias * a / (a + b + eps), irrel += bias * b / (...), in place; `a`, `b` are the
    magnitudes that decide the shares (fresh tensors, overwritten).

    In place on purpose: these rules run on `[S, B, T, d_ffn]` tensors, where every temporary
    costs a pass over memory (and `where` / `masked_fill` are several times slower than arithmetic).
    With eps = 0 the gamma share is 1 - share, so the shares still sum to exactly 1 and a 0/0 share
    goes wholly to gamma (where both parts vanish nothing is relevant).
    """
    denom = torch.add(a, b)
    if eps:
        scale = torch.div(bias, denom.add_(eps), out=denom)  # bias / (a + b + eps)
        return rel.addcmul_(a, scale), irrel.addcmul_(b, scale)
    share = a.div_(denom.clamp_min_(torch.finfo(denom.dtype).tiny))  # 0 where a = b = 0
    rel.addcmul_(share, bias)
    return rel, irrel.addcmul_(share.neg_().add_(1), bias)


def bias_shares(
    rel: torch.Tensor, irrel: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise shares |rel|/(|rel|+|irrel|+eps) and |irrel|/(...) (reference, not on the hot path).

    With eps = 0 a 0/0 share goes wholly to gamma: where both parts vanish nothing is relevant,
    and the shares still sum to exactly 1 (which is what makes the float64 test exact).
    """
    one = torch.ones((), dtype=rel.dtype)
    return _add_bias_shares(
        torch.zeros_like(rel), torch.zeros_like(irrel), rel.abs(), irrel.abs(), one, eps
    )


def split_bias(
    rel: torch.Tensor, irrel: torch.Tensor, bias: torch.Tensor | None, opts: CDTOptions
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add `bias` to the two parts, shared by their magnitudes (reference) or all to gamma (simple).

    Overwrites `rel` and `irrel`: pass freshly computed tensors (matmul outputs).
    """
    if bias is None:
        return rel, irrel
    if opts.convention == "simple":
        return rel, irrel.add_(bias)
    return _add_bias_shares(rel, irrel, rel.abs(), irrel.abs(), bias, opts.bias_eps)


def normalize_rel_irrel(
    beta: torch.Tensor, gamma: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sign-conflict clean-up: where the parts disagree in sign the larger one takes the whole sum.

    Overwrites both inputs (pass fresh tensors). Written with 0/1 float masks instead of `where`
    (which is ~8x slower per element on CPU); beta is reproduced exactly (beta * 1 + total * 0),
    gamma is taken as total - beta, i.e. exact where a part took the whole sum and correct to
    float rounding of the total elsewhere (beta + gamma is what the rules conserve).
    """
    conflict = torch.lt(torch.mul(beta, gamma), 0, out=torch.empty_like(beta))  # 1.0 / 0.0
    beta_takes = beta.abs()
    total = gamma.abs()
    torch.gt(beta_takes, total, out=beta_takes).mul_(conflict)  # conflict and |beta| > |gamma|
    torch.add(beta, gamma, out=total)
    beta.mul_(conflict.neg_().add_(1)).addcmul_(total, beta_takes)  # keep, take the sum, or 0
    return beta, total.sub_(beta)


def layernorm_parts(
    beta: torch.Tensor,
    gamma: torch.Tensor,
    inv_std: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    opts: CDTOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """LayerNorm: variance of the total (`inv_std` = 1/sqrt(var + eps)), each part centred on its own
    mean; the bias is shared by the magnitudes of the *inputs* (which are left untouched)."""
    scale = inv_std * weight  # [1, B, T, D] in the fast path: cheaper than two full-size products
    rel = torch.sub(beta, beta.mean(-1, keepdim=True)).mul_(scale)
    irrel = torch.sub(gamma, gamma.mean(-1, keepdim=True)).mul_(scale)
    if bias is None:
        return rel, irrel
    if opts.convention == "simple":
        return rel, irrel.add_(bias)
    return _add_bias_shares(rel, irrel, beta.abs(), gamma.abs(), bias, opts.bias_eps)
