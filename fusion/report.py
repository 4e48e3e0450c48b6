"""``AttentionReport``: the attention of many batches joined with token names into one tidy table.

One row per (sample, modality, token, kind, class), the columns of API.md::

    sample_id, patient_id, modality, token, kind, target_class, value, raw_value,
    slide_id, position, x, y        (patch rows; NaN / NA elsewhere)
    code, time                      (event rows: raw code, days before the prediction time)

``value`` is normalised: for every kind but ``phi`` and ``shap``, the values of one kind for one sample and
class sum to 1 over that sample's real tokens (padding never appears). ``modality`` rows list every modality
of the model, an absent one with weight 0 (and it has no token rows). ``phi`` is normalised over classes.
``raw_value`` keeps the unnormalised score. Class-independent kinds have ``target_class`` NA.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from ..datasets.atomic import atomic_path, write_text_atomic
from ..datasets.batch import Batch
from .records import ATTENTION_KINDS, AttentionRecord

COLUMNS: tuple[str, ...] = (
    "sample_id", "patient_id", "modality", "token", "kind", "target_class", "value", "raw_value",
    "slide_id", "position", "x", "y", "code", "time",
)
ARROW_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("patient_id", pa.string()), ("modality", pa.string()), ("token", pa.string()),
    ("kind", pa.string()), ("target_class", pa.string()), ("value", pa.float32()), ("raw_value", pa.float32()),
    ("slide_id", pa.string()), ("position", pa.float32()), ("x", pa.float32()), ("y", pa.float32()),
    ("code", pa.string()), ("time", pa.float32()),
])
# Numbers are stored as float32, the precision the model computes in (patch indices and pixel coordinates
# are exact below 2**24); it halves the bytes the Parquet writer encodes. Frames read back as float64.
_STRING_COLUMNS = [f.name for f in ARROW_SCHEMA if f.type == pa.string()]
_DICT = pa.dictionary(pa.int32(), pa.string())
# The streamed rows hold their text as dictionary arrays (indices into the batch's ids, token names, kinds),
# built without creating or hashing a string per row, with one dictionary per column for a whole batch so
# that the Parquet writer keeps dictionary pages (slide_id / code are encoded per modality). The file stores
# plain Parquet strings (no Arrow schema is stored), so every reader gets ``ARROW_SCHEMA`` back.
STREAM_SCHEMA = pa.schema([pa.field(f.name, _DICT if f.type == pa.string() else f.type) for f in ARROW_SCHEMA])
REPORT_KINDS: tuple[str, ...] = (*ATTENTION_KINDS, "shap")


def _np(x: Any) -> np.ndarray:
    """A tensor as numpy: bool stays bool, float32 is not copied, other dtypes become float32."""
    if not isinstance(x, torch.Tensor):
        return np.asarray(x)
    x = x.detach()
    if x.dtype not in (torch.bool, torch.float32):
        x = x.float()
    return x.cpu().numpy()


def _grid(values: Any) -> np.ndarray:
    """A ``[B][T]`` list of strings as a 2-D object array (fancy-indexable without a Python loop)."""
    out = np.empty((len(values), len(values[0]) if len(values) else 0), dtype=object)
    out[:] = values
    return out


class _Strings:
    """``[B][T]`` string grids as flat Arrow arrays (row-major, index ``b * T + t``), converted once per batch.

    Rows are then gathered with Arrow's ``take`` in C++: no Python string object is created per row, which
    is what made large bags (10^4 patches x 6 kinds per sample) slow to report.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[int, bool], tuple[Any, pa.Array]] = {}

    def flat(self, values: Any, n_rows: int, n_cols: int, *, empty_is_null: bool = False) -> pa.Array:
        key = (id(values), empty_is_null)
        if key not in self._cache:
            rows = values.tolist() if isinstance(values, np.ndarray) else values
            flat = pa.array(rows, type=pa.list_(pa.string())).flatten() if n_rows else pa.array([], pa.string())
            assert len(flat) == n_rows * n_cols, "token grids must be [B][T], padded with \"\""
            if empty_is_null:  # "" marks padding / unknown: report it as missing
                flat = pc.if_else(pc.equal(flat, ""), pa.scalar(None, pa.string()), flat)
            self._cache[key] = (values, flat)  # keep ``values`` alive so that its id stays unique
        return self._cache[key][1]


def _floats(values: np.ndarray) -> pa.Array:
    return pa.array(np.asarray(values, dtype=np.float32), type=pa.float32(), from_pandas=True)  # NaN -> null


def _token_columns(record: AttentionRecord, batch: Batch | None, b_idx: np.ndarray, t_idx: np.ndarray,
                   strings: _Strings) -> dict[str, pa.Array]:
    """Structured columns (slide_id, position, x, y / code, time) of the selected tokens ``(b_idx, t_idx)``.

    Taken from the record's own ``meta`` when the aggregator filled it, else from the batch when the
    record's tokens are exactly the batch's tokens of that modality (same T); otherwise left empty.
    """
    out: dict[str, pa.Array] = {}
    meta = dict(record.meta)
    source = batch.modalities.get(record.modality) if batch is not None else None
    n_rows, n_cols = record.mask.shape[0], record.mask.shape[1]
    same_tokens = source is not None and source.n_tokens == n_cols
    flat = b_idx * n_cols + t_idx
    if record.modality == "images":
        if same_tokens:
            meta.setdefault("position", source.tensors.get("position"))
            if "coords" in source.tensors:
                meta.setdefault("coords", source.tensors["coords"])
            meta.setdefault("slide_id", source.meta.get("slide_id"))
        if meta.get("coords") is not None and "x" not in meta:
            coords = _np(meta["coords"])
            meta["x"], meta["y"] = coords[..., 0], coords[..., 1]
        for key in ("position", "x", "y"):
            if meta.get(key) is not None:
                out[key] = _floats(_np(meta[key])[b_idx, t_idx])
        if meta.get("slide_id") is not None:
            out["slide_id"] = strings.flat(meta["slide_id"], n_rows, n_cols, empty_is_null=True).take(flat)
    elif record.modality == "events":
        if same_tokens:
            meta.setdefault("time", source.tensors.get("times"))
            meta.setdefault("code", source.meta.get("code"))
        if meta.get("time") is None and meta.get("times") is not None:
            meta["time"] = meta["times"]
        if meta.get("time") is not None:
            out["time"] = _floats(_np(meta["time"])[b_idx, t_idx])
        if meta.get("code") is not None:
            out["code"] = strings.flat(meta["code"], n_rows, n_cols, empty_is_null=True).take(flat)
    return out


def _coded(indices: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """Rows ``dictionary[indices]`` as a dictionary array (no per-row string is built or hashed)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.asarray(indices, dtype=np.int32), pa.int32()), dictionary)


def _repeat_chunks(array: pa.Array, times: int) -> pa.Array | pa.ChunkedArray:
    """``array`` repeated ``times`` times end to end, as chunks that share its buffers (no copy)."""
    return array if times == 1 else pa.chunked_array([array] * times)


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
    patient_ids = list(batch.patient_ids if patient_ids is None and batch is not None else patient_ids or sample_ids)
    keep = None if kinds is None else set(kinds)
    schema = STREAM_SCHEMA if dictionary else ARROW_SCHEMA
    sid, pid = pa.array(sample_ids, pa.string()), pa.array(patient_ids, pa.string())
    strings = _Strings()
    # The per-token columns (ids, token, slide/position/x/y or code/time) of one modality are the same for
    # every kind and class of that modality: gathered once, then repeated as zero-copy chunks.
    shared: list[tuple[tuple, np.ndarray, dict[str, pa.Array]]] = []

    def per_token(record: AttentionRecord, names: pa.Array | None, real: np.ndarray) -> dict[str, pa.Array]:
        key = (record.modality, id(record.names), tuple(sorted(record.meta)))
        if names is not None:  # (phi rows have no token grid: nothing to share)
            for have_key, have_real, have_columns in shared:
                if have_key == key and np.array_equal(have_real, real):
                    return have_columns
        b_idx, t_idx = np.nonzero(real)
        if dictionary:
            columns = {"sample_id": _coded(b_idx, sid), "patient_id": _coded(b_idx, pid)}
        else:
            columns = {"sample_id": sid.take(b_idx), "patient_id": pid.take(b_idx)}
        if names is None:
            columns["token"] = (_coded(np.zeros(len(b_idx), np.int32), token_dict) if dictionary
                                else pa.repeat(pa.scalar("clinical", pa.string()), len(b_idx)))
            return columns
        flat = b_idx * real.shape[1] + t_idx
        columns["token"] = _coded(flat + offsets[id(record.names)], token_dict) if dictionary else names.take(flat)
        for name, array in _token_columns(record, batch, b_idx, t_idx, strings).items():
            columns[name] = pc.dictionary_encode(array) if dictionary and pa.types.is_string(array.type) else array
        shared.append((key, real, columns))
        return columns

    kept = [r for r in records if keep is None or r.kind in keep]
    if dictionary:
        # One dictionary per text column for the whole batch: the Parquet writer then keeps dictionary
        # pages for the row group (a dictionary that changes between chunks makes it fall back to plain).
        def codes(values: list[str]) -> tuple[dict[str, int], pa.Array]:
            unique = list(dict.fromkeys(values))
            return {v: i for i, v in enumerate(unique)}, pa.array(unique, pa.string())

        kind_code, kind_dict = codes([r.kind for r in kept])
        modality_code, modality_dict = codes([r.modality for r in kept])
        class_code, class_dict = codes([str(c) for r in kept for c in (r.class_names or [])])
        grids, offsets, start = [pa.array(["clinical"], pa.string())], {}, 1  # "clinical": the phi rows' token
        for r in kept:
            if r.kind != "phi" and id(r.names) not in offsets:
                grid = strings.flat(r.names, *r.mask.shape)
                offsets[id(r.names)] = start
                grids.append(grid)
                start += len(grid)
        token_dict = pa.concat_arrays(grids)

    tables: list[pa.Table] = []
    for record in kept:
        value, raw, mask = _np(record.value), _np(record.raw), _np(record.mask).astype(bool)
        n_classes = value.shape[1]
        if record.kind == "phi":
            # One row per class with token "clinical"; normalised over the classes, not over tokens.
            names = None
            real = np.zeros((value.shape[0], 1), dtype=bool)
            real[value.sum(axis=(1, 2)) > 0, 0] = True
        else:
            names = strings.flat(record.names, *mask.shape)
            # Modality rows list every modality of the model; an absent one keeps its exact 0 weight.
            real = (pc.not_equal(names, "").to_numpy(zero_copy_only=False).reshape(mask.shape)
                    if record.kind == "modality" else mask)
        base = per_token(record, names, real)
        n = len(base["sample_id"])
        # [B, C, T] -> class-major rows: every per-token column repeats C times, each class holds n rows
        # (boolean selection keeps np.nonzero's row-major order, the order of the per-token columns)
        if record.class_names is None:
            target = pa.nulls(n * n_classes, schema.field("target_class").type)
        elif dictionary:
            index = np.array([class_code[str(c)] for c in record.class_names], dtype=np.int32)
            target = _coded(np.repeat(index, n), class_dict)
        else:
            target = pa.chunked_array([pa.repeat(pa.scalar(str(c), pa.string()), n) for c in record.class_names],
                                      type=pa.string())
        columns = {
            **{name: _repeat_chunks(array, n_classes) for name, array in base.items()},
            "modality": (_coded(np.full(n * n_classes, modality_code[record.modality], np.int32), modality_dict)
                         if dictionary else pa.repeat(pa.scalar(record.modality, pa.string()), n * n_classes)),
            "kind": (_coded(np.full(n * n_classes, kind_code[record.kind], np.int32), kind_dict) if dictionary
                     else pa.repeat(pa.scalar(record.kind, pa.string()), n * n_classes)),
            "target_class": target,
            "value": _floats(np.moveaxis(value, 1, 0)[:, real].reshape(-1)),
            "raw_value": _floats(np.moveaxis(raw, 1, 0)[:, real].reshape(-1)),
        }
        tables.append(pa.Table.from_arrays(
            [columns.get(f.name, pa.nulls(n * n_classes, f.type)) for f in schema], schema=schema))
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
    return _conform(table.to_pandas())


def _conform(frame: pd.DataFrame) -> pd.DataFrame:
    """Give ``frame`` exactly :data:`COLUMNS`, in order, with stable dtypes (text as object, None = NA)."""
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None if column in _STRING_COLUMNS else np.nan
    frame = frame[list(COLUMNS)]
    for column in _STRING_COLUMNS:
        if frame[column].dtype != object:
            frame[column] = frame[column].astype(object).where(frame[column].notna(), None)
    for column in set(COLUMNS) - set(_STRING_COLUMNS):
        if frame[column].dtype != float:
            frame[column] = frame[column].astype(float)
    return frame


# Parquet settings for attention tables. Dictionary encoding only for text (the float columns are nearly
# unique, so a dictionary is built and then abandoned for every page); min/max statistics only for
# sample_id, the column readers filter on (a sample's row groups are found without decoding the others):
# statistics on four more text columns cost a further 15% of the writer's CPU; zstd level 1 compresses
# about 25% better than the default snappy and, with the two settings above, writes faster. Float columns
# use the BYTE_STREAM_SPLIT encoding (standard Parquet, read by pyarrow, DuckDB, Polars, Spark): it groups
# the bytes of the numbers so that zstd compresses them better, and cut the writer's CPU by about a
# quarter with a 15% smaller file on the explain benchmark.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd", "compression_level": 1,
    "use_dictionary": list(_STRING_COLUMNS),
    "use_byte_stream_split": [f.name for f in ARROW_SCHEMA if pa.types.is_floating(f.type)],
    "write_statistics": ["sample_id"],
}


class ParquetStream:
    """Append tidy rows to one Parquet file batch by batch; the file appears only when ``close`` succeeds.

    ``write(rows)`` converts and writes in the calling thread. ``submit(make_rows, *args)`` does the same in
    one background thread (``make_rows(*args)`` builds the rows, then ``write``), so that building and
    compressing batch k overlaps the model's forward pass on batch k+1: Arrow and the Parquet encoder
    release the GIL. At most one batch is in flight: ``submit`` first waits for the previous one (and
    re-raises its error), so memory stays bounded by two batches whatever the cohort size.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        # store_schema=False: the file's text columns read back as plain strings (ARROW_SCHEMA)
        self._writer = pq.ParquetWriter(self._tmp, STREAM_SCHEMA, store_schema=False, **PARQUET_OPTIONS)
        self._pool: Any = None
        self._pending: Any = None
        self.rows = 0

    def write(self, rows: pa.Table | pd.DataFrame) -> None:
        """Append one batch's rows (a table from :func:`records_to_table`, or a tidy frame) as a row group."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(
            _conform(rows), schema=ARROW_SCHEMA, preserve_index=False)
        if table.schema != STREAM_SCHEMA:  # text -> dictionary (dictionary_encode: cast needs pyarrow >= 16)
            table = pa.Table.from_arrays(
                [pc.dictionary_encode(table.column(f.name)) if f.type == _DICT else table.column(f.name).cast(f.type)
                 for f in STREAM_SCHEMA], schema=STREAM_SCHEMA)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def submit(self, make_rows: Callable[..., pa.Table | pd.DataFrame], *args: Any, **kwargs: Any) -> None:
        """Build rows with ``make_rows(*args, **kwargs)`` and ``write`` them in the background thread."""
        from concurrent.futures import ThreadPoolExecutor

        self._wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clinfuse-parquet")
        self._pending = self._pool.submit(lambda: self.write(make_rows(*args, **kwargs)))

    def _wait(self) -> None:
        """Wait for the batch in flight, re-raising its error."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def close(self) -> Path:
        try:
            self._wait()
        except BaseException as exc:
            self.abort(exc)
            raise
        self._stop()
        self._writer.close()
        self._ctx.__exit__(None, None, None)
        return self.path

    def abort(self, exc: BaseException) -> None:
        with contextlib.suppress(BaseException):  # the batch in flight is discarded with the file
            self._wait()
        self._stop()
        self._writer.close()
        # atomic_path removes the temporary and re-raises ``exc``; the caller raises it itself.
        with contextlib.suppress(type(exc)):
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)


class AttentionReport:
    """Per-sample attention in one tidy table (in memory, or backed by a Parquet file for large cohorts).

    Args:
        frame: the tidy table (columns :data:`COLUMNS`), or None with ``path``.
        path: a Parquet file written by ``explain(..., out=path)``; read lazily on first use.
        kinds: the kinds the model provides (for clear errors about kinds that are absent).
        aggregator: the aggregator name, for messages.
    """

    def __init__(self, frame: pd.DataFrame | None = None, *, path: str | Path | None = None,
                 kinds: Iterable[str] = (), aggregator: str | None = None) -> None:
        if frame is None and path is None:
            raise ValueError("AttentionReport needs a frame or the path of a Parquet file written by explain")
        self._frame = None if frame is None else _conform(frame.copy())
        self.path = None if path is None else Path(path)
        self.available_kinds = tuple(kinds)
        self.aggregator = aggregator

    # ----------------------------------------------------------------------------------------- access
    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = _conform(pq.read_table(self.path).to_pandas())
        return self._frame

    def to_frame(self, kinds: Iterable[str] | None = None) -> pd.DataFrame:
        """A copy of the tidy table, optionally only the given kinds."""
        frame = self.frame
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            self._check_kinds(kinds)
            frame = frame[frame["kind"].isin(kinds)]
        return frame.reset_index(drop=True).copy()

    @property
    def kinds(self) -> list[str]:
        """The kinds present in this report."""
        return sorted(self.frame["kind"].dropna().unique().tolist())

    @property
    def sample_ids(self) -> list[str]:
        return list(dict.fromkeys(self.frame["sample_id"].tolist()))

    def _check_kinds(self, kinds: Iterable[str]) -> None:
        unknown = [k for k in kinds if k not in REPORT_KINDS]
        if unknown:
            raise ValueError(f"unknown attention kind(s) {unknown}; kinds are {list(REPORT_KINDS)}")
        present = set(self.kinds)
        absent = [k for k in kinds if k not in present]
        if absent:
            who = f"aggregator {self.aggregator!r}" if self.aggregator else "this model"
            raise ValueError(
                f"{who} provides no {absent} attention (kinds in this report: {sorted(present)}); "
                "choose an aggregator that provides it (see FusionModel.attention_kinds)"
            )

    def modality_weights(self) -> pd.DataFrame:
        """Samples x modalities: the weight of each modality per sample (rows sum to 1; absent = 0)."""
        self._check_kinds(["modality"])
        rows = self.frame[self.frame["kind"] == "modality"]
        table = rows.pivot_table(index="sample_id", columns="token", values="value", aggfunc="sum", sort=False)
        table.columns.name = "modality"
        return table.reindex(self.sample_ids_with("modality")).fillna(0.0)

    def sample_ids_with(self, kind: str) -> list[str]:
        return list(dict.fromkeys(self.frame.loc[self.frame["kind"] == kind, "sample_id"].tolist()))

    def top_tokens(self, sample_id: str, k: int = 10, *, kind: str | None = None,
                   target_class: str | None = None) -> pd.DataFrame:
        """The ``k`` highest-weighted tokens of one sample (per kind; one kind or class if given)."""
        frame = self.frame
        rows = frame[frame["sample_id"] == str(sample_id)]
        if rows.empty:
            raise ValueError(f"sample {sample_id!r} is not in this report ({len(self.sample_ids)} samples)")
        if kind is not None:
            self._check_kinds([kind])
            rows = rows[rows["kind"] == kind]
        if target_class is not None:
            rows = rows[rows["target_class"] == str(target_class)]
        order = rows.assign(_mag=rows["value"].abs()).sort_values(["kind", "target_class", "_mag"],
                                                                    ascending=[True, True, False])
        return order.groupby(["kind", "target_class"], dropna=False, sort=False).head(k).drop(columns="_mag") \
            .reset_index(drop=True)

    # ----------------------------------------------------------------------------------------- export
    def to_csv(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            self.frame.to_csv(tmp, index=False)
        return Path(path)

    def to_parquet(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            pq.write_table(pa.Table.from_pandas(self.frame, schema=ARROW_SCHEMA, preserve_index=False), tmp,
                           **PARQUET_OPTIONS)
        return Path(path)

    def to_json(self, path: str | Path) -> Path:
        """JSON records (one object per row; NA as null)."""
        return write_text_atomic(path, self.frame.to_json(orient="records", indent=None))

    def to_anndata(self):
        """AnnData for scverse users: obs = samples, var = tokens the samples share, one layer per kind/class.

        Shared tokens are the modalities, clinical variables, genes (or gene sets) and, for PersAM's
        ``phi``, the token ``clinical``. Per-sample tokens (patches, events) are not shared; see
        :meth:`to_patch_anndata`. Entries a sample does not have are NaN. ``X`` is left empty.
        """
        import anndata as ad

        frame = self.frame[self.frame["kind"].isin(["modality", "feature", "gene", "phi", "shap"])]
        if frame.empty:
            raise ValueError(f"this report has no shared-token kinds (modality, feature, gene); kinds: {self.kinds}")
        keys = frame["modality"] + "/" + frame["token"]
        frame = frame.assign(_var=keys)
        var = frame.drop_duplicates("_var")[["_var", "modality", "token"]].set_index("_var")
        clash = var["token"].duplicated(keep=False)
        var.index = np.where(clash, var.index, var["token"]).astype(str)
        rename = dict(zip(frame.drop_duplicates("_var")["_var"], var.index))
        obs = pd.DataFrame(index=pd.Index(list(dict.fromkeys(frame["sample_id"])), name="sample_id"))
        patients = frame.drop_duplicates("sample_id").set_index("sample_id")["patient_id"]
        obs["patient_id"] = patients.reindex(obs.index).astype(str).values
        layers = {}
        for (kind, cls), rows in frame.groupby(["kind", frame["target_class"].fillna("")], sort=True):
            name = kind if cls == "" else f"{kind}[{cls}]"
            table = rows.pivot_table(index="sample_id", columns="_var", values="value", aggfunc="sum")
            table = table.rename(columns=rename).reindex(index=obs.index, columns=var.index)
            layers[name] = table.to_numpy(dtype=np.float64)
        var.index.name = "token"
        return ad.AnnData(obs=obs, var=var, layers=layers)

    def to_patch_anndata(self, sample_id: str | None = None) -> dict[str, Any]:
        """One AnnData per (sample, slide) of patch-level attention; coordinates in ``obsm["spatial"]``.

        Keys are ``"sample"`` or ``"sample:slide"``; obs are the patches (by position), one layer per
        patch-level kind and class (``patch``, ``class_wise[c]``, ``exploratory``, ``explanatory[c]``).
        """
        import anndata as ad

        frame = self.frame[(self.frame["modality"] == "images") & self.frame["kind"].isin(
            ["patch", "class_wise", "exploratory", "explanatory", "shap"])]
        if sample_id is not None:
            frame = frame[frame["sample_id"] == str(sample_id)]
        if frame.empty:
            raise ValueError("this report has no patch-level attention" +
                             (f" for sample {sample_id!r}" if sample_id is not None else ""))
        out = {}
        slide = frame["slide_id"].fillna("")
        for (sid, sl), rows in frame.groupby([frame["sample_id"], slide], sort=False):
            patches = rows.drop_duplicates("token").set_index("token")
            obs = pd.DataFrame({"position": patches["position"].values}, index=patches.index.astype(str))
            layers = {}
            for (kind, cls), part in rows.groupby(["kind", rows["target_class"].fillna("")], sort=True):
                name = kind if cls == "" else f"{kind}[{cls}]"
                layers[name] = part.set_index("token")["value"].reindex(obs.index).to_numpy(np.float64)[:, None]
            adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=["attention"]), layers=layers)
            adata.obsm["spatial"] = patches[["x", "y"]].to_numpy(np.float64)
            adata.uns["sample_id"], adata.uns["slide_id"] = sid, sl
            out[sid if sl == "" else f"{sid}:{sl}"] = adata
        return out

    def to_geojson(self, path: str | Path, sample_id: str, *, kind: str = "patch",
                   target_class: str | None = None, slide_id: str | None = None,
                   patch_size: float | None = None, magnification: float | None = None) -> Path:
        """Patch attention of one sample as a GeoJSON FeatureCollection that QuPath imports.

        Each patch becomes a square tile (``objectType: "tile"``) at its ``x, y`` (top-left, level-0 pixels)
        of side ``patch_size`` (default: the smallest spacing between patch coordinates), with the
        attention in ``measurements``. ``magnification`` is stored in the collection's properties.
        """
        self._check_kinds([kind])
        rows = self.frame[(self.frame["sample_id"] == str(sample_id)) & (self.frame["kind"] == kind)
                          & (self.frame["modality"] == "images")]
        if target_class is not None:
            rows = rows[rows["target_class"] == str(target_class)]
        elif rows["target_class"].notna().any():
            classes = sorted(rows["target_class"].dropna().unique())
            raise ValueError(f"kind {kind!r} is per class: pass target_class= one of {classes}")
        if slide_id is not None:
            rows = rows[rows["slide_id"] == str(slide_id)]
        if rows.empty:
            raise ValueError(f"no {kind!r} patch attention for sample {sample_id!r}")
        if rows[["x", "y"]].isna().any().any():
            raise ValueError(f"sample {sample_id!r}: patches have no coordinates; GeoJSON needs x, y")
        xy = rows[["x", "y"]].to_numpy(float)
        size = float(patch_size) if patch_size else _grid_spacing(xy)
        features = []
        for (x, y), token, value, raw, sl in zip(xy, rows["token"], rows["value"], rows["raw_value"],
                                                 rows["slide_id"].fillna("")):
            ring = [[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]
            features.append({
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "tile", "name": str(token), "slide_id": str(sl),
                               "measurements": {f"attention_{kind}": float(value),
                                                f"raw_{kind}": None if pd.isna(raw) else float(raw)}},
            })
        collection = {"type": "FeatureCollection", "features": features,
                      "properties": {"sample_id": str(sample_id), "kind": kind, "target_class": target_class,
                                     "patch_size": size, "magnification": magnification}}
        return write_text_atomic(path, json.dumps(collection))


    # ----------------------------------------------------------------------------------------- figures
    def plot_patches(self, sample_id: str, **kwargs: Any):
        """Patch attention heatmap on the coordinates (see :func:`figures.plot_patch_attention`)."""
        from .figures import plot_patch_attention

        return plot_patch_attention(self, sample_id, **kwargs)

    def plot_image(self, sample_id: str, image: np.ndarray, **kwargs: Any):
        """Attention over a single image's sub-patches (see :func:`figures.plot_image_attention`)."""
        from .figures import plot_image_attention

        return plot_image_attention(self, sample_id, image, **kwargs)

    def plot_persam(self, sample_id: str, **kwargs: Any):
        """Class-wise, exploratory and explanatory attention side by side (PersAM models)."""
        from .figures import plot_persam_trio

        return plot_persam_trio(self, sample_id, **kwargs)

    def plot_modality_weights(self, **kwargs: Any):
        from .figures import plot_modality_weights

        return plot_modality_weights(self, **kwargs)

    def plot_top_tokens(self, sample_id: str, **kwargs: Any):
        from .figures import plot_top_tokens

        return plot_top_tokens(self, sample_id, **kwargs)


def _grid_spacing(xy: np.ndarray) -> float:
    steps = [np.diff(np.unique(xy[:, i])) for i in range(2)]
    steps = np.concatenate([s[s > 0] for s in steps])
    return float(steps.min()) if len(steps) else 1.0


def build_report(model: Any, cohort: Any, *, out: str | Path | None = None,
                 kinds: Iterable[str] | None = None, batch_size: int | None = None) -> AttentionReport:
    """Run ``model`` over ``cohort`` and collect its attention (``FusionModel.explain`` calls this).

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
            raise ValueError(f"aggregator {aggregator!r} provides no {missing} attention; it provides {available}")
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
    if stream is not None:
        return AttentionReport(path=stream.close(), kinds=available, aggregator=aggregator)
    frame = pd.concat(frames, ignore_index=True) if frames else _conform(pd.DataFrame(columns=list(COLUMNS)))
    return AttentionReport(frame, kinds=available, aggregator=aggregator)
