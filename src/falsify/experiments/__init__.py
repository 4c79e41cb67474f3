"""Experiments 6.1 and 6.2 and the validity study: runners, results store and analyses."""
from .analysis import comparisons, margin_analysis, method_summary, summarise, write_outputs
from .runner import EXPERIMENTS, RunConfig, Runner, runner_for
from .store import ResultsStore

__all__ = [
    "EXPERIMENTS",
    "ResultsStore",
    "RunConfig",
    "Runner",
    "runner_for",
    "comparisons",
    "margin_analysis",
    "method_summary",
    "summarise",
    "write_outputs",
]
