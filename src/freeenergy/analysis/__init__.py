"""Records → one table (``summary.csv``) → correlations with bootstrap intervals → figures."""

from freeenergy.analysis.report import AnalysisOutputs, run_analysis
from freeenergy.analysis.table import SUMMARY_COLUMNS, build_summary

__all__ = ["AnalysisOutputs", "SUMMARY_COLUMNS", "build_summary", "run_analysis"]
