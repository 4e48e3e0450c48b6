"""The tidy attention table: its columns, and the rows of one batch's attention records, built in Arrow.

One row per (sample, modality, token, kind, class)::

    sample_id, patient_id, modality, token, kind, target_class, value, raw_value,
    slide_id, position, x, y        (patch rows; NaN / NA elsewhere)
    code, time                      (event rows: raw code, days before the prediction time)

A record contributes one row per real token (``mask`` True) and class. ``value`` is the record's
normalised weight (over the sample's tokens, or over the classes when the record says
``normalised_over="classes"``); ``raw_value`` the unnormalised score. ``modality`` rows list every
modality of the model, an absent one with weight 0: how the attention (or, for PersAM, the output's
magnitude) is shared among the modalities, not what each one changes in the prediction; the kind
``modality_contribution`` (:mod:`.contributions`: exact Shapley values by masking) is that. Class-independent
kinds have ``target_class`` NA.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ...datasets.batch import Batch
from ...datasets.modalities import MODALITY_REGISTRY, get_modality
from ..records import ATTENTION_KINDS, AttentionRecord

COLUMNS: tuple[str, ...] = (
    "sample_id", "patient_id", "modality", "token", "kind", "target_class", "value", "raw_value",
    "slide_id", "position", "x", "y", "code", "time",
)
_NUMBER_COLUMNS = ("value", "raw_value", "position", "x", "y", "time")
ARROW_SCHEMA = pa.schema([(name, pa.float32() if name in _NUMBER_COLUMNS else pa.string())
                          for name in COLUMNS])
# Numbers are stored as float32, the precision the model computes in (patch indices and pixel coordinates
# are exact below 2**24); it halves the bytes the Parquet writer encodes. Frames read back as float64.
STRING_COLUMNS: list[str] = [f.name for f in ARROW_SCHEMA if f.type == pa.string()]
DICTIONARY = pa.dictionary(pa.int32(), pa.string())
# The streamed rows hold their text as dictionary arrays (indices into the batch's ids, token names, kinds),
# built without creating or hashing a string per row, with one dictionary per column for a whole batch so
# that the Parquet writer keeps dictionary pages (slide_id / code are encoded per modality). The file stores
# plain Parquet strings (no Arrow schema is stored), so every reader gets ``ARROW_SCHEMA`` back.
STREAM_SCHEMA = pa.schema([pa.field(f.name, DICTIONARY if f.type == pa.string() else f.type)
                           for f in ARROW_SCHEMA])
def report_kinds() -> list[str]:
    """Every kind a report can hold: the attention kinds, then ``shap``, ``attribution`` (gradients,
    :mod:`.attributions`) and ``modality_contribution`` (exact Shapley values of the modalities,
    :mod:`.contributions`)."""
    return [*ATTENTION_KINDS, "shap", "attribution", "modality_contribution"]


def _np(x: Any) -> np.ndarray:
    """A tensor as numpy: bool stays bool, float32 is not copied, other dtypes become float32."""
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    x = x.detach()
    if x.dtype not in (torch.bool, torch.float32):
        x = x.float()
    return x.cpu().numpy()


class _Strings:
    """``[B][T]`` string grids as flat Arrow arrays (row-major, index ``b * T + t``), converted once a batch.

    Rows are then gathered with Arrow's ``take`` in C++: no Python string object is created per row, which
    is what made large bags (10^4 patches x 6 kinds per sample) slow to report.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bool], tuple[Any, pa.Array]] = {}

    def flat(self, values: Any, n_rows: int, n_cols: int, *, empty_is_null: bool = False) -> pa.Array:
        key = (id(values), empty_is_null)
        if key not in self._cache:
            rows = values.tolist() if isinstance(values, np.ndarray) else values
            flat = (pa.array(rows, type=pa.list_(pa.string())).flatten() if n_rows
                    else pa.array([], pa.string()))
            if len(flat) != n_rows * n_cols:  # the grids come from (possibly user-written) aggregators
                raise ValueError(f"a token grid has {len(flat)} entries, expected [B][T] = "
                                 f"{n_rows} x {n_cols} (pad every row with \"\" to T)")
            if empty_is_null:  # "" marks padding / unknown: report it as missing
                flat = pc.if_else(pc.equal(flat, ""), pa.scalar(None, pa.string()), flat)
            self._cache[key] = (values, flat)  # keep ``values`` alive so that its id stays unique
        return self._cache[key][1]


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.float32), type=pa.float32(), from_pandas=True)  # NaN -> null


def modality_token_columns(record: AttentionRecord, batch: Batch | None, b_idx: np.ndarray, t_idx: np.ndarray,
                           strings: _Strings) -> dict[str, pa.Array]:
    """The record's modality's per-token report columns (``Modality.report_columns``: slide_id, position,
    x, y for patches; code, time for events) at the tokens ``(b_idx, t_idx)``.

    The modality supplies the full ``[B, T]`` grids (``Modality.token_grids``) from the record's own
    ``meta`` or, when the record's tokens are exactly the batch's tokens of that modality (same T), from
    the batch; the rows are gathered here in Arrow (text without a Python string per row). A record over
    tokens of no registered modality ("all") has none.
    """
    if record.modality not in MODALITY_REGISTRY:
        return {}
    source = batch.modalities.get(record.modality) if batch is not None else None
    n_rows, n_cols = record.mask.shape[0], record.mask.shape[1]
    same_tokens = source is not None and source.n_tokens == n_cols
    grids = get_modality(record.modality).token_grids(source if same_tokens else None, record.meta)
    out: dict[str, pa.Array] = {}
    for name, grid in grids.items():
        if isinstance(grid, list):
            out[name] = strings.flat(grid, n_rows, n_cols, empty_is_null=True).take(b_idx * n_cols + t_idx)
        else:
            out[name] = _floats(_np(grid)[b_idx, t_idx])
    return out


def token_column_modalities() -> list[str]:
    """The registered modalities whose tokens have per-token report columns (their tokens are per sample:
    patches, events), in registry order."""
    return [m.name for m in MODALITY_REGISTRY if m.report_columns]


def spatial_modalities() -> list[str]:
    """The modalities whose tokens carry x, y coordinates (what patch exports and GeoJSON read)."""
    return [m.name for m in MODALITY_REGISTRY if {"x", "y"} <= set(m.report_columns)]


def _coded(indices: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """Rows ``dictionary[indices]`` as a dictionary array (no per-row string is built or hashed)."""
    codes = pa.array(np.asarray(indices, dtype=np.int32), pa.int32())
    return pa.DictionaryArray.from_arrays(codes, dictionary)


def _repeat_chunks(array: pa.Array, times: int) -> pa.Array | pa.ChunkedArray:
    """``array`` repeated ``times`` times end to end, as chunks that share its buffers (no copy)."""
    return array if times == 1 else pa.chunked_array([array] * times)


def _codes(values: list[str]) -> tuple[dict[str, int], pa.Array]:
    """The distinct ``values`` in first-seen order: (value -> index, their dictionary array)."""
    unique = list(dict.fromkeys(values))
    return {v: i for i, v in enumerate(unique)}, pa.array(unique, pa.string())


def records_to_table(
    batch: Batch | None,
    records: Sequence[AttentionRecord],
    *,
    sample_ids: Sequence[str] | None = None,
    patient_ids: Sequence[str] | None = None,
    kinds: Iterable[str] | None = None,
    dictionary: bool = False,
) -> pa.Table:
    """Tidy rows (schema :data:`ARROW_SCHEMA`) for the records of one batch, built directly in Arrow.

    Args:
        batch: the batch the records were computed on (ids and structured token columns), or None when
            ``sample_ids`` is given.
        records: the batch's attention records.
        kinds: keep only these kinds (default: all).
        dictionary: text columns as dictionary arrays (schema :data:`STREAM_SCHEMA`, what the Parquet stream
            writes); the rows are the same.
    """
    sample_ids = list(batch.sample_ids if sample_ids is None else sample_ids)
    if patient_ids is None and batch is not None:
        patient_ids = list(batch.patient_ids)
    else:
        patient_ids = list(patient_ids or sample_ids)
    keep = None if kinds is None else set(kinds)
    schema = STREAM_SCHEMA if dictionary else ARROW_SCHEMA
    sid, pid = pa.array(sample_ids, pa.string()), pa.array(patient_ids, pa.string())
    strings = _Strings()
    kept = [r for r in records if keep is None or r.kind in keep]
    if dictionary:
        # One dictionary per text column for the whole batch: the Parquet writer then keeps dictionary
        # pages for the row group (a dictionary that changes between chunks makes it fall back to plain).
        kind_code, kind_dict = _codes([r.kind for r in kept])
        modality_code, modality_dict = _codes([r.modality for r in kept])
        class_code, class_dict = _codes([str(c) for r in kept for c in (r.class_names or [])])
        grids: list[pa.Array] = []
        offsets: dict[int, int] = {}
        start = 0
        for r in kept:
            if id(r.names) not in offsets:
                grid = strings.flat(r.names, *r.mask.shape)
                offsets[id(r.names)] = start
                grids.append(grid)
                start += len(grid)
        token_dict = pa.concat_arrays(grids) if grids else pa.array([], pa.string())

    # The per-token columns (ids, token, slide/position/x/y or code/time) of one modality are the same for
    # every kind and class of that modality: gathered once, then repeated as zero-copy chunks.
    shared: list[tuple[tuple, np.ndarray, dict[str, pa.Array]]] = []

    def per_token(record: AttentionRecord, names: pa.Array, real: np.ndarray) -> dict[str, pa.Array]:
        key = (record.modality, id(record.names), tuple(sorted(record.meta)))
        for have_key, have_real, have_columns in shared:
            if have_key == key and np.array_equal(have_real, real):
                return have_columns
        b_idx, t_idx = np.nonzero(real)
        if dictionary:
            columns = {"sample_id": _coded(b_idx, sid), "patient_id": _coded(b_idx, pid)}
        else:
            columns = {"sample_id": sid.take(b_idx), "patient_id": pid.take(b_idx)}
        flat = b_idx * real.shape[1] + t_idx
        columns["token"] = (_coded(flat + offsets[id(record.names)], token_dict) if dictionary
                            else names.take(flat))
        for name, array in modality_token_columns(record, batch, b_idx, t_idx, strings).items():
            encode = dictionary and pa.types.is_string(array.type)
            columns[name] = pc.dictionary_encode(array) if encode else array
        shared.append((key, real, columns))
        return columns

    tables: list[pa.Table] = []
    for record in kept:
        value, raw, mask = _np(record.value), _np(record.raw), _np(record.mask).astype(bool)
        n_classes = value.shape[1]
        names = strings.flat(record.names, *mask.shape)
        # Modality rows list every modality of the model; an absent one keeps its exact 0 weight.
        real = (pc.not_equal(names, "").to_numpy(zero_copy_only=False).reshape(mask.shape)
                if record.kind == "modality" else mask)
        base = per_token(record, names, real)
        n = len(base["sample_id"])
        n_rows = n * n_classes
        # [B, C, T] -> class-major rows: every per-token column repeats C times, each class holds n rows
        # (boolean selection keeps np.nonzero's row-major order, the order of the per-token columns)
        if record.class_names is None:
            target = pa.nulls(n_rows, schema.field("target_class").type)
        elif dictionary:
            index = np.array([class_code[str(c)] for c in record.class_names], dtype=np.int32)
            target = _coded(np.repeat(index, n), class_dict)
        else:
            target = pa.chunked_array([pa.repeat(pa.scalar(str(c), pa.string()), n)
                                       for c in record.class_names], type=pa.string())
        columns = {
            **{name: _repeat_chunks(array, n_classes) for name, array in base.items()},
            "modality": (_coded(np.full(n_rows, modality_code[record.modality], np.int32), modality_dict)
                         if dictionary else pa.repeat(pa.scalar(record.modality, pa.string()), n_rows)),
            "kind": (_coded(np.full(n_rows, kind_code[record.kind], np.int32), kind_dict) if dictionary
                     else pa.repeat(pa.scalar(record.kind, pa.string()), n_rows)),
            "target_class": target,
            "value": _floats(np.moveaxis(value, 1, 0)[:, real].reshape(-1)),
            "raw_value": _floats(np.moveaxis(raw, 1, 0)[:, real].reshape(-1)),
        }
        tables.append(pa.Table.from_arrays(
            [columns.get(f.name, pa.nulls(n_rows, f.type)) for f in schema], schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def records_to_frame(
    batch: Batch | None,
    records: Sequence[AttentionRecord],
    *,
    sample_ids: Sequence[str] | None = None,
    patient_ids: Sequence[str] | None = None,
    kinds: Iterable[str] | None = None,
) -> pd.DataFrame:
    """Tidy rows (columns :data:`COLUMNS`) for the records of one batch, as a DataFrame.

    Same rows as :func:`records_to_table` (text as object with None for NA, numbers as float with NaN).
    """
    table = records_to_table(batch, records, sample_ids=sample_ids, patient_ids=patient_ids, kinds=kinds)
    return conform_frame(table.to_pandas())


def conform_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Give ``frame`` exactly :data:`COLUMNS`, in order, with stable dtypes (text as object, None = NA)."""
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None if column in STRING_COLUMNS else np.nan
    frame = frame[list(COLUMNS)]
    for column in STRING_COLUMNS:
        if frame[column].dtype != object:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    for column in set(COLUMNS) - set(STRING_COLUMNS):
        if frame[column].dtype != float:
            frame[column] = frame[column].astype(float)
    return frame


def empty_frame() -> pd.DataFrame:
    """A tidy frame without rows."""
    return conform_frame(pd.DataFrame(columns=list(COLUMNS)))
