"""CD-T circuit discovery: mean baseline, contextual decomposition engine, head scores."""

from ctsft.cdt.baseline import discovery_indices, load_mu, mean_baseline, save_mu
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
    "load_mu",
    "mean_baseline",
    "save_mu",
    "score_heads",
    "scores_table",
]
