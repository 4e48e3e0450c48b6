"""Readers of the patch-bag file formats: one class per format, which reads a file's shape and its rows.

Construction asks a reader for the shape only (``probe``): ``.npy`` files are memory-mapped (the header is
parsed), ``.h5`` files are opened for the dataset shape, tile images for their size. ``.pt`` files have no
header, so the probe loads them once and keeps only their (small) coordinates. ``read`` then fetches the
rows one sample needs, so a cohort larger than memory still trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURE_SUFFIXES = (".npy", ".pt", ".h5", ".hdf5", ".zarr")  # .zarr: a LazySlide store (a folder)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def read_error(sample: str, path: object, err: BaseException) -> ValueError:
    """The ``ValueError`` that names the sample and file a reader failed on."""
    return ValueError(f"images: cannot read {str(path)!r} for sample {sample!r}: {type(err).__name__}: {err}")


def as_array(x: object) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch for arrays
        x = x.detach().cpu().numpy()
    return np.asarray(x)


@dataclass
class FileInfo:
    """What a probe learns: the array shape, and coordinates when the file holds them."""

    shape: tuple[int, ...]
    coords: np.ndarray | None = None  # kept in memory (only .pt files: they must be loaded to be probed)


class BagFile:
    """A file format of patch arrays. ``probe`` reads the shape, ``read`` the rows ``rows`` (sorted,
    unique)."""

    def probe(self, path: Path) -> tuple[FileInfo, np.dtype]:
        raise NotImplementedError

    def read(
        self, path: Path, rows: np.ndarray, single: bool, coords: bool, key: str = "features"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(data ``[len(rows), ...]``, coords ``[len(rows), 2]`` or None). ``single``: the file holds one
        ``[C, H, W]`` image (or one 1-D slide embedding), read as a bag of one; ``coords``: also read the
        stored coordinates; ``key``: the ``.h5`` dataset holding the data (``"feats"`` for STAMP)."""
        raise NotImplementedError


class NpyFile(BagFile):
    def probe(self, path: Path) -> tuple[FileInfo, np.dtype]:
        arr = np.load(path, mmap_mode="r")  # parses the header only
        return FileInfo(tuple(arr.shape)), arr.dtype

    def read(
        self, path: Path, rows: np.ndarray, single: bool, coords: bool, key: str = "features"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        arr = np.load(path, mmap_mode="r")
        return (arr[None] if single else arr)[rows], None


class PtFile(BagFile):
    """``torch.save`` of a tensor/array ``[N, D]``, or of a dict with ``"features"`` and optional
    ``"coords"``."""

    @staticmethod
    def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        coords = None
        if isinstance(obj, Mapping):
            if "features" not in obj:
                raise KeyError(f"a .pt dict needs a 'features' entry, found keys {sorted(obj)}")
            coords = obj.get("coords")
            obj = obj["features"]
            coords = None if coords is None else as_array(coords)
        return as_array(obj), coords

    def probe(self, path: Path) -> tuple[FileInfo, np.dtype]:
        arr, coords = self._load(path)  # no header to read: load once, keep the coords, drop the data
        return FileInfo(tuple(arr.shape), coords), arr.dtype

    def read(
        self, path: Path, rows: np.ndarray, single: bool, coords: bool, key: str = "features"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        arr, stored = self._load(path)
        return (arr[None] if single else arr)[rows], None if stored is None or not coords else np.asarray(
            stored
        )[rows]


class H5File(BagFile):
    """CLAM layout: dataset ``features`` ``[N, D]`` and optional dataset ``coords`` ``[N, 2]``."""

    def probe(self, path: Path) -> tuple[FileInfo, np.dtype]:
        import h5py

        with h5py.File(path, "r") as f:
            if "features" not in f:
                raise KeyError(f"no dataset 'features' (found {sorted(f.keys())})")
            shape, dtype = tuple(f["features"].shape), f["features"].dtype
            if "coords" in f and tuple(f["coords"].shape) != (shape[0] if shape else 0, 2):
                raise ValueError(
                    f"dataset 'coords' has shape {tuple(f['coords'].shape)}, expected ({shape[0]}, 2)"
                )
        return FileInfo(shape), dtype

    def read(
        self, path: Path, rows: np.ndarray, single: bool, coords: bool, key: str = "features"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        import h5py

        with h5py.File(path, "r") as f:  # h5py needs increasing unique indices: the caller sorts them
            data = f[key][()][None][rows] if single else f[key][rows]
            stored = np.asarray(f["coords"][rows]) if coords and "coords" in f else None
        return data, stored


FILE_READERS: dict[str, BagFile] = {".npy": NpyFile(), ".pt": PtFile(), ".h5": H5File(), ".hdf5": H5File()}
"""Suffix -> reader of the feature / array files (keys are :data:`FEATURE_SUFFIXES`)."""


def probe_file(path: Path, sample: str) -> FileInfo:
    """The shape (and stored coordinates) of a patch-array file, without reading .npy / .h5 data."""
    if not path.exists():
        raise ValueError(f"images: file {str(path)!r} for sample {sample!r} does not exist")
    reader = FILE_READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(
            f"images: file {str(path)!r} for sample {sample!r} has an unsupported suffix; "
            f"expected one of {FEATURE_SUFFIXES}"
        )
    try:
        info, dtype = reader.probe(path)
    except Exception as err:  # any reader failure (corrupt file, bad pickle, ...) becomes a named ValueError
        raise read_error(sample, path, err) from err
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise TypeError(f"images: sample {sample!r} ({str(path)!r}) has dtype {dtype}; expected numbers")
    n = info.shape[0] if info.shape else 0
    if info.coords is not None:
        if info.coords.shape != (n, 2):
            raise ValueError(
                f"images: {str(path)!r} of sample {sample!r} has coords of shape {info.coords.shape}, "
                f"expected ({n}, 2)"
            )
        info.coords = info.coords.astype(np.float32)
    return info


def read_file_rows(
    path: Path, sample: str, local: np.ndarray, *, single: bool, coords: bool, key: str = "features",
    skip_cols: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows ``local`` (any order, repeats allowed) of a patch-array file, with its stored coords when
    ``coords`` (None when it has none). ``key``: the ``.h5`` dataset of the data; ``skip_cols``: leading
    columns that are not features (HistoSSL-style ``.npy`` keep ``level, x, y`` there)."""
    local = np.asarray(local, dtype=np.int64).reshape(-1)
    # rows already increasing (a whole bag, a sorted training draw) are read once, in place: no gather after
    ordered = bool(local.size < 2 or (np.diff(local) > 0).all())
    uniq, inverse = (local, None) if ordered else np.unique(local, return_inverse=True)
    try:
        data, stored = FILE_READERS[path.suffix.lower()].read(path, uniq, single, coords, key)
    except Exception as err:
        raise read_error(sample, path, err) from err
    if skip_cols:
        data = np.asarray(data)[:, skip_cols:]
    data = finite_float32(np.asarray(data), sample, path, uniq)
    stored = None if stored is None else np.asarray(stored, dtype=np.float32)
    if inverse is None:
        return data, stored
    return data[inverse], None if stored is None else stored[inverse]


def finite_float32(data: np.ndarray, sample: str, path: Path, rows: np.ndarray) -> np.ndarray:
    """Float ``data [len(rows), ...]`` as float32, or ``ValueError`` naming the first row (of the file)
    holding NaN / inf, including values that only overflow in float32 (float64 1e300). Integer data (uint8
    pixels) are returned unchanged: they are always finite."""
    if data.dtype.kind != "f":
        return data
    with np.errstate(over="ignore"):  # the overflow is reported below, naming the row
        cast = data.astype(np.float32, copy=False)
    ok = np.isfinite(cast.reshape(len(cast), -1)).all(axis=1)
    if ok.all():
        return cast
    first = int(np.argmin(ok))
    overflow = bool(np.isfinite(data[first]).all())
    what = ("values too large for float32 (|x| > 3.4e38)" if overflow else "NaN or infinite values")
    raise ValueError(f"images: sample {sample!r}, slide file {str(path)!r}: row {int(rows[first])} holds "
                     f"{what}; expected finite features (fix or drop that file)")


def tile_size(path: Path, sample: str) -> tuple[int, int]:
    """(width, height) of a tile image, from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as err:
        raise read_error(sample, path, err) from err


def read_tile(sample: str, path: Path, resize: tuple[int, int] | None) -> np.ndarray:
    """One tile image as float32 ``[3, H, W]`` in [0, 1] (RGB), resized to ``resize`` = (H, W) if given."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if resize is not None and im.size != (resize[1], resize[0]):
                im = im.resize((resize[1], resize[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except Exception as err:
        raise read_error(sample, path, err) from err
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
