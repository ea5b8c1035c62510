"""Contextual decomposition (CD-T) of a transformer's class logits, written once against the adapter.

Why one engine with several passes: the fast path must not drift from the reference, so every
mode walks the same layers (`ctsft.cdt.passes._Pass`) over the same node rules
(`ctsft.cdt.rules`); a mode only chooses what flows and where the totals come from.

- `clean`: the ordinary forward (totals only), caching every node's total (pre-bias matmul
  outputs, norm scales, attention probabilities, per-head outputs z, the residual stream entering
  every layer) under `ctsft.cdt.passes.cache_key` names such as `"0.z"`.
- `decompose_naive`: the straightforward two-stream (beta, gamma) decomposition from the
  embeddings, every total recomputed from beta + gamma (the reference path).
- `decompose`: many source sets stacked along a leading dim, starting at the earliest source
  layer from the cache. Because beta + gamma is the real activation at every node, the gamma part
  of a linear map is (cached total) W - beta W (one matmul per node instead of two), P_total and
  z_total come from the cache (z_gamma = z_total - z_beta), and after the last layer's keys and
  values only the read-out position is propagated.
- `ablate`: class logits with head sets replaced by mu, a totals-only forward from the cache.

`decompose_on_path` is what the scores call: `decompose` or `decompose_naive` as
`CDTOptions.path` (`cdt.path`) asks; docs/cdt_paths.md compares the two.

Tensors carry a leading source dim: `[S, batch, pos, ...]` (the cache has S = 1 and broadcasts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ctsft.adapters import ArchAdapter, LayerParts, get_adapter
from ctsft.cdt.passes import AblatePass, CleanPass, DecomposePass, NaivePass
from ctsft.cdt.rules import CDTOptions

Source = (
    tuple[int, int] | tuple[int, int, int | None]
)  # (layer, head[, position]); None: all positions


@dataclass
class CleanCache:
    """Totals of one clean forward over a batch (leading dim 1), reused by every source set."""

    tensors: dict[str, torch.Tensor]  # by `ctsft.cdt.passes.cache_key`, e.g. "0.z" [1, B, T, H, dh]
    attention_mask: torch.Tensor  # [B, T]
    readout: torch.Tensor  # [B] read-out position
    logits: torch.Tensor  # [B, n_labels]
    hidden: list[torch.Tensor]  # layer outputs [B, T, D]


@dataclass
class Decomposition:
    """Decomposed class logits `[S, B, n_labels]`; `logits` are the clean totals `[B, n_labels]`.

    `layers`: per layer, (beta, gamma) of its output `[S, B, T, D]` when recorded, else None
    (`decompose`: one entry per layer, None below the earliest source; `decompose_naive`: empty
    unless recorded)."""

    beta: torch.Tensor
    gamma: torch.Tensor
    logits: torch.Tensor
    layers: list[tuple[torch.Tensor, torch.Tensor] | None] = field(default_factory=list)


class CDTEngine:
    """CD-T over a Hugging Face model through its architecture adapter.

    `kind` is `encoder` (BERT classifier: position 0 -> pooler -> tanh -> classifier) or `causal`
    (final norm -> unembedding rows `label_ids` at the last real position).
    """

    def __init__(
        self,
        hf_model: nn.Module,
        kind: str,
        label_ids: Sequence[int] | None = None,
        options: CDTOptions | None = None,
        adapter: ArchAdapter | None = None,
    ) -> None:
        if kind not in ("encoder", "causal"):
            raise ValueError(f"kind must be 'encoder' or 'causal', got {kind!r}")
        self.hf = hf_model
        self.kind = kind
        self.adapter = adapter or get_adapter(hf_model)
        self.options = options or CDTOptions()
        self.geo = self.adapter.geometry
        self.device = next(hf_model.parameters()).device  # every tensor of a pass lives here
        self.parts: list[LayerParts] = self.adapter.layers()
        self.label_ids: list[int] = list(label_ids or []) if kind == "causal" else []
        if kind == "encoder":
            self.pooler, self.pooler_act, self.classifier = self.adapter.classifier_head()
        else:
            if not label_ids:
                raise ValueError("a causal model needs label_ids")
            head = hf_model.lm_head
            ids = torch.tensor(list(label_ids), device=head.weight.device)
            self.unembed_w = head.weight.detach()[ids]
            self.unembed_b = None if head.bias is None else head.bias.detach()[ids]
            self.final_norm = self.adapter.final_norm()

    @classmethod
    def from_task_model(cls, task_model: nn.Module, options: CDTOptions | None = None) -> CDTEngine:
        return cls(
            task_model.hf, task_model.kind, task_model.label_ids, options, task_model.adapter
        )

    @torch.inference_mode()
    def clean(self, batch: dict[str, torch.Tensor]) -> CleanCache:
        """One ordinary forward caching every node's total."""
        run = CleanPass(self, batch)
        logits, hidden = run.run()
        return CleanCache(run.tensors, run.attention_mask, run.readout_pos, logits, hidden)

    @torch.inference_mode()
    def decompose(
        self,
        batch: dict[str, torch.Tensor],
        source_sets: Sequence[Sequence[Source]],
        mu: torch.Tensor,
        cache: CleanCache | None = None,
        record_layers: bool = False,
    ) -> Decomposition:
        """Fast path: all `source_sets` at once (stacked), starting from the cached totals.

        `mu`: `[layer, head, d_head]` or per position `[layer, pos, head, d_head]`.
        """
        cache = cache or self.clean(batch)
        beta, gamma, layers = DecomposePass(self, cache, record_layers).run(source_sets, mu)
        return Decomposition(beta, gamma, cache.logits, layers)

    @torch.inference_mode()
    def decompose_naive(
        self,
        batch: dict[str, torch.Tensor],
        source_sets: Sequence[Sequence[Source]],
        mu: torch.Tensor,
        record_layers: bool = False,
    ) -> Decomposition:
        """Reference path: explicit two-stream propagation from the embeddings, no cache."""
        beta, gamma, layers = NaivePass(self, batch, record_layers).run(source_sets, mu)
        return Decomposition(beta, gamma, (beta + gamma)[0], layers)

    def decompose_on_path(
        self,
        batch: dict[str, torch.Tensor],
        source_sets: Sequence[Sequence[Source]],
        mu: torch.Tensor,
        cache: CleanCache | None = None,
    ) -> Decomposition:
        """The decomposition `options.path` names: `fast` is `decompose` (from `cache`), `reference`
        is `decompose_naive` (the authors' two-stream walk; it ignores the cache)."""
        if self.options.path == "reference":
            return self.decompose_naive(batch, source_sets, mu)
        return self.decompose(batch, source_sets, mu, cache=cache)

    @torch.inference_mode()
    def ablate(
        self,
        cache: CleanCache,
        heads: Sequence[Sequence[tuple[int, int]]],
        mu: torch.Tensor,
    ) -> torch.Tensor:
        """Class logits `[S, B, n_labels]` with each head set replaced by mu (cached-prefix forward)."""
        return AblatePass(self, cache).run(heads, mu)
