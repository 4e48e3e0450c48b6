"""``ParquetStream``: tidy attention rows appended to one Parquet file batch by batch, atomically.

Building and compressing batch k runs in one background thread while the model computes batch k+1, so
an export of any cohort size costs about one forward pass and holds at most two batches in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...datasets.atomic import atomic_path
from .table import ARROW_SCHEMA, DICTIONARY, STREAM_SCHEMA, STRING_COLUMNS, conform_frame

# Parquet settings for attention tables. Dictionary encoding only for text (the float columns are nearly
# unique, so a dictionary is built and then abandoned for every page); min/max statistics only for
# sample_id, the column readers filter on (a sample's row groups are found without decoding the others;
# statistics on more columns only cost writer time); zstd level 1 compresses better than the default snappy
# at no extra time. Float columns use the BYTE_STREAM_SPLIT encoding (standard Parquet, read by pyarrow,
# DuckDB, Polars, Spark): it groups the bytes of the numbers so that zstd compresses them better.
# benchmarks/README.md ("Design history") has the measurements.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "zstd", "compression_level": 1,
    "use_dictionary": list(STRING_COLUMNS),
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
        """Append one batch's rows (a table from :func:`~.table.records_to_table`, or a tidy frame)."""
        table = rows if isinstance(rows, pa.Table) else pa.Table.from_pandas(
            conform_frame(rows), schema=ARROW_SCHEMA, preserve_index=False)
        if table.schema != STREAM_SCHEMA:  # text -> dictionary (dictionary_encode: cast needs pyarrow >= 16)
            table = pa.Table.from_arrays(
                [pc.dictionary_encode(table.column(f.name)) if f.type == DICTIONARY
                 else table.column(f.name).cast(f.type) for f in STREAM_SCHEMA], schema=STREAM_SCHEMA)
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
        """Finish the file and move it into place; returns its path."""
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
        """Discard the file (and the batch in flight); the caller re-raises ``exc``."""
        with contextlib.suppress(BaseException):  # the batch in flight is discarded with the file
            self._wait()
        self._stop()
        self._writer.close()
        # atomic_path removes the temporary and re-raises ``exc``; the caller raises it itself.
        with contextlib.suppress(type(exc)):
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
