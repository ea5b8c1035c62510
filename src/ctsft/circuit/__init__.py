"""Circuit selection (top-k, NearZero, random), score heatmaps and the faithfulness report."""

from ctsft.circuit.selection import resolve_k, select_heads

__all__ = ["resolve_k", "select_heads"]
