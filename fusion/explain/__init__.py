"""Explanations of a fitted model: the tidy attention table and what is built on it.

``table`` (records -> rows, the columns), ``stream`` (the atomic, threaded Parquet writer), ``report``
(``AttentionReport``, the query API), ``exporters`` (CSV, Parquet, JSON, AnnData, GeoJSON), ``figures``
(with ``plotting``, ``patch_maps``, ``token_bars``, ``survival_plots``; ``selection`` picks the samples the
CLI draws), ``shap`` (SHAP attributions and their agreement with attention), ``contributions`` (exact
Shapley values of the modalities, by masking; figure in ``contribution_plot``), ``faithfulness`` (metrics
against a synthetic cohort's planted truth) and ``run`` (``build_report``: the model over a cohort).
"""

from __future__ import annotations

from .contributions import modality_contributions
from .report import AttentionReport
from .run import build_report
from .shap import attention_shap_agreement, shap_values
from .stream import ParquetStream
from .table import ARROW_SCHEMA, COLUMNS, records_to_frame, records_to_table

__all__ = [
    "ARROW_SCHEMA", "COLUMNS", "AttentionReport", "ParquetStream", "attention_shap_agreement", "build_report",
    "modality_contributions", "records_to_frame", "records_to_table", "shap_values",
]
