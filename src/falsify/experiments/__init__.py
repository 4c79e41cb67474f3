"""Experiments 6.1 and 6.2: runner, results store and analyses."""
from .analysis import comparisons, margin_analysis, method_summary, summarise, write_outputs
from .runner import EXPERIMENTS, RunConfig, Runner
from .store import ResultsStore

__all__ = [
    "EXPERIMENTS",
    "ResultsStore",
    "RunConfig",
    "Runner",
    "comparisons",
    "margin_analysis",
    "method_summary",
    "summarise",
    "write_outputs",
]
