"""The events modality: a long table of timed codes (EHR events), cut at each sample's index time.

Input: columns ``sample_id`` (or ``patient_id``), ``time``, ``code``[, ``value``, ``segment``]; ``index_time``
(sample -> prediction time; default the sample's latest event) removes later events, which are recorded.
Fitted: the code vocabulary (codes seen fewer than ``min_code_count`` times become unknown = 1) and a mean /
std of the values of each code. One token per event (the most recent ``max_events``), named ``code@time``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..batch import ModalityBatch
from ..files import check_keys
from ..statistics import mean_std
from ..validation import format_ids, indexed_frame, str_id_array, to_days
from .base import (
    Modality,
    ModalityPreprocessor,
    Normalised,
    ReadContext,
    SampleReader,
    pad_tokens,
)
from .events_drift import events_warnings, time_span

_SEQUENCE_FIELDS = {"codes": ((), np.int64), "values": ((), np.float32), "has_value": ((), np.bool_),
                    "times": ((), np.float32), "segments": ((), np.int64)}
"""The per-event arrays of a sample's item (and of the batch tensors): key -> (shape, dtype)."""


def format_days(days: float) -> str:
    """Compact time for event token names: whole days as ``"3"``, else at most 2 decimals (``"0.25"``)."""
    return format_days_many(np.array([days]))[0]


def format_days_many(days: np.ndarray) -> list[str]:
    """:func:`format_days` over an array (one rounding pass; twice as fast on 10^4 events)."""
    return [
        f"{v:.2f}".rstrip("0").rstrip(".") for v in np.round(np.asarray(days, dtype=np.float64), 2).tolist()
    ]


def normalise_events(events: Any) -> pd.DataFrame:
    """Long event table with columns ``sample_id`` (str), ``time`` (float days), ``code`` (str), ``value``
    (float, NaN = none), ``segment`` (int >= 0), sorted by sample then time.

    The sample column may be called ``sample_id`` or ``patient_id``. Datetime (or datetime string) times
    become days since 1970-01-01. ``value`` must be numeric or parse as numbers (NaN/None = no value);
    text values raise: encode them into the code instead (e.g. ``"culture=positive"``).
    """
    if not isinstance(events, pd.DataFrame):
        raise TypeError(
            f"events: expected a long DataFrame (sample_id, time, code[, value, segment]), "
            f"got {type(events).__name__}"
        )
    id_col = next((c for c in ("sample_id", "patient_id") if c in events.columns), None)
    missing = [c for c in ("time", "code") if c not in events.columns]
    if id_col is None:
        missing.insert(0, "sample_id")
    if missing:
        raise ValueError(
            f"events: missing column(s) {missing}; expected sample_id (or patient_id), time, code"
            f"[, value, segment]; found {list(events.columns)}"
        )
    if len(events) == 0:
        raise ValueError("events: the table has no row; pass events=None when there are no events")
    ids = str_id_array(events[id_col].reset_index(drop=True), what="events")
    out = pd.DataFrame({"sample_id": ids})
    out["time"] = to_days(events["time"].reset_index(drop=True), what="events column 'time'")
    bad = out.index[~np.isfinite(out["time"].to_numpy())]
    if len(bad):
        raise ValueError(
            f"events: column 'time' is missing or infinite for {len(bad)} event(s) of sample(s) "
            f"{format_ids(dict.fromkeys(out.loc[bad, 'sample_id']))}; every event needs a time"
        )
    code = events["code"].reset_index(drop=True)
    if code.isna().any():
        rows = out.loc[code.isna(), "sample_id"]
        raise ValueError(
            f"events: column 'code' is missing for {len(rows)} event(s) of sample(s) "
            f"{format_ids(dict.fromkeys(rows))}; every event needs a code"
        )
    out["code"] = code.astype(str).to_numpy()
    if "value" in events.columns:
        raw = events["value"].reset_index(drop=True)
        if pd.api.types.is_bool_dtype(raw):
            raw = raw.astype(float)
        num = pd.to_numeric(raw, errors="coerce")
        bad = raw.notna() & num.isna()
        if bad.any():
            raise ValueError(
                f"events: column 'value' holds {int(bad.sum())} non-numeric value(s) (e.g. "
                f"{raw[bad].iloc[0]!r}, "
                f"sample(s) {format_ids(dict.fromkeys(out.loc[bad, 'sample_id']))}); expected numbers or "
                "NaN. "
                "Encode text values into the code instead"
            )
        num = num.astype(np.float64)
        if np.isinf(num.to_numpy()).any():
            rows = out.loc[np.isinf(num.to_numpy()), "sample_id"]
            raise ValueError(
                f"events: column 'value' is infinite for sample(s) {format_ids(dict.fromkeys(rows))}"
            )
        out["value"] = num.to_numpy()
    else:
        out["value"] = np.nan
    if "segment" in events.columns:
        seg = pd.to_numeric(events["segment"].reset_index(drop=True), errors="coerce")
        bad = seg.isna() | (seg < 0) | (seg != np.floor(seg))
        if bad.any():
            raise ValueError(
                f"events: column 'segment' must hold integers >= 0 (0 = current admission); "
                f"sample(s) {format_ids(dict.fromkeys(out.loc[bad, 'sample_id']))} do not"
            )
        out["segment"] = seg.astype(np.int64).to_numpy()
    else:
        out["segment"] = np.zeros(len(out), dtype=np.int64)
    # group by sample (in order of first appearance), time-sorted within a sample; lexsort is stable and
    # avoids a string sort, which dominates on million-row tables
    codes, _ = pd.factorize(out["sample_id"])
    order = np.lexsort((out["time"].to_numpy(), codes))
    return out.iloc[order].reset_index(drop=True)


def cut_after_index_time(ev: pd.DataFrame, index_time: Any, keep: set[str]) -> Normalised:
    """Drop (and record) events after each sample's index time; the sample's latest event when not given."""
    latest = ev.groupby("sample_id", sort=False)["time"].max()
    t = latest.copy()
    if index_time is not None:
        given = indexed_frame(
            pd.Series(index_time) if isinstance(index_time, Mapping) else index_time, what="index_time"
        )
        if isinstance(given, pd.DataFrame):
            raise TypeError("index_time: expected a Series sample -> time, got a DataFrame")
        unknown = [s for s in given.index if s not in keep]
        if unknown:
            raise ValueError(
                f"index_time: sample(s) {format_ids(unknown)} are not in the cohort; expected "
                "index times only for cohort samples"
            )
        days = pd.Series(to_days(given, what="index_time"), index=given.index).dropna()
        if np.isinf(days.to_numpy()).any():
            raise ValueError(f"index_time: infinite for sample(s) {format_ids(days.index[np.isinf(days)])}")
        t = pd.concat([days, latest[~latest.index.isin(days.index)]])
    codes, uniq = pd.factorize(ev["sample_id"])
    after = ev["time"].to_numpy() > t.reindex(uniq).to_numpy()[codes]
    excluded = []
    if after.any():
        counts = ev.loc[after, "sample_id"].value_counts(sort=False)
        for sid, n in counts.items():
            excluded.append({"what": "events after the index time", "modality": "events", "sample_id": sid,
                             "count": int(n), "reason": f"later than the index time {t[sid]:.4g} days"})
        ev = ev.loc[~after].reset_index(drop=True)
    index = {"index_time": t.astype(np.float64).rename("index_time")}
    return Normalised(ev if len(ev) else None, index, excluded)


def _values(events: pd.DataFrame) -> np.ndarray:
    """The events' values as float64 (NaN = none)."""
    return events["value"].to_numpy(np.float64) if "value" in events else np.full(len(events), np.nan)


class EventsPreprocessor(ModalityPreprocessor):
    """Learns the code vocabulary and per-code value statistics; keeps each sample's most recent events.

    Args:
        min_code_count: event codes seen fewer times than this in training map to the unknown code (1).
        max_events: keep at most this many most recent events per sample (the rest are counted in ``n_cut``).
        event_value_scaling: standardise event values per code with training mean / std.
    """

    params = ("min_code_count", "max_events", "event_value_scaling")

    def __init__(self, *, min_code_count: int = 1, max_events: int = 8192,
                 event_value_scaling: bool = True) -> None:
        if not isinstance(min_code_count, int | np.integer) or min_code_count < 1:
            raise ValueError(f"min_code_count must be an int >= 1, got {min_code_count!r}")
        if not isinstance(max_events, int | np.integer) or max_events < 1:
            raise ValueError(f"max_events must be an int >= 1, got {max_events!r}")
        self.min_code_count = int(min_code_count)
        self.max_events = int(max_events)
        self.event_value_scaling = bool(event_value_scaling)

    def _fit(self, events: pd.DataFrame, cohort: Any) -> None:
        codes = events["code"].astype(str)
        counts = codes.value_counts()
        vocab = [c for c, n in counts.items() if n >= self.min_code_count]
        self.code_vocab_ = sorted(vocab, key=lambda c: (-int(counts[c]), c))  # frequent first, then by name
        self.n_rare_codes_ = int(len(counts) - len(vocab))
        values = _values(events)
        has = np.isfinite(values)
        self.events_have_values_ = bool(has.any())
        self.event_default_stats_ = list(mean_std(values))
        observed = pd.Series(values[has], index=codes.to_numpy()[has])
        observed = observed[observed.index.isin(self.code_vocab_)].groupby(level=0, sort=True)
        means, stds = observed.mean(), observed.std(ddof=0)
        stds = stds.where(stds > 1e-12, 1.0)  # constant (or single-value) codes: std 1, as in mean_std
        self.event_value_stats_ = {str(c): [float(means[c]), float(stds[c])] for c in means.index}
        self.event_time_span_ = time_span(events, getattr(cohort, "index_time", None))

    def transform(self, events: pd.DataFrame, index_time: pd.Series) -> dict[str, dict[str, Any]]:
        """Long event table -> per sample, the most recent ``max_events`` events, most recent first:
        ``codes`` int64, ``values`` float32, ``has_value`` bool, ``times`` float32 (days before the
        sample's ``index_time``), ``segments`` int64, ``code`` (raw codes), ``n_cut`` (events cut)."""
        self._check_fitted()
        # integer ids for samples and codes: sorting and grouping 10^6 events on strings would take seconds
        sample_of, sample_names = pd.factorize(events["sample_id"].astype(str).to_numpy())
        code_of, code_names = pd.factorize(events["code"].astype(str).to_numpy(), sort=True)  # ids by name
        index_time = pd.Series(np.asarray(index_time, dtype=np.float64), index=index_time.index.astype(str))
        unknown = sorted(set(sample_names) - set(index_time.index))
        if unknown:
            raise ValueError(f"events: no index_time for sample(s) {format_ids(unknown)}")
        times = index_time.reindex(sample_names).to_numpy()[sample_of] - events["time"].to_numpy(np.float64)
        late = sorted(sample_names[np.unique(sample_of[times < 0])])
        if late:
            raise ValueError(f"events: sample(s) {format_ids(late)} have events after their index_time "
                             "(the Cohort excludes those; pass a Cohort)")
        unique_codes = pd.Series(code_names)
        vocab = {c: i + 2 for i, c in enumerate(self.code_vocab_)}
        code_idx = unique_codes.map(vocab).fillna(1).to_numpy(dtype=np.int64)[code_of]  # unknown / rare -> 1
        values = _values(events)
        has = np.isfinite(values)
        if self.event_value_scaling:
            mean, std = self.event_default_stats_  # for codes without training values
            means = unique_codes.map({c: m for c, (m, _) in self.event_value_stats_.items()}).fillna(mean)
            stds = unique_codes.map({c: sd for c, (_, sd) in self.event_value_stats_.items()}).fillna(std)
            values = (values - means.to_numpy(np.float64)[code_of]) / stds.to_numpy(np.float64)[code_of]
        values = np.where(has, values, 0.0)
        segments = (events["segment"].to_numpy(dtype=np.int64) if "segment" in events
                    else np.zeros(len(code_of), dtype=np.int64))
        # most recent first, ties broken by code so the order never depends on the input row order
        order = np.lexsort((code_of, times, sample_of))
        out: dict[str, dict[str, Any]] = {}
        bounds = np.flatnonzero(np.diff(sample_of[order])) + 1
        for rows in np.split(order, bounds) if len(order) else []:
            kept = rows[: self.max_events]
            out[str(sample_names[sample_of[rows[0]]])] = {
                "codes": code_idx[kept], "values": values[kept].astype(np.float32), "has_value": has[kept],
                "times": times[kept].astype(np.float32), "segments": segments[kept],
                "code": code_names[code_of[kept]].tolist(), "n_cut": int(len(rows) - len(kept))}
        return out

    def data_warnings(self, events: pd.DataFrame, cohort: Any) -> list[str]:
        return events_warnings(self, events, cohort.index_time)

    def schema(self) -> dict[str, Any]:
        return {
            "vocab": list(self.code_vocab_),
            "max_events": self.max_events,
            "has_values": self.events_have_values_,
        }

    def state(self) -> dict[str, Any]:
        return {"vocab": list(self.code_vocab_), "value_stats": dict(self.event_value_stats_),
                "default_stats": list(self.event_default_stats_), "has_values": self.events_have_values_,
                "n_rare_codes": self.n_rare_codes_,
                **({} if self.event_time_span_ is None else {"time_span": self.event_time_span_})}

    def _load(self, state: dict[str, Any]) -> None:
        self.code_vocab_, self.event_value_stats_ = state["vocab"], state["value_stats"]
        self.event_default_stats_, self.events_have_values_ = state["default_stats"], state["has_values"]
        self.n_rare_codes_, self.event_time_span_ = state["n_rare_codes"], state.get("time_span")


@dataclass
class EventReader(SampleReader):
    """Each sample's events, transformed once for the whole table; token names are built per read."""

    sequences: dict[str, dict[str, Any]]

    def read(self, sample_id: str, index: int, context: ReadContext) -> dict[str, Any] | None:
        if sample_id not in self.sequences:
            return None
        events = dict(self.sequences[sample_id])
        days = format_days_many(events["times"])
        events["names"] = [f"{c}@{t}" for c, t in zip(events["code"], days, strict=True)]
        return events


class EventsModality(Modality):
    """Timed events: one token per event, most recent first (``times`` = days before the index time)."""

    name = "events"
    token_kind = "event"
    preprocessor_class = EventsPreprocessor
    options = ("index_time",)
    noun = "event"
    report_columns = ("time", "code")
    data_keys: ClassVar[dict[str, str]] = {
        "events": "long events table (CSV / Parquet): id column, time, code[, value]",
        "event_columns": "mapping time / code / value -> the events table's column names",
    }
    cut_reason = "all their events were after the index time"
    cut_everything_error = ("events: every sample's events are after its index time and no sample has other "
                            "data; expected index times at or after the events to keep")

    def normalise(self, data: Any, options: Mapping[str, Any]) -> Normalised:
        return Normalised(normalise_events(data), {}, [])

    def attribute_defaults(self) -> dict[str, Any]:
        return {"index_time": pd.Series(dtype=np.float64)}

    def check_options_without_data(self, options: Mapping[str, Any]) -> None:
        if options.get("index_time") is not None:
            raise ValueError("events: index_time given without events")

    def restrict(self, data: pd.DataFrame, options: Mapping[str, Any], keep: set[str]) -> Normalised:
        return cut_after_index_time(data, options.get("index_time"), keep)

    def sample_ids(self, data: pd.DataFrame) -> list[str]:
        return list(pd.unique(data["sample_id"]))

    def subset(self, data: pd.DataFrame, ids: list[str]) -> pd.DataFrame | None:
        ev = data[data["sample_id"].isin(set(ids))].reset_index(drop=True)
        return ev if len(ev) else None

    def subset_attributes(self, attributes: Mapping[str, Any], keep: set[str]) -> dict[str, Any]:
        index_time = attributes["index_time"]
        return {"index_time": index_time[index_time.index.isin(keep)]}

    def sample_slices(self, data: pd.DataFrame) -> dict[str, slice]:
        """Sample -> its rows of the (sample-grouped) event table."""
        sid = data["sample_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        stops = np.r_[starts[1:], len(sid)]
        return {sid[a]: slice(int(a), int(b)) for a, b in zip(starts, stops, strict=True)}

    def summary_lines(self, data: pd.DataFrame, cohort: Any) -> list[str]:
        per = data.groupby("sample_id").size()
        return [(f"  events: {len(data)} events, {data['code'].nunique()} distinct codes, per sample "
                 f"min {per.min()}, median {float(per.median()):g}, max {per.max()}; "
                 f"{int(data['value'].notna().sum())} with a value")]

    def shape(self, data: pd.DataFrame) -> list[int]:
        return list(data.shape)

    def default_encoder(self, schema_entry: Mapping[str, Any]) -> str:
        return "event_transformer"

    def reader(self, data: pd.DataFrame, cohort: Any, preprocessor: EventsPreprocessor) -> EventReader:
        return EventReader(preprocessor.transform(data, cohort.index_time))

    def collate(self, items: Sequence[dict[str, Any] | None], schema_entry: Mapping[str, Any],
                present: torch.Tensor) -> ModalityBatch:
        arrays, mask, texts, lengths = pad_tokens(items, _SEQUENCE_FIELDS, ("names", "code"))
        tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        n_cut = [0 if seq is None else seq["n_cut"] for seq in items]
        tensors["n_cut"] = torch.tensor(n_cut, dtype=torch.int64)
        present = present & torch.tensor([n > 0 for n in lengths], dtype=torch.bool)
        names, codes = texts["names"], texts["code"]
        return ModalityBatch(self.name, torch.from_numpy(mask), present, tensors, names, {"code": codes})

    def token_grids(self, batch: ModalityBatch | None, meta: Mapping[str, Any] | None = None
                    ) -> dict[str, Any]:
        """``time`` (days before the index time; ``meta["time"]`` or ``meta["times"]``) and ``code``."""
        meta = dict(meta or {})
        if batch is not None:
            meta.setdefault("time", batch.tensors.get("times"))
            meta.setdefault("code", batch.meta.get("code"))
        if meta.get("time") is None and meta.get("times") is not None:
            meta["time"] = meta["times"]
        return {key: meta[key] for key in self.report_columns if meta.get(key) is not None}

    # ------------------------------------------------------------------ files
    def check_config(self, spec: Mapping[str, Any]) -> None:
        if "event_columns" in spec:
            check_keys(spec["event_columns"], dict.fromkeys(("time", "code", "value")), "data.event_columns")

    def read_files(self, source: Any) -> dict[str, Any]:
        raw = source.table("events").reset_index()
        rename = {v: k for k, v in (source.spec.get("event_columns") or {}).items()}
        return {"events": raw.rename(columns={**rename, source.id_column: "sample_id"})}

    def write_files(self, data: pd.DataFrame, cohort: Any, folder: Path) -> dict[str, Any]:
        cols = [c for c in ("sample_id", "time", "code", "value", "segment") if c in data.columns]
        data[cols].to_csv(folder / "events.csv", index=False, float_format="%.17g")
        return {"events": "events.csv"}
