"""Do mechanisms transfer? How much a target-language head ranking agrees with the proxy's.

Two numbers per comparison of a target score vector with the proxy's (all of one score kind):

- **Top-k overlap**: `x = |A ∩ B|` of the target's top-k heads B with a proxy set A (the circuit),
  their Jaccard index `x / |A ∪ B|`, and the hypergeometric p-value against chance: if B were k
  heads drawn at random from all N, P(X >= x) = `hypergeom.sf(x - 1, N, |A|, |B|)` (the expected
  overlap is |A| |B| / N, a fraction of a head for a 5% circuit, so any overlap is informative).
- **Spearman's rho** of all N head scores: does the whole ranking carry over, not only its top.

The step (`ctsft.steps.mechanism`) writes these into `mechanism.json`; the table and figure read
those records back (`read_mechanism`). numpy / scipy only, no torch.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import hypergeom

from ctsft.errors import CtsftError
from ctsft.report.stats import spearman as spearman  # re-exported: the comparisons' rho

Head = Sequence[int]
#: Keys every mechanism.json has (the reader checks them).
RECORD_KEYS = ("grid", "k", "n_heads_total", "score_kind", "comparisons")
#: The two models scored on the target: theta_1 (before transfer) and the CT-SFT model (after).
COMPARISONS = ("theta1_target", "ctsft_target")
#: How the table and the figure name them.
COMPARISON_LABELS = {"theta1_target": "theta_1", "ctsft_target": "CT-SFT"}


def hypergeom_p(overlap: int, n_total: int, n_a: int, n_b: int) -> float:
    """P(|A ∩ B| >= overlap) for a uniformly random B of `n_b` of `n_total` heads, |A| = `n_a`."""
    return float(hypergeom.sf(overlap - 1, n_total, n_a, n_b))


def set_overlap(a: Iterable[Head], b: Iterable[Head], n_total: int) -> dict[str, Any]:
    """Overlap count, Jaccard index, chance expectation and hypergeometric p of two head sets."""
    sa, sb = {tuple(h) for h in a}, {tuple(h) for h in b}
    x = len(sa & sb)
    union = len(sa | sb)
    return {
        "overlap": x,
        "size_reference": len(sa),
        "size_top_k": len(sb),
        "jaccard": x / union if union else 1.0,
        "expected_overlap": len(sa) * len(sb) / n_total,
        "p_value": hypergeom_p(x, n_total, len(sa), len(sb)),
        "shared": sorted([list(h) for h in sa & sb]),
    }


def compare(
    reference: np.ndarray,
    scores: np.ndarray,
    top_k: list[list[int]],
    reference_sets: dict[str, list[list[int]]],
    n_examples: int,
) -> dict[str, Any]:
    """One comparison: `scores` (and their `top_k` heads) against the proxy's `reference` scores
    and each named proxy head set (`circuit`, and `proxy_top_k` when the kinds differ)."""
    n_total = int(np.asarray(scores).size)
    return {
        "n_examples": int(n_examples),
        "top_k": top_k,
        "spearman": spearman(reference, scores),
        "overlap": {
            name: set_overlap(heads, top_k, n_total) for name, heads in reference_sets.items()
        },
    }


def read_mechanism(path: str | Path) -> dict[str, Any]:
    """A mechanism.json, checked for the keys and comparisons the table and figure read."""
    path = Path(path)
    advice = "rerun with `snakemake --forcerun mechanism`"  # as ctsft.artifacts.forcerun says it
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise CtsftError(f"mechanism record {path} does not exist: {advice}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CtsftError(f"mechanism record {path} is not valid JSON ({err}): {advice}") from None
    if not isinstance(record, dict):
        raise CtsftError(f"mechanism record {path} is not a JSON object: {advice}")
    missing = [key for key in RECORD_KEYS if key not in record]
    missing += [c for c in COMPARISONS if c not in record.get("comparisons", {})]
    if missing:
        raise CtsftError(f"mechanism record {path} has no {', '.join(missing)}: {advice}")
    return record


def mechanism_rows(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (record, comparison, reference set): the long form of the table."""
    rows = []
    for record in records:
        grid = record["grid"]
        for comparison in COMPARISONS:
            result = record["comparisons"][comparison]
            for reference, ov in result["overlap"].items():
                rows.append(
                    {
                        **{key: grid.get(key) for key in ("task", "model", "proxy", "target")},
                        "variant": grid.get("variant"),
                        "k": grid.get("k"),
                        "seed": grid.get("seed"),
                        "score_kind": record["score_kind"],
                        "comparison": comparison,
                        "reference": reference,
                        "k_heads": record["k"],
                        "n_heads": record["n_heads_total"],
                        "overlap": ov["overlap"],
                        "expected_overlap": ov["expected_overlap"],
                        "jaccard": ov["jaccard"],
                        "p_value": ov["p_value"],
                        "spearman_rho": result["spearman"]["rho"],
                        "spearman_p": result["spearman"]["p_value"],
                        "n_examples": result["n_examples"],
                    }
                )
    return rows
