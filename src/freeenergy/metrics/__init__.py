"""The other pretraining metrics of the paper's Table 1: losses, Hessian trace, neural collapse, geometric complexity."""

from freeenergy.metrics.geometric_complexity import GeometricComplexity, geometric_complexity
from freeenergy.metrics.hessian import TraceEstimate, hessian_trace, hutchinson_trace
from freeenergy.metrics.neural_collapse import cdnv, model_cdnv
from freeenergy.metrics.step import run_metrics

__all__ = [
    "GeometricComplexity",
    "geometric_complexity",
    "TraceEstimate",
    "hessian_trace",
    "hutchinson_trace",
    "cdnv",
    "model_cdnv",
    "run_metrics",
]
