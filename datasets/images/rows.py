"""``BagRows``: a sample's whole feature bag as a source of float32 row chunks, read on demand.

Prediction needs every patch of a bag, but the projection to tokens is per patch, so the ``[N, D]``
features never have to exist as one array: the image encoder asks for rows ``[start, stop)`` in chunks and
projects each chunk before reading the next. What a chunk costs depends on where the slide lives:

- an in-memory float32 array (an ``np.memmap`` included): a view (no copy);
- other in-memory arrays (float64, float16, ...): one float32 copy of the chunk;
- a ``.npy`` file: the bytes are read with ``readinto`` into a reused buffer, not through a memory map, so
  the file's pages are never mapped into the process and resident memory stays bounded by the chunk
  whatever the bag size;
- an ``.h5`` file: an h5py slice of the chunk's rows (the file stays open while the bag is read);
- a ``.pt`` file: loaded once (the format has no random access), then viewed as an in-memory array;
- any other registered file reader (a LazySlide store's zarr table): the chunk's rows through that reader.

Non-finite values in files raise the ``ValueError`` of :func:`~.readers.finite_float32`, naming the row.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .readers import FILE_READERS, finite_float32, read_error
from .sources import Slide


class _NpyRows:
    """Rows of a 2-D ``.npy`` file (or of the file behind an ``np.memmap``) read with plain file reads."""

    def __init__(self, path: Path, offset: int, shape: tuple[int, ...], dtype: np.dtype, fortran: bool):
        self.path, self.offset, self.dtype = path, int(offset), np.dtype(dtype)
        self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.shape, self.fortran = shape, fortran
        self.checked = False  # file rows are checked for NaN / inf as they are read
        self.buffer: np.ndarray | None = None
        self.handle: Any = None

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.handle is None:
            self.handle = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        n = stop - start
        if self.buffer is None or len(self.buffer) < n:
            self.buffer = np.empty((n, *self.shape[1:]), dtype=self.dtype)
        out = self.buffer[:n]
        self.handle.seek(self.offset + start * self.row_bytes)
        got = self.handle.readinto(memoryview(out.reshape(-1).view(np.uint8)))
        if got != n * self.row_bytes:
            raise OSError(f"short read: {got} of {n * self.row_bytes} bytes at row {start}")
        return out

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class _H5Rows:
    def __init__(self, path: Path, key: str):
        self.path, self.key, self.file = path, key, None
        self.checked = False

    def rows(self, start: int, stop: int) -> np.ndarray:
        if self.file is None:
            import h5py

            self.file = h5py.File(self.path, "r")
        return self.file[self.key][start:stop]

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


class _ArrayRows:
    def __init__(self, array: np.ndarray, checked: bool):
        self.array = array
        self.checked = checked  # in-memory arrays were checked for NaN / inf when the bags were built

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]

    def close(self) -> None:
        pass


class _ReaderRows:
    """Rows read through the file's registered reader (a LazySlide store's zarr table), chunk by chunk."""

    def __init__(self, path: Path, key: str):
        self.path, self.key, self.reader = path, key, FILE_READERS[path.suffix.lower()]
        self.checked = False

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.reader.read(self.path, np.arange(start, stop), False, False, self.key)[0]

    def close(self) -> None:
        pass


def _npy_header(path: Path) -> tuple[int, tuple[int, ...], np.dtype, bool]:
    """(data offset, shape, dtype, Fortran order) of a ``.npy`` file; the map is made, never touched."""
    arr = np.load(path, mmap_mode="r")
    fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
    return int(arr.offset), tuple(arr.shape), arr.dtype, fortran


def _source(sample: str, s: Slide) -> _NpyRows | _H5Rows | _ArrayRows | _ReaderRows | None:
    """A row source for one slide, or None where rows cannot be streamed (tiles, odd layouts)."""
    if s.tiles is not None or s.single or s.skip_cols or len(s.shape) != 1:
        return None
    if s.array is not None:
        return _ArrayRows(s.array, checked=True)
    assert s.path is not None
    suffix = s.path.suffix.lower()
    if suffix == ".npy":
        offset, shape, dtype, fortran = _npy_header(s.path)
        if fortran or len(shape) != 2 or not dtype.isnative or dtype.hasobject:
            return None
        return _NpyRows(s.path, offset, shape, dtype, fortran)
    if suffix in (".h5", ".hdf5"):
        return _H5Rows(s.path, s.key)
    if suffix == ".pt":
        data, _ = FILE_READERS[".pt"].read(s.path, np.arange(s.n), False, False)
        return _ArrayRows(np.asarray(data), checked=False)
    if suffix in FILE_READERS:
        return _ReaderRows(s.path, s.key)
    return None


class BagRows:
    """Every patch of one sample's bag (its slides in order) as float32 row chunks ``[k, D]``.

    Args:
        sample: the sample id (named in errors).
        slides: the sample's slides, as :class:`~.sources.Slide` records.

    Attributes:
        n: the number of patches N; ``dim``: D.
    """

    def __init__(self, sample: str, slides: list[Slide]) -> None:
        self.sample = sample
        self.slides = slides
        self.n = int(sum(s.n for s in slides))
        self.dim = int(slides[0].shape[0])

    @staticmethod
    def supports(slides: list[Slide]) -> bool:
        """Whether these slides can be streamed (feature rows of 1-D patches; no tiles, no single images)."""
        return all(s.tiles is None and not s.single and not s.skip_cols and len(s.shape) == 1
                   and (s.path is None or s.path.suffix.lower() in FILE_READERS) for s in slides)

    def __len__(self) -> int:
        return self.n

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, rows)`` for consecutive chunks of at most ``size`` rows: float32 ``[k, D]`` covering
        patches ``[start, start + k)`` of the bag. A chunk may be a view of a reused buffer: use it before
        asking for the next."""
        if size < 1:
            raise ValueError(f"images: chunk size must be a positive int, got {size!r}")
        offset = 0
        for s in self.slides:
            try:
                source = _source(self.sample, s)
            except Exception as err:  # an unreadable header: name the sample and file
                raise read_error(self.sample, s.path, err) from err
            if source is None:
                raise ValueError(f"images: slide {s.slide_id!r} of sample {self.sample!r} cannot be read "
                                 "in row chunks; expected [N, D] feature rows")
            try:
                for start in range(0, s.n, size):
                    stop = min(start + size, s.n)
                    where = s.path if s.path is not None else f"slide {s.slide_id}"
                    try:
                        raw = source.rows(start, stop)
                    except Exception as err:
                        raise read_error(self.sample, where, err) from err
                    yield offset + start, _as_float32(raw, self.sample, where, start, source.checked)
            finally:
                source.close()
            offset += s.n

    def read(self) -> np.ndarray:
        """The whole bag, float32 ``[N, D]`` (one array; for training and explanation paths)."""
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for start, rows in self.chunks(65536):
            out[start:start + len(rows)] = rows
        return out


def _as_float32(raw: np.ndarray, sample: str, where: Any, start: int, checked: bool) -> np.ndarray:
    raw = np.asarray(raw)
    if raw.dtype.kind == "f" and checked:
        return raw.astype(np.float32, copy=False)  # a view when float32 already
    if raw.dtype.kind == "f":
        return finite_float32(raw, sample, where, np.arange(start, start + len(raw)))
    if raw.dtype.kind in "iub":
        return raw.astype(np.float32)
    raise TypeError(f"images: sample {sample!r} ({where}) has dtype {raw.dtype}; expected numbers")
