"""What an event table being predicted holds that the model does not use as given, said as warnings: events
cut by ``max_events`` and events far older than anything seen in training (a date typo, another unit)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ..validation import format_ids

FAR_FACTOR = 10.0
"""Events more than this many times the training span (days before the index time) are reported."""


def days_before_index(events: pd.DataFrame, index_time: pd.Series) -> np.ndarray:
    """float64 ``[n_events]``: each event's days before its sample's index time (NaN when unknown)."""
    at = pd.Series(np.asarray(index_time, dtype=np.float64), index=index_time.index.astype(str))
    return at.reindex(events["sample_id"].astype(str)).to_numpy() - events["time"].to_numpy(np.float64)


def time_span(events: pd.DataFrame, index_time: pd.Series | None) -> float | None:
    """The largest days-before-index-time of the training events (None when index times are unknown)."""
    if index_time is None or not len(index_time) or not len(events):
        return None
    days = days_before_index(events, index_time)
    days = days[np.isfinite(days)]
    return float(days.max()) if len(days) else None


def events_warnings(pre: Any, events: pd.DataFrame, index_time: pd.Series) -> list[str]:
    """Warnings about ``events`` for the fitted ``EventsPreprocessor`` ``pre``."""
    out = []
    counts = events.groupby("sample_id", sort=False).size()
    over = counts[counts > pre.max_events]
    if len(over):
        out.append(f"events: sample(s) {format_ids(over.index)} have more than max_events={pre.max_events} "
                   f"events; their {int((over - pre.max_events).sum())} oldest event(s) are not used")
    days = days_before_index(events, index_time)
    span = getattr(pre, "event_time_span_", None)
    if span is None and np.isfinite(days).any():  # a model saved before spans were kept: this cohort's own
        span = float(np.nanpercentile(days, 95))
    if span is None:
        return out
    limit = FAR_FACTOR * max(span, 1.0)
    far = np.nan_to_num(days, nan=0.0) > limit
    if far.any():
        samples = list(dict.fromkeys(events["sample_id"].to_numpy()[far].tolist()))
        out.append(f"events: {int(far.sum())} event(s) of sample(s) {format_ids(samples)} lie up to "
                   f"{np.nanmax(days[far]):.4g} days before the index time, more than {FAR_FACTOR:g} x the "
                   f"training span of {span:.4g} days (a date typo or another time unit?); they are used")
    return out
