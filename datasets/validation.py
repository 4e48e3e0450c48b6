"""Shared input checks for the data layer: id conversion and checks, time parsing, targets.

Each modality validates its own input in :mod:`clinfuse.datasets.modalities`, with these helpers. Every
check raises ``ValueError`` / ``TypeError`` whose message names the modality, the offending sample id(s) or
column(s) (the first few plus the total count) and what was expected, so that a user can find the bad rows
without a debugger.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

MAX_SHOWN = 5
"""How many offending ids an error message lists before summarising the rest as a count."""


def format_ids(ids: Iterable[Any], limit: int = MAX_SHOWN) -> str:
    """``'a', 'b', 'c'`` or ``'a', 'b', ... (12 in total)`` for error messages."""
    ids = list(ids)
    shown = ", ".join(repr(str(i)) if not isinstance(i, str) else repr(i) for i in ids[:limit])
    if len(ids) > limit:
        return f"{shown}, ... ({len(ids)} in total)"
    return shown


def str_ids(ids: Iterable[Any], *, what: str) -> list[str]:
    """Ids converted to ``str``; a missing id (None/NaN) raises ``ValueError`` naming ``what``."""
    return str_id_array(ids, what=what).tolist()


def str_id_array(ids: Iterable[Any], *, what: str) -> np.ndarray:
    """Ids as an object array of ``str`` (vectorised: event tables have millions of rows)."""
    s = (
        ids
        if isinstance(ids, pd.Series)
        else pd.Series(list(ids) if not isinstance(ids, np.ndarray | pd.Index) else ids, dtype=object)
    )
    missing = s.isna().to_numpy()
    if missing.any():
        raise ValueError(
            f"{what}: {int(missing.sum())} sample id(s) are missing (None/NaN); every row needs a sample id"
        )
    return s.astype(str).to_numpy(dtype=object)


def check_unique(ids: Sequence[str], *, what: str) -> None:
    """Raise ``ValueError`` naming the duplicated ids (after conversion to ``str``)."""
    s = pd.Index(ids)
    if s.has_duplicates:
        dups = list(dict.fromkeys(s[s.duplicated()]))
        raise ValueError(
            f"{what}: duplicated sample id(s) {format_ids(dups)}; expected one entry per sample "
            "(ids are compared as strings, so 1 and '1' are the same sample)"
        )


def indexed_frame(obj: Any, *, what: str) -> pd.DataFrame | pd.Series:
    """A copy of a DataFrame/Series whose index is converted to ``str`` and checked for duplicates."""
    if not isinstance(obj, pd.DataFrame | pd.Series):
        raise TypeError(
            f"{what}: expected a pandas DataFrame/Series indexed by sample id, got {type(obj).__name__}"
        )
    out = obj.copy()
    out.index = pd.Index(str_ids(out.index, what=what), name="sample_id")
    check_unique(list(out.index), what=what)
    return out


def to_days(values: pd.Series, *, what: str) -> np.ndarray:
    """Times as float days: numbers are taken as days; datetimes become days since 1970-01-01 (UTC-naive).

    Strings are parsed as datetimes. Anything else raises ``ValueError`` naming ``what``.
    """
    if pd.api.types.is_bool_dtype(values):
        raise TypeError(f"{what}: expected numbers (days) or datetimes, got booleans")
    if pd.api.types.is_numeric_dtype(values):
        return values.to_numpy(dtype=np.float64)
    if not pd.api.types.is_datetime64_any_dtype(values):
        num = pd.to_numeric(values, errors="coerce")
        if num.notna().sum() == values.notna().sum():  # numbers stored as text ("1.5") are days, not dates
            return num.to_numpy(dtype=np.float64)
    if pd.api.types.is_datetime64_any_dtype(values):
        dt = values
    else:
        try:
            with warnings.catch_warnings():  # "could not infer format": per-element parsing is what we want
                warnings.simplefilter("ignore", UserWarning)
                dt = pd.to_datetime(values)
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"{what}: expected numbers (days) or datetimes, could not parse the values ({err})"
            ) from err
    if getattr(dt.dt, "tz", None) is not None:
        dt = dt.dt.tz_convert("UTC").dt.tz_localize(None)
    ns = dt.to_numpy(dtype="datetime64[ns]")
    out = (ns - np.datetime64("1970-01-01T00:00:00", "ns")) / np.timedelta64(1, "D")
    out = out.astype(np.float64)
    out[np.isnat(ns)] = np.nan
    return out


# ---------------------------------------------------------------------- targets


def normalise_labels(labels: Any) -> pd.Series:
    """Label Series with str index; missing labels raise."""
    if isinstance(labels, pd.DataFrame):
        if labels.shape[1] != 1:
            raise TypeError(
                f"labels: expected a Series indexed by sample id, got a DataFrame with columns "
                f"{list(labels.columns)}"
            )
        labels = labels.iloc[:, 0]
    s = indexed_frame(labels, what="labels")
    bad = s.index[s.isna()]
    if len(bad):
        raise ValueError(
            f"labels: missing (NaN) label for sample(s) {format_ids(bad)}; every sample needs a label "
            "(drop unlabelled samples or leave targets out)"
        )
    s.name = "label"
    return s


def is_structured_survival(survival: Any) -> bool:
    """Whether ``survival`` is a numpy structured array (as scikit-survival's ``Surv.from_arrays`` makes)."""
    return isinstance(survival, np.ndarray) and survival.dtype.names is not None


def structured_survival(survival: np.ndarray, sample_ids: Sequence[str]) -> pd.DataFrame:
    """A structured array ``[N]`` as a ``time``/``event`` frame indexed by ``sample_ids`` (same order).

    The event is the first bool field and the time the first float field, whatever their names (e.g.
    ``("event", "time")`` or ``("Status", "Survival_in_days")``); scikit-survival is not needed.
    """
    names = survival.dtype.names
    kinds = {n: survival.dtype.fields[n][0].kind for n in names}
    event = next((n for n in names if kinds[n] == "b"), None)
    time = next((n for n in names if kinds[n] == "f"), None)
    if event is None or time is None or survival.ndim != 1:
        raise ValueError(f"survival: a structured array needs one dimension, a bool event field and a float "
                         f"time field (as Surv.from_arrays makes); got shape {survival.shape} and fields "
                         f"{ {n: str(survival.dtype.fields[n][0]) for n in names} }")
    if len(survival) != len(sample_ids):
        raise ValueError(
            f"survival: the structured array has {len(survival)} rows but the cohort's data have "
            f"{len(sample_ids)} samples; a structured array carries no sample ids, so its rows must follow "
            "the data's sample order (Cohort(<same data>).sample_ids: the clinical index first). Pass a "
            "DataFrame with 'time' and 'event' indexed by sample id to match by id instead"
        )
    return pd.DataFrame({"time": survival[time], "event": survival[event]},
                        index=pd.Index(list(sample_ids), name="sample_id"))


def normalise_survival(survival: Any, sample_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Survival frame with str index, ``time`` float > 0 and ``event`` int 0/1.

    ``survival``: a DataFrame indexed by sample id with ``time`` and ``event``, or a structured array
    (:func:`structured_survival`) whose rows follow ``sample_ids``, the data's sample order.
    """
    if is_structured_survival(survival):
        if sample_ids is None:
            raise TypeError("survival: a structured array has no sample ids; pass a DataFrame indexed by "
                            "sample id with 'time' and 'event'")
        survival = structured_survival(survival, sample_ids)
    df = indexed_frame(survival, what="survival")
    if isinstance(df, pd.Series) or not {"time", "event"} <= set(df.columns):
        cols = [df.name] if isinstance(df, pd.Series) else list(df.columns)
        raise ValueError(f"survival: expected columns 'time' and 'event', found {cols}")
    time = pd.to_numeric(df["time"], errors="coerce").astype(np.float64)
    bad = df.index[~(np.isfinite(time.to_numpy()) & (time.to_numpy() > 0))]
    if len(bad):
        raise ValueError(
            f"survival: column 'time' must be a finite number > 0; sample(s) {format_ids(bad)} have "
            f"{[df['time'][b] for b in bad[:MAX_SHOWN]]}"
        )
    ev = df["event"]
    evn = pd.to_numeric(ev.astype(float) if pd.api.types.is_bool_dtype(ev) else ev, errors="coerce")
    bad = df.index[~evn.isin([0, 1])]
    if len(bad):
        raise ValueError(
            f"survival: column 'event' must be 0 (censored) or 1 (event seen); sample(s) "
            f"{format_ids(bad)} have {[ev[b] for b in bad[:MAX_SHOWN]]}"
        )
    return pd.DataFrame({"time": time, "event": evn.astype(np.int64)}, index=df.index)
