"""Head scores from decomposed logits: directional (default), CD-T ratio, mean ablation, and its
first-order estimate (attribution patching).

- `directional`: mean over the discovery set of beta[gold] - mean(beta[other labels]): how much
  the head's relevant part pushes the output toward the gold label (signed, CT-SFT's idea; the
  paper's exact formula is not public, this is our documented choice).
- `cdt_ratio`: mean of |beta|_1 / |gamma|_1 over the class logits (CD-T's original, unsigned).
- `ablation`: mean drop of the gold margin logit[gold] - mean(logit[others]) when the head's
  output is replaced by mu (positive = the head helps the gold label).
- `attribution`: gradient of that margin wrt the head's output times (output - mu), summed over
  the real positions and d_head: the first-order estimate of `ablation`, from one forward and one
  backward per batch (`ctsft.cdt.attribution`; the CD-T options play no part in it).

`directional` and `cdt_ratio` decompose on the path of `CDTOptions.path` (`cdt.path`: `fast`, the
cached decomposition, or `reference`, the authors' two-stream walk; docs/cdt_paths.md);
`ablation` and `attribution` do not decompose, so the path changes nothing for them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import torch
from tqdm.auto import tqdm

from ctsft.cdt.attribution import attribution_scores, engine_logits
from ctsft.cdt.engine import CDTEngine
from ctsft.cdt.margin import gold_margin
from ctsft.errors import CtsftError
from ctsft.facts import SCORE_KINDS, TSV_COLUMNS

if TYPE_CHECKING:  # pandas is imported where a table is built: the engine runs without it
    import pandas as pd

ScoreKind = Literal["directional", "cdt_ratio", "ablation", "attribution"]  # facts.SCORE_KINDS


def cdt_ratio(beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """|beta|_1 / |gamma|_1 over the class logits."""
    return beta.abs().sum(-1) / gamma.abs().sum(-1).clamp_min(torch.finfo(gamma.dtype).tiny)


def length_groups(
    batch: dict[str, torch.Tensor], size: int | None
) -> list[dict[str, torch.Tensor]]:
    """Split a padded batch into groups of at most `size` rows of similar length, each trimmed to
    its longest row (right padding only; left-padded batches are split but not trimmed).

    Why: real tokens are often only 30-50% of a padded batch, and every CD-T node is an
    `[S, B, T, ...]` tensor, so padding costs as much as real work; smaller groups also keep the
    elementwise temporaries small enough to stay in cache / be reused by the allocator. Scores are
    per example, so grouping changes nothing but float rounding.
    """
    mask = batch["attention_mask"]
    n_rows, n_pos = mask.shape
    if not size or size >= n_rows and bool(mask.all()):
        return [batch]
    lengths = mask.sum(1)
    right_padded = bool(
        (mask.bool() == (torch.arange(n_pos, device=mask.device) < lengths[:, None])).all()
    )
    out = []
    for rows in torch.argsort(lengths, stable=True).split(size):
        keep = int(lengths[rows].max()) if right_padded else n_pos
        out.append(
            {
                k: v[rows][:, :keep] if v.dim() >= 2 and v.shape[:2] == (n_rows, n_pos) else v[rows]
                for k, v in batch.items()
            }
        )
    return out


def score_heads(
    engine: CDTEngine,
    batches: Iterable[dict[str, torch.Tensor]],
    mu: torch.Tensor,
    kind: ScoreKind = "directional",
    head_batch: int = 12,
    progress: bool = True,
    group_size: int | None = 4,
) -> tuple[torch.Tensor, int]:
    """Scores `[layer, head]` averaged over all examples of `batches`, and the example count.

    Each batch is first split into `length_groups` of `group_size` rows (None: as given). One clean
    forward per group is cached; heads of one layer are decomposed together in groups of
    `head_batch` (stacked along the batch dim), starting from that layer (from the embeddings on
    the `reference` path, `engine.options.path`). `attribution` instead takes one forward and one
    backward of the model per batch as given (no grouping).
    """
    if kind not in SCORE_KINDS:
        raise CtsftError(f"cdt.score must be one of {', '.join(SCORE_KINDS)}, got {kind!r}")
    if kind == "attribution":
        return attribution_scores(engine_logits(engine), engine.adapter, batches, mu, progress)
    geo = engine.geo
    sums = torch.zeros(geo.n_layers, geo.n_heads, dtype=torch.float64, device=engine.device)
    n = 0
    groups = [
        (layer, list(range(h0, min(h0 + head_batch, geo.n_heads))))
        for layer in range(geo.n_layers)
        for h0 in range(0, geo.n_heads, head_batch)
    ]
    batches = [part for batch in batches for part in length_groups(batch, group_size)]
    bar = tqdm(
        total=len(batches) * len(groups), desc=f"{kind} scores", disable=not progress, leave=False
    )
    for batch in batches:
        labels = batch["labels"]
        cache = engine.clean(batch)
        clean_margin = gold_margin(cache.logits, labels)
        for layer, heads in groups:
            if kind == "ablation":
                logits = engine.ablate(cache, [[(layer, h)] for h in heads], mu)
                value = clean_margin - gold_margin(logits, labels)
            else:
                dec = engine.decompose_on_path(batch, [[(layer, h)] for h in heads], mu, cache)
                if kind == "directional":
                    value = gold_margin(dec.beta, labels)
                else:
                    value = cdt_ratio(dec.beta, dec.gamma)
            sums[layer, heads] += value.sum(-1).to(torch.float64)
            bar.update()
        n += labels.shape[0]
    bar.close()
    if n == 0:
        raise CtsftError("no examples to score")
    return (sums / n).to(device="cpu", dtype=torch.float32), n


def scores_table(scores: torch.Tensor, n_examples: int, kind: str) -> pd.DataFrame:
    """Tidy table: one row per head, rank 1 = highest (signed) score, ties broken by (layer, head)."""
    import pandas as pd

    n_layers, n_heads = scores.shape
    df = pd.DataFrame(
        {
            "layer": [layer for layer in range(n_layers) for _ in range(n_heads)],
            "head": [h for _ in range(n_layers) for h in range(n_heads)],
            "score": scores.flatten().tolist(),
        }
    )
    order = df.sort_values(
        ["score", "layer", "head"], ascending=[False, True, True], kind="stable"
    ).index
    df.loc[order, "rank"] = range(1, len(df) + 1)
    df["rank"] = df["rank"].astype(int)
    df["n_examples"] = n_examples
    df["score_kind"] = kind
    return df[TSV_COLUMNS]


def scores_matrix(df: pd.DataFrame) -> torch.Tensor:
    """The `[layer, head]` matrix of a score table."""
    n_layers, n_heads = int(df["layer"].max()) + 1, int(df["head"].max()) + 1
    out = torch.full((n_layers, n_heads), float("nan"))
    out[torch.tensor(df["layer"].values), torch.tensor(df["head"].values)] = torch.tensor(
        df["score"].values, dtype=torch.float32
    )
    return out
