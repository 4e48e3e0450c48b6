"""Explanations of a fitted model: the tidy attention table and what is built on it.

``table`` (records -> rows, the columns), ``stream`` (the atomic, threaded Parquet writer), ``report``
(``AttentionReport``, the query API), ``exporters`` (CSV, Parquet, JSON, AnnData, GeoJSON), ``figures``
(with ``plotting``, ``patch_maps``, ``token_bars``, ``survival_plots``; ``selection`` picks the samples the
CLI draws), ``shap`` (SHAP attributions), ``attributions`` (integrated gradients of every modality, with
``gradients`` and ``tabular_paths``), ``agreement`` (attention vs attribution), ``contributions`` (exact
Shapley values of the modalities, by masking; figure in ``contribution_plot``), ``spread`` (effective number
of tokens, the uniform flag), ``faithfulness`` (metrics against a synthetic cohort's planted truth) and
``run`` (``build_report``: the model over a cohort).
"""

from __future__ import annotations

from .agreement import attention_attribution_agreement
from .attributions import attributions
from .contributions import modality_contributions
from .report import AttentionReport
from .run import build_report
from .shap import attention_shap_agreement, shap_values
from .spread import attention_spread, untrained_null
from .stream import ParquetStream
from .table import ARROW_SCHEMA, COLUMNS, records_to_frame, records_to_table

__all__ = [
    "ARROW_SCHEMA", "COLUMNS", "AttentionReport", "ParquetStream", "attention_attribution_agreement",
    "attention_shap_agreement", "attention_spread", "attributions", "build_report", "modality_contributions",
    "records_to_frame", "records_to_table", "shap_values", "untrained_null",
]
