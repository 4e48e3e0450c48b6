"""Where a sample's patches come from: a dict, a directory or a manifest becomes, per sample, a list of
:class:`Slide` records (shape, and where the data live), checked as they are built.

Slide ids: file stem for files, folder name for tile folders, ``"slideK"`` for in-memory arrays (K = place in
the sample's list).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .geometry import SlideGeometry
from .readers import IMAGE_SUFFIXES, as_array, probe_file, tile_size


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, str | os.PathLike)


@dataclass
class Slide:
    """One slide of one sample: where its patches live and how many there are."""

    slide_id: str
    n: int
    shape: tuple[int, ...]  # per-patch shape: (D,) or (C, H, W)
    array: np.ndarray | None = None  # in-memory data
    path: Path | None = None  # file (.npy/.pt/.h5) or None
    tiles: list[Path] | None = None  # tile image files (pixels)
    coords: np.ndarray | None = None  # [n, 2] float32, or None = read from file / unknown
    resize: tuple[int, int] | None = None  # pixels: (H, W) to resize tiles to
    single: bool = False  # the file holds one [C, H, W] image (or 1-D slide embedding), read as a bag of one
    key: str = "features"  # .h5 dataset of the data ("feats" in STAMP files)
    skip_cols: int = 0  # leading non-feature columns (HistoSSL-style .npy: level, x, y)
    geometry: SlideGeometry | None = None  # frame and tile spec, when the layout says them


def check_numeric(arr: np.ndarray, sample: str, where: str) -> None:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
        raise TypeError(f"images: sample {sample!r} ({where}) has dtype {arr.dtype}; expected numbers")


def normalise_source(
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
            # a folder with a file suffix (a LazySlide <slide>.zarr store) is one slide, not a sample folder
            folder = entry.is_dir() and entry.suffix.lower() not in suffixes
            if folder or entry.suffix.lower() in suffixes:
                sample = entry.name if folder else entry.stem
                if sample in out:
                    raise ValueError(
                        f"images: sample {sample!r} appears twice in {str(root)!r} "
                        "(as a file and as a folder); expected one of them"
                    )
            if folder:
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
            "images: expected a dict sample -> bag, a directory or a manifest DataFrame, got "
            f"{type(source).__name__}"
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


def feature_slide(sample: str, sid: str, item: Any) -> Slide:
    if isinstance(item, Path):
        info = probe_file(item, sample)
        shape = info.shape
        slide = Slide(
            slide_id=sid, n=shape[0] if shape else 0, shape=tuple(shape[1:]), path=item, coords=info.coords
        )
    else:
        arr = as_array(item)
        check_numeric(arr, sample, f"slide {sid!r}")
        shape = arr.shape
        slide = Slide(slide_id=sid, n=shape[0] if shape else 0, shape=tuple(shape[1:]), array=arr)
        if arr.ndim == 2 and not np.isfinite(arr).all():
            raise ValueError(f"images: sample {sample!r} (slide {sid!r}) has NaN or infinite features")
    if len(shape) != 2:
        raise ValueError(
            f"images: sample {sample!r} (slide {sid!r}) has shape {tuple(shape)}; expected [N, D] features"
        )
    return slide


def pixel_slide(sample: str, sid: str, item: Any, patch_size: tuple[int, int] | None) -> Slide:
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
        w, h = tile_size(tiles[0], sample)  # size from the header only
        if patch_size is None:
            sizes = {tile_size(p, sample) for p in tiles}
            if len(sizes) > 1:
                raise ValueError(
                    f"images: sample {sample!r} has tiles of different sizes {sorted(sizes)} in "
                    f"{str(item)!r}; "
                    "pass patch_size= to resize them"
                )
        hw = patch_size if patch_size is not None else (h, w)
        return Slide(slide_id=sid, n=len(tiles), shape=(3, *hw), tiles=tiles, resize=patch_size)
    if isinstance(item, Path):
        shape = probe_file(item, sample).shape
        slide = Slide(slide_id=sid, n=0, shape=(), path=item)
    else:
        arr = as_array(item)
        check_numeric(arr, sample, f"slide {sid!r}")
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
        slide = Slide(slide_id=sid, n=0, shape=(), array=arr)
    if len(shape) == 3:
        shape = (1, *shape)
        slide.array = None if slide.array is None else slide.array[None]
        slide.single = slide.path is not None
    if len(shape) != 4:
        raise ValueError(
            f"images: sample {sample!r} (slide {sid!r}) has shape {tuple(shape)}; expected [N, C, H, W] or "
            "[C, H, W] pixels"
        )
    if patch_size is not None and tuple(shape[2:]) != tuple(patch_size):
        raise ValueError(
            f"images: sample {sample!r} has patches of size {tuple(shape[2:])}, expected "
            f"patch_size={patch_size}"
        )
    slide.n, slide.shape = int(shape[0]), tuple(int(x) for x in shape[1:])
    return slide


def apply_coords(slides: dict[str, list[Slide]], coords: Mapping[Any, Any]) -> None:
    for sample, c in coords.items():
        sample = str(sample)
        if sample not in slides:
            raise ValueError(f"images: coords given for sample {sample!r}, which has no bag")
        parts = list(c) if isinstance(c, list | tuple) else None
        ss = slides[sample]
        if parts is None:
            arr = as_array(c).astype(np.float32)
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
            p = as_array(p).astype(np.float32)
            if p.shape != (s.n, 2):
                raise ValueError(
                    f"images: coords of sample {sample!r} slide {s.slide_id!r} have shape {p.shape}, "
                    f"expected ({s.n}, 2)"
                )
            s.coords = p
