"""clinfuse.fusion: token types, aggregators, the PersAM head, task heads, FusionModel, explanations, CLI."""

from .base import AGGREGATORS, Aggregator, AggregatorOutput, create_aggregator, list_aggregators
from . import aggregators  # noqa: F401  (registers every aggregator)
from .records import ATTENTION_KINDS, AttentionRecord
from .report import AttentionReport, build_report

__all__ = [
    "AGGREGATORS", "ATTENTION_KINDS", "Aggregator", "AggregatorOutput", "AttentionRecord", "AttentionReport", "build_report",
    "create_aggregator", "list_aggregators",
]
