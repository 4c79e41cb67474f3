"""The experiments (one module each: ``exp_6_1``, ``exp_6_2``, ``validity``, ...; the registry in
``registry``), their runner, results store and analyses."""
from .analysis import comparisons, method_summary, summarise
from .exp_6_2 import margin_analysis
from ..choices import EXPERIMENTS
from .config import RunConfig
from .registry import configure, runner_for, write_outputs
from .runner import Runner
from .store import ResultsStore

__all__ = [
    "EXPERIMENTS",
    "ResultsStore",
    "RunConfig",
    "Runner",
    "runner_for",
    "comparisons",
    "configure",
    "margin_analysis",
    "method_summary",
    "summarise",
    "write_outputs",
]
