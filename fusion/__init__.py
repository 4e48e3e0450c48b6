"""clinfuse.fusion: token types, aggregators, the PersAM head, task heads, FusionModel, explanations, CLI."""

from .base import AGGREGATORS, Aggregator, AggregatorOutput, create_aggregator, list_aggregators
from . import aggregators  # noqa: F401  (registers every aggregator)
from .records import ATTENTION_KINDS, AttentionRecord
from .heads import ClassificationHead, CoxHead, DiscreteTimeHead
from .losses import (classification_loss, cox_partial_nll, discrete_time_nll, hazards_to_survival, make_time_bins,
                     risk_from_survival)
from .network import FusionNetwork, NetworkOutput
from .token_types import TokenTypeEmbedding
from .report import AttentionReport, build_report

__all__ = [
    "AGGREGATORS", "ATTENTION_KINDS", "Aggregator", "AggregatorOutput", "AttentionRecord", "AttentionReport", "build_report",
    "create_aggregator", "list_aggregators",
    "ClassificationHead", "CoxHead", "DiscreteTimeHead", "FusionNetwork", "NetworkOutput", "TokenTypeEmbedding",
    "classification_loss", "cox_partial_nll", "discrete_time_nll", "hazards_to_survival", "make_time_bins",
    "risk_from_survival",
]
from .model import FusionModel
from .crossval import CVResult, cross_validate
__all__ += ["CVResult", "FusionModel", "cross_validate"]
