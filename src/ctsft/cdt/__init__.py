"""CD-T circuit discovery: mean baseline, contextual decomposition engine, head scores."""

from ctsft.cdt.baseline import discovery_indices, mean_baseline
from ctsft.cdt.engine import CDTEngine, CleanCache, Decomposition
from ctsft.cdt.margin import gold_margin
from ctsft.cdt.rules import CDTOptions
from ctsft.cdt.scores import score_heads, scores_table

__all__ = [
    "CDTEngine",
    "CDTOptions",
    "CleanCache",
    "Decomposition",
    "discovery_indices",
    "gold_margin",
    "mean_baseline",
    "score_heads",
    "scores_table",
]
