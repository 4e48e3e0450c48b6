"""clinfuse.fusion: token types, aggregators, the PersAM head, task heads, FusionModel, explanations, CLI."""

from .base import AGGREGATORS, Aggregator, AggregatorOutput, create_aggregator, list_aggregators
from . import aggregators  # noqa: F401  (registers every aggregator)
from .records import ATTENTION_KINDS, AttentionRecord

__all__ = [
    "AGGREGATORS", "ATTENTION_KINDS", "Aggregator", "AggregatorOutput", "AttentionRecord",
    "create_aggregator", "list_aggregators",
]
