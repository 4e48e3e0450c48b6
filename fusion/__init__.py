"""clinfuse.fusion: token types, aggregators (PersAM among them), task heads, FusionModel, explanations, CLI.

Names are imported on first use (PEP 562), so that ``clinfuse --help`` and ``clinfuse --version`` answer at
once instead of importing torch, Lightning and every model first. ``from clinfuse.fusion import X`` works
as usual; the aggregator registry fills itself on its first lookup.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(["AGGREGATORS", "Aggregator", "AggregatorOutput", "create_aggregator",
                     "list_aggregators"], "base"),
    **dict.fromkeys(["ATTENTION_KINDS", "AttentionRecord"], "records"),
    **dict.fromkeys(["ClassificationHead", "CoxHead", "DiscreteTimeHead"], "heads"),
    **dict.fromkeys(["classification_loss", "cox_partial_nll", "discrete_time_nll", "hazards_to_survival",
                     "make_time_bins", "risk_from_survival"], "losses"),
    **dict.fromkeys(["FusionNetwork", "NetworkOutput"], "network"),
    "TokenTypeEmbedding": "token_types",
    **dict.fromkeys(["AttentionReport", "build_report", "attention_shap_agreement"], "explain"),
    "FusionModel": "model",
    **dict.fromkeys(["CVResult", "cross_validate"], "crossval"),
    "survival_metrics": "metrics",
    **dict.fromkeys(["TuneResult", "tune"], "tuning"),
}

__all__ = [
    "AGGREGATORS", "ATTENTION_KINDS", "Aggregator", "AggregatorOutput", "AttentionRecord",
    "AttentionReport", "CVResult", "ClassificationHead", "CoxHead", "DiscreteTimeHead", "FusionModel",
    "FusionNetwork", "NetworkOutput", "TokenTypeEmbedding", "TuneResult", "attention_shap_agreement",
    "build_report", "classification_loss", "cox_partial_nll", "create_aggregator", "cross_validate",
    "discrete_time_nll", "hazards_to_survival", "list_aggregators", "make_time_bins", "risk_from_survival",
    "survival_metrics", "tune",
]
assert sorted(__all__) == sorted(_EXPORTS)  # one list of names, checked at import


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clinfuse.fusion' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
