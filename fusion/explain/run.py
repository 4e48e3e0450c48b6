"""``build_report``: run a fitted model over a cohort and collect its attention, in memory or streamed.

``FusionModel.explain`` calls it. Streamed to a ``.parquet`` path, memory stays flat over the cohort and the
file appears only once every batch is written.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .report import AttentionReport
from .stream import ParquetStream
from .table import empty_frame, records_to_frame, records_to_table


def build_report(model: Any, cohort: Any, *, out: str | Path | None = None,
                 kinds: Iterable[str] | None = None, batch_size: int | None = None) -> AttentionReport:
    """Run ``model`` over ``cohort`` and collect its attention.

    With ``out`` (a ``.parquet`` path) rows are streamed to disk batch by batch, so memory stays flat over
    the cohort; the file appears only once every batch is written. ``kinds`` restricts the kinds exported;
    asking for a kind the model does not provide is a ``ValueError``.
    """
    available = list(getattr(model, "attention_kinds", ()))
    aggregator = getattr(model, "aggregator", None)
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        missing = [k for k in kinds if k not in available]
        if missing:
            raise ValueError(f"aggregator {aggregator!r} provides no {missing} attention; "
                             f"it provides {available}")
    if out is not None:
        check_out(out)
    stream = ParquetStream(out) if out is not None else None
    frames: list[pd.DataFrame] = []
    try:
        for batch, records, _ in model.iter_attention(cohort, batch_size=batch_size):
            if stream is not None:
                # Arrow straight to Parquet, in the background while the next batch is computed
                stream.submit(records_to_table, batch, records, kinds=kinds, dictionary=True)
            else:
                frames.append(records_to_frame(batch, records, kinds=kinds))
    except BaseException as exc:
        if stream is not None:
            stream.abort(exc)
        raise
    geometry = slide_geometry(cohort)
    if stream is not None:
        return AttentionReport(path=stream.close(), aggregator=aggregator, geometry=geometry)
    frame = pd.concat(frames, ignore_index=True) if frames else empty_frame()
    return AttentionReport(frame, aggregator=aggregator, geometry=geometry)


def slide_geometry(cohort: Any) -> dict[str, Any]:
    """Slide id -> geometry of the cohort's image slides (empty without images or stated geometry), so
    the exports draw tiles of the true size."""
    images = getattr(cohort, "images", None)
    try:
        return dict(getattr(images, "geometry", None) or {})
    except ValueError:  # a slide id shared by samples with different geometry: exports fall back
        return {}


def check_out(out: str | Path) -> None:
    """``ValueError`` before any work unless ``out`` names a ``.parquet`` file (not a folder): the report is
    streamed as Parquet, which a ``.csv`` name would hide (``AttentionReport.to_csv`` writes CSV)."""
    path = Path(out)
    if path.is_dir():
        raise ValueError(f"explain: out={str(out)!r} is an existing folder; give the path of a .parquet file "
                         "to write, e.g. out='attention.parquet'")
    if path.suffix.lower() != ".parquet":
        raise ValueError(f"explain: out={str(out)!r} must end in .parquet (the report is streamed as "
                         "Parquet); for CSV, call report.to_csv(path) on the returned report")
