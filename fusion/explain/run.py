"""``build_report``: run a fitted model over a cohort and collect its attention, in memory or streamed.

``FusionModel.explain`` calls it. Streamed to a ``.parquet`` path, memory stays flat over the cohort and the
file appears only once every batch is written.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .contributions import batch_contributions, check_wide, contribution_frame
from .report import AttentionReport
from .stream import ParquetStream
from .table import empty_frame, records_to_frame, records_to_table


def build_report(model: Any, cohort: Any, *, out: str | Path | None = None,
                 kinds: Iterable[str] | None = None, batch_size: int | None = None,
                 contributions: bool = False) -> AttentionReport:
    """Run ``model`` over ``cohort`` and collect its attention.

    With ``out`` (a ``.parquet`` path) rows are streamed to disk batch by batch, so memory stays flat over
    the cohort; the file appears only once every batch is written. ``kinds`` restricts the kinds exported;
    asking for a kind the model does not provide is a ``ValueError``.

    ``contributions=True`` adds the rows of kind ``modality_contribution`` (exact Shapley values of the
    modalities, base ``"network"``: :func:`.contributions.modality_contributions`) computed in the same pass:
    the 2^M - 1 masked fusion passes of each batch reuse the tokens its encoders made, and the full
    coalition is the prediction itself. They follow the attention rows (in a file, as its last row group);
    the report's ``base_values``, ``outputs`` and ``network_base`` are those of ``modality_contributions``.
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
    done: list = []  # per sample: (sample, patient, players, phi, coalition values), with contributions
    batches = (_batches_with_contributions(model, cohort, batch_size, done) if contributions
               else model.iter_attention(cohort, batch_size=batch_size))
    try:
        for batch, records, _ in batches:
            if stream is not None:
                # Arrow straight to Parquet, in the background while the next batch is computed
                stream.submit(records_to_table, batch, records, kinds=kinds, dictionary=True)
            else:
                frames.append(records_to_frame(batch, records, kinds=kinds))
        if contributions:
            shares = _contribution_rows(model, done)
            if stream is not None:
                stream.submit(lambda: shares)
            else:
                frames.append(shares)
    except BaseException as exc:
        if stream is not None:
            stream.abort(exc)
        raise
    geometry = slide_geometry(cohort)
    if stream is not None:
        report = AttentionReport(path=stream.close(), aggregator=aggregator, geometry=geometry)
    else:
        frame = pd.concat(frames, ignore_index=True) if frames else empty_frame()
        report = AttentionReport(frame, aggregator=aggregator, geometry=geometry)
    if contributions:
        report.base_values = {sample: v[0] for sample, _, _, _, v in done}
        report.outputs = {sample: v[-1] for sample, _, _, _, v in done}
        report.network_base = done[0][4][0] if done else None
    return report


def _batches_with_contributions(model: Any, cohort: Any, batch_size: int | None, done: list) -> Iterator:
    """``model.iter_attention``'s ``(batch, records, None)``, each batch's contributions appended to ``done``
    from the tokens of the forward pass (no second read or encoding of the cohort)."""
    from ...datasets.loading import make_loader
    from ..inference_device import network_on_device

    model._check_cohort(cohort)
    size = int(batch_size or model.batch_size or 16)
    loader = make_loader(cohort, model.preprocessor_, batch_size=size, shuffle=False, train=False,
                         stream=True)
    with network_on_device(model) as (net, device), torch.no_grad():  # the model's accelerator, as predict
        check_wide(net)
        for batch in loader:
            on_device = batch.to(device)
            out = net(on_device)
            done += batch_contributions(model, net, on_device, out.tokens, outputs=out.outputs)
            yield batch, [r.detach() for r in out.records], None


def _contribution_rows(model: Any, done: list) -> pd.DataFrame:
    classes = [str(c) for c in model.classes_] if model.task == "classification" else [None]
    return contribution_frame([(s, p, players, phi, v[0]) for s, p, players, phi, v in done], classes)


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
