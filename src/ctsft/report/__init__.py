"""Aggregation of evaluation metrics into the paper's tables and figures."""

from ctsft.report.figures import build_figures
from ctsft.report.tables import build_tables

__all__ = ["build_figures", "build_tables"]
