"""Image bags: per sample, a bag of patch feature vectors ``[N, D]`` or of raw patches ``[N, C, H, W]``.

A sample's bag may come from several slides; the bag is their union, in the order the slides were given,
and each patch keeps its slide id, its 0-based position within that slide and its coordinates.

Nothing is read in full at construction: ``.npy`` files are memory-mapped (only the header is parsed),
``.h5`` files are opened for the dataset shape only, tile images are opened for their size only. ``.pt``
files have no header, so they are loaded once to read their shape and then dropped. Data are read by
:meth:`ImageBags.load`, one sample at a time, so a cohort larger than memory still trains.

File rules
----------
- ``.npy``: an array ``[N, D]`` (features) or ``[N, C, H, W]`` / ``[C, H, W]`` (pixels).
- ``.pt``: a tensor/array ``[N, D]``, or a dict with ``"features"`` and optional ``"coords"`` ``[N, 2]``;
  read with ``torch.load(weights_only=True)``.
- ``.h5`` / ``.hdf5``: dataset ``features`` ``[N, D]`` and optional dataset ``coords`` ``[N, 2]`` (CLAM layout).
- A directory given to :meth:`ImageBags.from_features`: each file ``<sample>.npy|.pt|.h5`` is a one-slide
  bag of sample ``<sample>`` (slide id = sample id); each sub-directory ``<sample>/`` holds one file per slide
  of that sample (slide id = file stem). Sample ids are file stems, never split on dots.
- A directory given to :meth:`ImageBags.from_patches`: each sub-directory ``<sample>/`` is a folder of tile
  images (one slide named like the folder); each image or ``.npy`` file ``<sample>.<ext>`` is a one-slide bag.
- Slide ids: file stem for files, folder name for tile folders, ``"slideK"`` for in-memory arrays (K = place in
  the sample's list). Coordinates stored in ``.pt`` files are kept in memory (``[N, 2]`` is small).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .validation import check_unique, format_ids

FEATURE_SUFFIXES = (".npy", ".pt", ".h5", ".hdf5")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class ImageBag:
    """One sample's bag as read by :meth:`ImageBags.load`.

    Attributes:
        data: float32 ``[N, D]`` (features) or ``[N, C, H, W]`` (pixels, in [0, 1]).
        coords: float32 ``[N, 2]`` patch x, y; NaN where the source had none.
        slide_ids: ``N`` slide ids, one per patch.
        positions: int64 ``[N]`` 0-based index of each patch within its slide as supplied.
    """

    data: np.ndarray
    coords: np.ndarray
    slide_ids: list[str]
    positions: np.ndarray

    def __len__(self) -> int:
        return int(self.data.shape[0])


@dataclass
class _Slide:
    """One slide of one sample: where its patches live and how many there are (internal)."""

    slide_id: str
    n: int
    shape: tuple[int, ...]  # per-patch shape: (D,) or (C, H, W)
    array: np.ndarray | None = None  # in-memory data
    path: Path | None = None  # file (.npy/.pt/.h5) or None
    tiles: list[Path] | None = None  # tile image files (pixels)
    coords: np.ndarray | None = None  # [n, 2] float32, or None = read from file / unknown
    resize: tuple[int, int] | None = None  # pixels: (H, W) to resize tiles to
    single: bool = False  # the file holds one [C, H, W] image, read as a bag of one


def _err(sample: str, path: Any, err: BaseException) -> ValueError:
    return ValueError(f"images: cannot read {str(path)!r} for sample {sample!r}: {type(err).__name__}: {err}")


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


def _as_array(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch for arrays
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_numeric(arr: np.ndarray, sample: str, where: str) -> None:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"images: sample {sample!r} ({where}) has dtype {arr.dtype}; expected numbers")


def _load_pt(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    coords = None
    if isinstance(obj, Mapping):
        if "features" not in obj:
            raise KeyError(f"a .pt dict needs a 'features' entry, found keys {sorted(obj)}")
        coords = obj.get("coords")
        obj = obj["features"]
        coords = None if coords is None else _as_array(coords)
    return _as_array(obj), coords


def _file_shape(path: Path, sample: str) -> tuple[tuple[int, ...], np.ndarray | None, bool]:
    """(array shape, coords from a .pt file or None, file-has-coords) read without loading .npy/.h5 data."""
    if not path.exists():
        raise ValueError(f"images: file {str(path)!r} for sample {sample!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise ValueError(
            f"images: file {str(path)!r} for sample {sample!r} has an unsupported suffix; "
            f"expected one of {FEATURE_SUFFIXES}"
        )
    coords, has_coords = None, False
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r")  # parses the header only
            shape, dtype = tuple(arr.shape), arr.dtype
        elif suffix == ".pt":
            arr, coords = _load_pt(path)  # no header to read: load once, then drop
            shape, dtype, has_coords = tuple(arr.shape), arr.dtype, coords is not None
        else:
            import h5py

            with h5py.File(path, "r") as f:
                if "features" not in f:
                    raise KeyError(f"no dataset 'features' (found {sorted(f.keys())})")
                shape, dtype = tuple(f["features"].shape), f["features"].dtype
                has_coords = "coords" in f
                if has_coords and tuple(f["coords"].shape) != (shape[0] if shape else 0, 2):
                    raise ValueError(
                        f"dataset 'coords' has shape {tuple(f['coords'].shape)}, expected ({shape[0]}, 2)"
                    )
    except Exception as err:  # any reader failure (corrupt file, bad pickle, ...) becomes a named ValueError
        raise _err(sample, path, err) from err
    if not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
        raise TypeError(f"images: sample {sample!r} ({str(path)!r}) has dtype {dtype}; expected numbers")
    if coords is not None and coords.shape != (shape[0] if shape else 0, 2):
        raise ValueError(
            f"images: {str(path)!r} of sample {sample!r} has coords of shape {coords.shape}, "
            f"expected ({shape[0] if shape else 0}, 2)"
        )
    return shape, (None if coords is None else coords.astype(np.float32)), has_coords


class ImageBags:
    """Bags of patches per sample; build with :meth:`from_features` or :meth:`from_patches`.

    Attributes:
        kind: ``"features"`` or ``"pixels"``.
        sample_ids: samples with a bag, in input order.
        feature_dim: D for feature bags (None for pixels).
        pixel_shape: ``(C, H, W)`` for pixel bags (None for features).
    """

    def __init__(self, *, kind: str, slides: dict[str, list[_Slide]]) -> None:
        if kind not in ("features", "pixels"):
            raise ValueError(f"images: kind must be 'features' or 'pixels', got {kind!r}")
        self.kind = kind
        self._slides = slides
        self.sample_ids: list[str] = list(slides)
        self.feature_dim: int | None = None
        self.pixel_shape: tuple[int, int, int] | None = None
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_features(cls, source: Any, *, coords: Mapping[Any, Any] | None = None) -> ImageBags:
        """Feature bags ``[N, D]`` per sample.

        Args:
            source: a dict sample -> ``[N, D]`` array | file path | list of those (several slides); or a
                directory (see the module docstring); or a manifest DataFrame with columns
                ``sample_id, path[, slide_id]`` (one row per slide file).
            coords: optional dict sample -> ``[N, 2]`` (the whole bag) or list of ``[n_k, 2]`` (per slide);
                overrides coordinates found in the files.
        """
        per_sample = _normalise_source(source, FEATURE_SUFFIXES)
        slides: dict[str, list[_Slide]] = {}
        for sample, items in per_sample.items():
            slides[sample] = [_feature_slide(sample, sid, item) for sid, item in items]
        if coords is not None:
            _apply_coords(slides, coords)
        return cls(kind="features", slides=slides)

    @classmethod
    def from_patches(
        cls,
        source: Any,
        *,
        patch_size: int | tuple[int, int] | None = None,
        coords: Mapping[Any, Any] | None = None,
    ) -> ImageBags:
        """Raw pixel bags ``[N, C, H, W]`` per sample (values in [0, 1]).

        Args:
            source: a dict sample -> ``[N, C, H, W]`` array | ``[C, H, W]`` array (a bag of one image) |
                ``.npy`` file of either | a folder of tile images (png/jpg/tif, sorted by name: the position of
                a tile is its place in that order) | one image file | a list of those; or a directory whose
                sub-folders are samples (tiles inside) and whose image files are one-image samples.
                uint8 data are scaled by 1/255; float data must already lie in [0, 1]. Tile images are read
                lazily with Pillow and converted to RGB.
            patch_size: tile images are resized to ``patch_size`` (int or ``(H, W)``) when read; arrays must
                already have that size.
            coords: as in :meth:`from_features`.
        """
        if isinstance(patch_size, int):
            patch_size = (patch_size, patch_size)
        per_sample = _normalise_source(source, IMAGE_SUFFIXES + (".npy",), folders_are_tiles=True)
        slides = {}
        for sample, items in per_sample.items():
            slides[sample] = [_pixel_slide(sample, sid, item, patch_size) for sid, item in items]
        if coords is not None:
            _apply_coords(slides, coords)
        return cls(kind="pixels", slides=slides)

    def _validate(self) -> None:
        if not self._slides:
            raise ValueError("images: no samples given; expected at least one bag")
        check_unique(self.sample_ids, what="images")
        first: tuple[str, tuple[int, ...]] | None = None
        for sample, slides in self._slides.items():
            if not slides:
                raise ValueError(f"images: sample {sample!r} has no slide/file; expected at least one")
            check = [s.slide_id for s in slides]
            if len(set(check)) != len(check):
                raise ValueError(
                    f"images: sample {sample!r} has duplicated slide ids {check}; expected unique ones"
                )
            if sum(s.n for s in slides) == 0:
                raise ValueError(
                    f"images: sample {sample!r} has a bag of zero patches; expected at least one"
                )
            for s in slides:
                if first is None:
                    first = (sample, s.shape)
                elif s.shape != first[1]:
                    what = "feature dim" if self.kind == "features" else "patch shape (C, H, W)"
                    a = first[1][0] if self.kind == "features" else first[1]
                    b = s.shape[0] if self.kind == "features" else s.shape
                    raise ValueError(
                        f"images: inconsistent {what}: sample {first[0]!r} has {a} but sample {sample!r} "
                        f"(slide {s.slide_id!r}) has {b}; every bag must share it"
                    )
        assert first is not None
        if self.kind == "features":
            self.feature_dim = int(first[1][0])
        else:
            c, h, w = first[1]
            self.pixel_shape = (int(c), int(h), int(w))

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.sample_ids)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._slides

    def __repr__(self) -> str:
        shape = self.feature_dim if self.kind == "features" else self.pixel_shape
        return f"ImageBags(kind={self.kind!r}, samples={len(self)}, shape={shape})"

    def _get(self, sample_id: str) -> list[_Slide]:
        try:
            return self._slides[sample_id]
        except KeyError:
            raise ValueError(f"images: unknown sample id {sample_id!r}; it has no image bag") from None

    def n_patches(self, sample_id: str) -> int:
        """Number of patches in the sample's bag (all its slides)."""
        return sum(s.n for s in self._get(sample_id))

    def slide_ids(self, sample_id: str) -> list[str]:
        """The sample's slide ids, in bag order."""
        return [s.slide_id for s in self._get(sample_id)]

    def bag_sizes(self) -> pd.Series:
        """Patches per sample (int Series indexed by sample id)."""
        return pd.Series({s: self.n_patches(s) for s in self.sample_ids}, dtype="int64")

    def subset(self, ids: Sequence[str]) -> ImageBags:
        """The bags of ``ids`` (every id must have a bag)."""
        ids = [str(i) for i in ids]
        unknown = [i for i in ids if i not in self._slides]
        if unknown:
            raise ValueError(f"images: unknown sample id(s) {format_ids(unknown)}; they have no image bag")
        new = object.__new__(ImageBags)
        new.kind, new.feature_dim, new.pixel_shape = self.kind, self.feature_dim, self.pixel_shape
        new._slides = {i: self._slides[i] for i in ids}
        new.sample_ids = list(new._slides)
        return new

    def load(self, sample_id: str, indices: Sequence[int] | np.ndarray | None = None) -> ImageBag:
        """Read the sample's bag (or the patches ``indices`` of it, in that order) from memory or disk."""
        slides = self._get(sample_id)
        sizes = np.array([s.n for s in slides], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        total = int(offsets[-1])
        if indices is None:
            idx = np.arange(total, dtype=np.int64)
        else:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= total):
                raise IndexError(
                    f"images: indices out of range for sample {sample_id!r} with {total} patches"
                )
        which = np.searchsorted(offsets, idx, side="right") - 1
        data = np.empty((idx.size, *slides[0].shape), dtype=np.float32)
        coords = np.full((idx.size, 2), np.nan, dtype=np.float32)
        positions = idx - offsets[which]
        for k, s in enumerate(slides):
            sel = np.nonzero(which == k)[0]
            if sel.size == 0:
                continue
            local = positions[sel]
            d, c = _read_slide(sample_id, s, local)
            data[sel] = d
            if c is not None:
                coords[sel] = c
        slide_ids = [slides[k].slide_id for k in which.tolist()]
        return ImageBag(data=data, coords=coords, slide_ids=slide_ids, positions=positions.astype(np.int64))


# ---------------------------------------------------------------------- helpers


def _normalise_source(
    source: Any, suffixes: tuple[str, ...], folders_are_tiles: bool = False
) -> dict[str, list]:
    """sample -> list of (slide_id, item) from a dict, a directory or a manifest DataFrame."""
    if isinstance(source, pd.DataFrame):
        missing = {"sample_id", "path"} - set(source.columns)
        if missing:
            raise ValueError(
                f"images: manifest lacks column(s) {sorted(missing)}; expected sample_id, path[, slide_id]"
            )
        out: dict[str, list] = {}
        for row in source.itertuples(index=False):
            sample = str(row.sample_id)
            path = Path(row.path)
            sid = str(row.slide_id) if "slide_id" in source.columns and pd.notna(row.slide_id) else path.stem
            out.setdefault(sample, []).append((sid, path))
        return out
    if _is_pathlike(source):
        root = Path(source)
        if not root.is_dir():
            raise ValueError(
                f"images: {str(root)!r} is not a directory; expected a folder of per-sample files"
            )
        out = {}
        for entry in sorted(root.iterdir()):
            if entry.is_dir() or entry.suffix.lower() in suffixes:
                sample = entry.name if entry.is_dir() else entry.stem
                if sample in out:
                    raise ValueError(
                        f"images: sample {sample!r} appears twice in {str(root)!r} "
                        "(as a file and as a folder); expected one of them"
                    )
            if entry.is_dir():
                if folders_are_tiles:
                    out[entry.name] = [(entry.name, entry)]
                else:
                    files = sorted(p for p in entry.iterdir() if p.suffix.lower() in suffixes)
                    out[entry.name] = [(p.stem, p) for p in files]
            elif entry.suffix.lower() in suffixes:
                out[entry.stem] = [(entry.stem, entry)]
        if not out:
            raise ValueError(f"images: directory {str(root)!r} holds no file with suffix in {suffixes}")
        return out
    if not isinstance(source, Mapping):
        raise TypeError(
            f"images: expected a dict sample -> bag, a directory or a manifest DataFrame, got {type(source).__name__}"
        )
    out = {}
    for sample, item in source.items():
        sample = str(sample)
        if sample in out:
            raise ValueError(f"images: duplicated sample id {sample!r} (ids are compared as strings)")
        items = list(item) if isinstance(item, list | tuple) else [item]
        named = []
        for k, it in enumerate(items):
            sid = Path(it).stem if _is_pathlike(it) else f"slide{k}"
            if _is_pathlike(it):
                it = Path(it)
            named.append((sid, it))
        out[sample] = named
    return out


def _feature_slide(sample: str, sid: str, item: Any) -> _Slide:
    if isinstance(item, Path):
        shape, coords, _ = _file_shape(item, sample)
        slide = _Slide(
            slide_id=sid, n=shape[0] if shape else 0, shape=tuple(shape[1:]), path=item, coords=coords
        )
    else:
        arr = _as_array(item)
        _check_numeric(arr, sample, f"slide {sid!r}")
        shape = arr.shape
        slide = _Slide(slide_id=sid, n=shape[0] if shape else 0, shape=tuple(shape[1:]), array=arr)
        if arr.ndim == 2 and not np.isfinite(arr).all():
            raise ValueError(f"images: sample {sample!r} (slide {sid!r}) has NaN or infinite features")
    if len(shape) != 2:
        raise ValueError(
            f"images: sample {sample!r} (slide {sid!r}) has shape {tuple(shape)}; expected [N, D] features"
        )
    return slide


def _pixel_slide(sample: str, sid: str, item: Any, patch_size: tuple[int, int] | None) -> _Slide:
    if isinstance(item, Path) and (item.is_dir() or item.suffix.lower() in IMAGE_SUFFIXES):
        if item.is_dir():
            tiles = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif not item.exists():
            raise ValueError(f"images: file {str(item)!r} for sample {sample!r} does not exist")
        else:
            tiles = [item]
            sid = item.stem
        if not tiles:
            raise ValueError(
                f"images: sample {sample!r} has a bag of zero patches (no image in {str(item)!r})"
            )
        from PIL import Image

        try:
            with Image.open(tiles[0]) as im:  # size from the header only
                w, h = im.size
        except Exception as err:
            raise _err(sample, tiles[0], err) from err
        if patch_size is None:
            sizes = set()
            for p in tiles:
                try:
                    with Image.open(p) as im:
                        sizes.add(im.size)
                except Exception as err:
                    raise _err(sample, p, err) from err
            if len(sizes) > 1:
                raise ValueError(
                    f"images: sample {sample!r} has tiles of different sizes {sorted(sizes)} in {str(item)!r}; "
                    "pass patch_size= to resize them"
                )
        hw = patch_size if patch_size is not None else (h, w)
        return _Slide(slide_id=sid, n=len(tiles), shape=(3, *hw), tiles=tiles, resize=patch_size)
    if isinstance(item, Path):
        shape, _, _ = _file_shape(item, sample)
        slide = _Slide(slide_id=sid, n=0, shape=(), path=item)
    else:
        arr = _as_array(item)
        _check_numeric(arr, sample, f"slide {sid!r}")
        if arr.dtype.kind in "iu" and arr.dtype != np.uint8:
            raise TypeError(
                f"images: sample {sample!r} (slide {sid!r}) has pixels of dtype {arr.dtype}; expected "
                "uint8 (0..255) or floats scaled to [0, 1]"
            )
        if (
            arr.dtype.kind == "f"
            and arr.size
            and (np.nanmin(arr) < 0 or np.nanmax(arr) > 1 or np.isnan(arr).any())
        ):
            raise ValueError(
                f"images: sample {sample!r} (slide {sid!r}) has float pixels outside [0, 1] or NaN; "
                "expected uint8 or floats scaled to [0, 1]"
            )
        shape = arr.shape
        slide = _Slide(slide_id=sid, n=0, shape=(), array=arr)
    if len(shape) == 3:
        shape = (1, *shape)
        slide.array = None if slide.array is None else slide.array[None]
        slide.single = slide.path is not None
    if len(shape) != 4:
        raise ValueError(
            f"images: sample {sample!r} (slide {sid!r}) has shape {tuple(shape)}; expected [N, C, H, W] or [C, H, W] pixels"
        )
    if patch_size is not None and tuple(shape[2:]) != tuple(patch_size):
        raise ValueError(
            f"images: sample {sample!r} has patches of size {tuple(shape[2:])}, expected patch_size={patch_size}"
        )
    slide.n, slide.shape = int(shape[0]), tuple(int(x) for x in shape[1:])
    return slide


def _apply_coords(slides: dict[str, list[_Slide]], coords: Mapping[Any, Any]) -> None:
    for sample, c in coords.items():
        sample = str(sample)
        if sample not in slides:
            raise ValueError(f"images: coords given for sample {sample!r}, which has no bag")
        parts = list(c) if isinstance(c, list | tuple) else None
        ss = slides[sample]
        if parts is None:
            arr = _as_array(c).astype(np.float32)
            total = sum(s.n for s in ss)
            if arr.shape != (total, 2):
                raise ValueError(
                    f"images: coords of sample {sample!r} have shape {arr.shape}, expected ({total}, 2)"
                )
            parts = np.split(arr, np.cumsum([s.n for s in ss])[:-1])
        if len(parts) != len(ss):
            raise ValueError(
                f"images: sample {sample!r} has {len(ss)} slides but {len(parts)} coordinate arrays"
            )
        for s, p in zip(ss, parts, strict=True):
            p = _as_array(p).astype(np.float32)
            if p.shape != (s.n, 2):
                raise ValueError(
                    f"images: coords of sample {sample!r} slide {s.slide_id!r} have shape {p.shape}, expected ({s.n}, 2)"
                )
            s.coords = p


def _read_slide(sample: str, s: _Slide, local: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows ``local`` of one slide as float32, plus coords (or None). Reads only those rows where it can."""
    coords = None if s.coords is None else s.coords[local]
    if s.array is not None:
        data = s.array[local]
    elif s.tiles is not None:
        data = np.stack([_read_tile(sample, s.tiles[i], s.resize) for i in local.tolist()])
        return data, coords
    else:
        assert s.path is not None
        # h5py needs increasing unique indices: read sorted, then restore the requested order
        uniq, inverse = np.unique(local, return_inverse=True)
        suffix = s.path.suffix.lower()
        try:
            if suffix == ".npy":
                arr = np.load(s.path, mmap_mode="r")
                data = (arr[None] if s.single else arr)[uniq]
            elif suffix == ".pt":
                arr, c = _load_pt(s.path)
                data = (arr[None] if s.single else arr)[uniq]
                if coords is None and c is not None:
                    coords = np.asarray(c, dtype=np.float32)[local]
            else:
                import h5py

                with h5py.File(s.path, "r") as f:
                    data = f["features"][()][None][uniq] if s.single else f["features"][uniq]
                    if coords is None and "coords" in f:
                        coords = np.asarray(f["coords"][uniq], dtype=np.float32)[inverse]
        except Exception as err:
            raise _err(sample, s.path, err) from err
        data = data[inverse]
    if data.dtype == np.uint8 and len(s.shape) == 3:
        return data.astype(np.float32) / 255.0, coords
    return np.asarray(data, dtype=np.float32), coords


def _read_tile(sample: str, path: Path, resize: tuple[int, int] | None) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if resize is not None and im.size != (resize[1], resize[0]):
                im = im.resize((resize[1], resize[0]), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except Exception as err:
        raise _err(sample, path, err) from err
    return np.ascontiguousarray(arr.transpose(2, 0, 1))
