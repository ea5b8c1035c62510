"""The CD-T propagation rules on (beta, gamma) pairs, written once for every engine path.

Conventions follow MISSION.md (the authors' released CD_Circuit code) under `reference`;
`simple` hands every bias wholly to gamma (a common simpler CD variant). Each rule keeps the
invariant beta' + gamma' = f(beta + gamma) exactly when `bias_eps` is 0.

Rules are pure functions of whole *nodes* (a matmul's bias split + clean-up + activation, a
residual add + clean-up, a LayerNorm + clean-up), so `NodeRules(compiled=True)` can hand each node
to `torch.compile`, which fuses its 10-25 elementwise passes over `[S, B, T, d_ffn]` tensors into
one loop (these memory-bound passes, not the matmuls, made CD-T slower than an ablation scan).
The eager and compiled paths run the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from ctsft.config_files import group_config
from ctsft.errors import CtsftError

log = logging.getLogger(__name__)

Convention = Literal["reference", "simple"]
CDTPath = Literal["fast", "reference"]
CDT_PATHS = ("fast", "reference")
Activation = Callable[[torch.Tensor], torch.Tensor]
Parts = tuple[torch.Tensor, torch.Tensor]


_CDT = group_config("cdt", "default")


@dataclass(frozen=True)
class CDTOptions:
    """Switchable CD-T conventions; the defaults are those of config/hydra/cdt/default.yaml (the
    authors' released implementation), read from it so that they live in one place.

    `compile`: fuse each node's elementwise rules with `torch.compile` (needs a C++ compiler;
    falls back to eager with a warning). Off in the YAML; the workflow configs turn it on for the
    CD-T steps.

    `path`: how the decomposition scores (`directional`, `cdt_ratio`) decompose: `fast`
    (`CDTEngine.decompose`, totals from the clean cache, so beta + gamma is the clean forward by
    construction) or `reference` (`CDTEngine.decompose_naive`, both parts from the embeddings as in
    the authors' code, including the bias mass its `bias_eps` loses). Ablation and attribution do
    not decompose: the path changes nothing for them.
    """

    convention: Convention = _CDT["convention"]
    frozen_attention: bool = _CDT["frozen_attention"]
    normalize_rel_irrel: bool = _CDT["normalize_rel_irrel"]
    bias_eps: float = float(_CDT["bias_eps"])
    compile: bool = _CDT["compile"]
    path: CDTPath = _CDT["path"]

    def __post_init__(self) -> None:
        if self.convention not in ("reference", "simple"):
            raise ValueError(f"convention must be 'reference' or 'simple', got {self.convention!r}")
        if self.bias_eps < 0:
            raise ValueError("bias_eps must be >= 0")
        if self.path not in CDT_PATHS:  # a user's config value: one line at the step's entry
            raise CtsftError(f"cdt.path must be one of {', '.join(CDT_PATHS)}, got {self.path!r}")


# -- elementwise rules ------------------------------------------------------------------------
def bias_shares(
    rel: torch.Tensor,
    irrel: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor,
    eps: float,
) -> Parts:
    """rel + bias * a / (a + b + eps), irrel + bias * b / (a + b + eps): the bias shared by the
    magnitudes `a`, `b` (the reference rule).

    With eps = 0 the gamma share is 1 - share, so the shares sum to exactly 1 and a 0/0 share goes
    wholly to gamma (where both parts vanish nothing is relevant).
    """
    if eps:
        scale = bias / (a + b + eps)
        return rel + a * scale, irrel + b * scale
    share = a / (a + b).clamp_min(torch.finfo(a.dtype).tiny)
    return rel + share * bias, irrel + (1 - share) * bias


def split_bias(
    rel: torch.Tensor, irrel: torch.Tensor, bias: torch.Tensor | None, simple: bool, eps: float
) -> Parts:
    """Add `bias` to the two parts: shared by their magnitudes (reference) or all to gamma (simple)."""
    if bias is None:
        return rel, irrel
    if simple:
        return rel, irrel + bias
    return bias_shares(rel, irrel, rel.abs(), irrel.abs(), bias, eps)


def clean_up(beta: torch.Tensor, gamma: torch.Tensor) -> Parts:
    """Sign-conflict clean-up: where the parts disagree in sign the larger one takes the whole sum.

    Written with 0/1 masks instead of `where` (several times slower per element on CPU when not
    compiled): beta is kept exactly (beta * 1 + total * 0) and gamma is total - beta.
    """
    total = beta + gamma
    conflict = (beta * gamma < 0).to(beta.dtype)
    takes = (beta.abs() > gamma.abs()).to(beta.dtype) * conflict
    kept = beta * (1 - conflict) + total * takes
    return kept, total - kept


def activation_pair(beta: torch.Tensor, gamma: torch.Tensor, act: Activation) -> Parts:
    """Activation, gamma first: gamma' = f(gamma), beta' = f(beta + gamma) - f(gamma).

    f(beta + gamma) is computed here, not taken from a cache, so beta = 0 gives beta' = 0 exactly.
    """
    g = act(gamma)
    return act(beta + gamma) - g, g


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# Activations the compiled nodes may take by name (a module argument would be guarded by identity,
# one recompilation per layer). Anything else runs eagerly through the model's own module.
ACTIVATIONS: dict[str, Activation] = {
    "gelu": F.gelu,
    "gelu_tanh": gelu_tanh,
    "silu": F.silu,
    "tanh": torch.tanh,
}
_ACTIVATION_TYPES = {
    "GELUActivation": "gelu",
    "GELU": "gelu",
    "GELUTanh": "gelu_tanh",
    "PytorchGELUTanh": "gelu_tanh",
    "SiLUActivation": "silu",
    "SiLU": "silu",
    "Tanh": "tanh",
}


def _activation(act: str | Activation) -> Activation:
    return ACTIVATIONS[act] if isinstance(act, str) else act


def activation_name(fn: Any) -> str | None:
    """The name in `ACTIVATIONS` computing the same function as the model's module `fn`, if any."""
    name = _ACTIVATION_TYPES.get(type(fn).__name__)
    if name == "gelu" and getattr(fn, "act", F.gelu) is not F.gelu:
        return None  # e.g. GELUActivation(use_gelu_python=True): same maths, other rounding
    if name == "gelu" and getattr(fn, "approximate", "none") != "none":
        return "gelu_tanh"
    return name


# -- node rules (the units that get fused) -----------------------------------------------------
def linear_node(
    bw: torch.Tensor,
    other: torch.Tensor,
    bias: torch.Tensor | None,
    from_total: bool,
    simple: bool,
    eps: float,
    clean: bool,
    act: str | Activation | None,
) -> Parts:
    """After a linear map: `bw` = beta W; `other` = gamma W, or (`from_total`) the cached total W,
    in which case gamma W = total W - beta W. Then the bias split, the optional clean-up and the
    optional activation (by name when compiled; a module only eagerly)."""
    gw = other - bw if from_total else other
    beta, gamma = split_bias(bw, gw, bias, simple, eps)
    if clean:
        beta, gamma = clean_up(beta, gamma)
    if act is not None:
        beta, gamma = activation_pair(beta, gamma, _activation(act))
    return beta, gamma


def add_node(
    a_beta: torch.Tensor,
    a_gamma: torch.Tensor,
    b_beta: torch.Tensor,
    b_gamma: torch.Tensor,
    clean: bool,
) -> Parts:
    """Residual add of two pairs, then the optional clean-up."""
    beta, gamma = a_beta + b_beta, a_gamma + b_gamma
    return clean_up(beta, gamma) if clean else (beta, gamma)


def layernorm_node(
    beta: torch.Tensor,
    gamma: torch.Tensor,
    inv_std: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    simple: bool,
    eps: float,
    clean: bool,
) -> Parts:
    """LayerNorm: variance of the total (`inv_std` = 1/sqrt(var + eps)), each part centred on its own
    mean; the bias is shared by the magnitudes of the *inputs*; then the optional clean-up."""
    scale = inv_std * weight
    rel = (beta - beta.mean(-1, keepdim=True)) * scale
    irrel = (gamma - gamma.mean(-1, keepdim=True)) * scale
    if bias is not None:
        if simple:
            irrel = irrel + bias
        else:
            rel, irrel = bias_shares(rel, irrel, beta.abs(), gamma.abs(), bias, eps)
    return clean_up(rel, irrel) if clean else (rel, irrel)


def gated_node(
    gate_beta: torch.Tensor,
    gate_gamma: torch.Tensor,
    up_beta: torch.Tensor,
    up_gamma: torch.Tensor,
    act: str | Activation,
) -> Parts:
    """Gated MLP: act(gate) * up; gamma' = act(gate)_gamma * up_gamma, every term touching beta is
    relevant. `act` by name when compiled; a module only eagerly."""
    fn = _activation(act)
    g_act = fn(gate_gamma)
    b_act = fn(gate_beta + gate_gamma) - g_act
    gamma = g_act * up_gamma
    return (b_act + g_act) * (up_beta + up_gamma) - gamma, gamma


# Nodes with fewer elements run eagerly: fusing them saves little, and their odd shapes (the
# read-out position after pruning, the pooled vector) would each cost another compilation of ~3 s.
FUSE_MIN_NUMEL = 1 << 18


class NodeRules:
    """The node rules, eager or compiled. Compilation happens lazily per node and variant
    (dynamic shapes, so new lengths do not recompile) and falls back to eager, once, with a
    warning if it fails (e.g. no C++ compiler)."""

    def __init__(self, compiled: bool = False) -> None:
        self.compiled = compiled
        self.linear = self._wrap(linear_node)
        self.add = self._wrap(add_node)
        self.layernorm = self._wrap(layernorm_node)
        self.gated = self._wrap(gated_node)

    def _wrap(self, fn: Callable[..., Parts]) -> Callable[..., Parts]:
        if not self.compiled:
            return fn
        import torch._dynamo

        # each node has a few variants (bias / clean-up / activation / shape): more than the default
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        fused = torch.compile(fn, dynamic=True)

        def call(*args: Any) -> Parts:
            if self.compiled and args[0].numel() >= FUSE_MIN_NUMEL:
                try:
                    return fused(*args)
                except Exception as err:  # noqa: BLE001 - any compiler failure: run eagerly
                    log.warning(
                        "torch.compile of the CD-T rules failed (%s: %s); running them eagerly "
                        "(set cdt.compile=false to skip the attempt)",
                        type(err).__name__,
                        str(err).splitlines()[0] if str(err) else "",
                    )
                    self.compiled = False
            return fn(*args)

        return call


_RULES: dict[bool, NodeRules] = {}


def node_rules(compiled: bool) -> NodeRules:
    """One shared `NodeRules` per mode, so compiled kernels are reused by every engine."""
    if compiled not in _RULES:
        _RULES[compiled] = NodeRules(compiled)
    return _RULES[compiled]
