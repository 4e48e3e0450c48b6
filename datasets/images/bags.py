"""The :class:`ImageBags` container: per sample, a bag of patch feature vectors ``[N, D]`` or of raw patches
``[N, C, H, W]``, built from dicts, directories or manifests (:mod:`.sources`), read lazily
(:mod:`.readers`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..validation import check_unique, format_ids
from .feature_readers import check_format, layout_slide, resolve_folder
from .geometry import SlideGeometry
from .patients import group_by_patient
from .readers import FEATURE_SUFFIXES, IMAGE_SUFFIXES, read_error, read_file_rows, read_tile
from .rows import BagRows
from .sources import Slide, apply_coords, feature_slide, normalise_source, pixel_slide


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


class ImageBags:
    """Bags of patches per sample; build with :meth:`from_features` or :meth:`from_patches`.

    Attributes:
        kind: ``"features"`` or ``"pixels"``.
        sample_ids: samples with a bag, in input order.
        feature_dim: D for feature bags (None for pixels).
        pixel_shape: ``(C, H, W)`` for pixel bags (None for features).
        unmatched_slides: slide ids that ``from_features(patient_of=...)`` matched to no patient (left out
            of the bags); empty otherwise.
    """

    def __init__(self, *, kind: str, slides: dict[str, list[Slide]]) -> None:
        if kind not in ("features", "pixels"):
            raise ValueError(f"images: kind must be 'features' or 'pixels', got {kind!r}")
        self.kind = kind
        self._slides = slides
        self.sample_ids: list[str] = list(slides)
        self.feature_dim: int | None = None
        self.pixel_shape: tuple[int, int, int] | None = None
        self.unmatched_slides: list[str] = []
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_features(
        cls,
        source: Any,
        *,
        coords: Mapping[Any, Any] | None = None,
        patient_of: Any = None,
        unmatched: str = "warn",
        format: str = "auto",
        mpp: float | Mapping[str, float] | None = None,
        feature_key: str | None = None,
        agg_key: str | None = None,
    ) -> ImageBags:
        """Feature bags ``[N, D]`` per sample, with each slide's geometry when its layout states it.

        Args:
            source: a dict sample -> ``[N, D]`` array | file path | list of those (several slides); or a
                directory (see the module docstring; a CLAM output folder with ``h5_files/`` and a
                slideflow bags folder are recognised); or a manifest DataFrame with columns
                ``sample_id, path[, slide_id]`` (one row per slide file).
            coords: optional dict sample -> ``[N, 2]`` (the whole bag) or list of ``[n_k, 2]`` (per slide);
                overrides coordinates found in the files (keyed by the final sample, i.e. the patient
                with ``patient_of``).
            patient_of: slide id (file stem) -> patient id, so that a patient's slides form one bag: a
                mapping, a callable (None: no patient) or ``"tcga"`` (first 12 characters of the barcode);
                see :mod:`.patients`. Slides that match no patient are listed in ``unmatched_slides``.
            unmatched: ``"warn"`` (default: leave such slides out, warn and list them) or ``"raise"``.
            format: ``"auto"`` (tell the layout from each file's content) or one of ``"trident"``,
                ``"clam"``, ``"stamp"``, ``"slideflow"``, ``"lazyslide"``, ``"histossl"``; see
                :mod:`clinfuse.datasets.images.feature_readers` for each layout and
                :class:`~clinfuse.datasets.images.geometry.SlideGeometry` for the coordinate frames.
            mpp: level-0 micrometres per pixel (one float, or slide id -> float): turns STAMP micrometres
                into level-0 pixels, sizes slideflow tiles exactly, and fills ``geometry.mpp`` where the
                files do not state it.
            feature_key: LazySlide stores only: the feature table to read, by table name
                (``"uni_tiles"``) or model name (``"uni"``); needed when a store holds several.
            agg_key: LazySlide stores only: read the table's slide-level vector
                ``uns["agg_ops"][agg_key]`` (``"agg_slide"``, from ``lazyslide.tl.feature_aggregation``)
                as a one-token slide embedding instead of the tile features.
        """
        check_format(format)
        source, format, config = resolve_folder(source, format)
        per_sample = normalise_source(source, FEATURE_SUFFIXES)
        left_out: list[str] = []
        if patient_of is not None:
            per_sample, left_out = group_by_patient(per_sample, patient_of, unmatched=unmatched)
        slides: dict[str, list[Slide]] = {}
        for sample, items in per_sample.items():
            slides[sample] = [
                layout_slide(sample, sid, item, format=format, mpp=mpp, config=config,
                             feature_key=feature_key, agg_key=agg_key)
                if isinstance(item, Path) else feature_slide(sample, sid, item)
                for sid, item in items
            ]
        if coords is not None:
            apply_coords(slides, coords)
        bags = cls(kind="features", slides=slides)
        bags.unmatched_slides = left_out
        return bags

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
                ``.npy`` file of either | a folder of tile images (png/jpg/tif, sorted by name: the
                position of
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
        per_sample = normalise_source(source, IMAGE_SUFFIXES + (".npy",), folders_are_tiles=True)
        slides = {}
        for sample, items in per_sample.items():
            slides[sample] = [pixel_slide(sample, sid, item, patch_size) for sid, item in items]
        if coords is not None:
            apply_coords(slides, coords)
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

    def _get(self, sample_id: str) -> list[Slide]:
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

    @property
    def geometry(self) -> dict[str, SlideGeometry]:
        """Slide id -> :class:`SlideGeometry` (coordinate frame, patch size, resolution) of every slide
        whose layout states it (TRIDENT, CLAM, STAMP, slideflow, HistoSSL); in-memory arrays and plain
        ``.npy`` / ``.pt`` files have none."""
        out: dict[str, SlideGeometry] = {}
        for sample in self.sample_ids:
            for s in self._slides[sample]:
                if s.geometry is None:
                    continue
                if s.slide_id in out and out[s.slide_id] != s.geometry:
                    raise ValueError(
                        f"images: slide id {s.slide_id!r} appears in several samples with different "
                        "geometry; use slide_geometry(sample_id, slide_id)"
                    )
                out[s.slide_id] = s.geometry
        return out

    def slide_geometry(self, sample_id: str, slide_id: str) -> SlideGeometry | None:
        """The geometry of one slide of one sample (None when its source states none)."""
        for s in self._get(sample_id):
            if s.slide_id == slide_id:
                return s.geometry
        raise ValueError(f"images: sample {sample_id!r} has no slide {slide_id!r}; it has "
                         f"{[s.slide_id for s in self._get(sample_id)]}")

    def slide_vectors(self, *, reduce: str = "mean", prefix: str = "slide_") -> pd.DataFrame:
        """Slide embeddings as one feature vector per sample: a DataFrame ``[samples, D]`` (columns
        ``<prefix>0 .. <prefix>D-1``) that a :class:`~clinfuse.datasets.Cohort` takes as numeric
        ``clinical`` variables; see :func:`~clinfuse.datasets.images.slide_vectors.slide_vectors`."""
        from .slide_vectors import slide_vectors

        return slide_vectors(self, reduce=reduce, prefix=prefix)

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
        new.unmatched_slides = list(self.unmatched_slides)
        new._slides = {i: self._slides[i] for i in ids}
        new.sample_ids = list(new._slides)
        return new

    def rows(self, sample_id: str) -> BagRows | None:
        """The sample's whole feature bag as a source of float32 row chunks (:class:`~.rows.BagRows`), read
        on demand; None for pixel bags and layouts that cannot be read by rows."""
        slides = self._get(sample_id)
        return BagRows(sample_id, slides) if self.kind == "features" and BagRows.supports(slides) else None

    def index(self, sample_id: str) -> ImageBag:
        """The sample's bag without its data (``data`` is an empty ``[N, 0]`` float32 array): coordinates,
        slide ids and positions of every patch, as :meth:`load` gives them."""
        slides = self._get(sample_id)
        coords = np.full((sum(s.n for s in slides), 2), np.nan, dtype=np.float32)
        start, positions, slide_ids = 0, [], []
        for s in slides:
            c = s.coords
            if c is None and s.path is not None:
                c = _stored_coords(sample_id, s)
            if c is not None:
                coords[start:start + s.n] = c
            positions.append(np.arange(s.n, dtype=np.int64))
            slide_ids.extend([s.slide_id] * s.n)
            start += s.n
        return ImageBag(data=np.empty((start, 0), dtype=np.float32), coords=coords, slide_ids=slide_ids,
                        positions=np.concatenate(positions))

    def load(self, sample_id: str, indices: Sequence[int] | np.ndarray | None = None) -> ImageBag:
        """Read the sample's bag (or the patches ``indices`` of it, in that order) from memory or disk.

        The whole bag of one in-memory float32 slide is returned as that array (a view, not a copy); else
        each slide's rows are written once into the float32 ``[N, ...]`` result."""
        slides = self._get(sample_id)
        if (indices is None and len(slides) == 1 and slides[0].array is not None
                and slides[0].array.dtype == np.float32 and slides[0].array.flags.c_contiguous):
            s = slides[0]
            coords = (np.full((s.n, 2), np.nan, dtype=np.float32) if s.coords is None
                      else np.asarray(s.coords, dtype=np.float32))
            return ImageBag(data=s.array, coords=coords, slide_ids=[s.slide_id] * s.n,
                            positions=np.arange(s.n, dtype=np.int64))
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
        if len(slides) == 1:  # the slide reader's float32 result is the bag: no second copy
            d, c = _read_slide(sample_id, slides[0], idx)
            coords = np.full((idx.size, 2), np.nan, dtype=np.float32) if c is None else c
            return ImageBag(data=np.ascontiguousarray(d, dtype=np.float32), coords=coords,
                            slide_ids=[slides[0].slide_id] * idx.size, positions=idx.copy())
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


def _stored_coords(sample: str, s: Slide) -> np.ndarray | None:
    """The coordinates an ``.h5`` slide file stores (dataset ``coords``), without reading its features;
    None for the other formats (their coordinates, if any, were kept when the file was probed)."""
    if s.path is None or s.path.suffix.lower() not in (".h5", ".hdf5"):
        return None
    import h5py

    try:
        with h5py.File(s.path, "r") as f:
            return np.asarray(f["coords"][()], dtype=np.float32) if "coords" in f else None
    except Exception as err:
        raise read_error(sample, s.path, err) from err


def _read_slide(sample: str, s: Slide, local: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows ``local`` of one slide as float32, plus coords (or None). Reads only those rows where it can."""
    coords = None if s.coords is None else s.coords[local]
    if s.array is not None:
        data = s.array[local]
    elif s.tiles is not None:
        return np.stack([read_tile(sample, s.tiles[i], s.resize) for i in local.tolist()]), coords
    else:
        assert s.path is not None
        data, stored = read_file_rows(
            s.path, sample, local, single=s.single, coords=coords is None, key=s.key, skip_cols=s.skip_cols
        )
        coords = stored if coords is None else coords
    if data.dtype == np.uint8 and len(s.shape) == 3:
        return data.astype(np.float32) / 255.0, coords
    return np.asarray(data, dtype=np.float32), coords
