"""Readers of the feature files that pathology extractors write, with the slide geometry they state.

Each reader turns one file into a :class:`~.sources.Slide` whose coordinates are already in the frame of
its :class:`~.geometry.SlideGeometry` (top-left corners; level-0 pixels where the files allow). Features
stay on disk and are read lazily, and so do TRIDENT / CLAM coordinates (already level-0 px); coordinates
that need converting (STAMP, slideflow, HistoSSL: ``[N, 2]``, small) are converted once and kept in memory.

Layouts (``format=``; ``"auto"`` tells them apart by content):

- ``"trident"``: ``<slide>.h5`` with ``features [N, D]`` and ``coords [N, 2]`` (level-0 px, top-left);
  attributes on ``coords``: ``patch_size``, ``patch_size_level0``, ``level0_magnification``,
  ``target_magnification``, ``overlap``, ``level0_width``, ``level0_height``. Auto: a ``features`` file
  whose ``coords`` carry any of these TRIDENT attributes. A 1-D ``features`` (the slide embeddings in
  ``slide_features_<encoder>/``) loads as a one-token bag without coordinates (``slide_level=True``).
- ``"clam"``: ``features`` and ``coords`` with no attributes (``h5_files/<slide>.h5``), or a tensor
  ``pt_files/<slide>.pt``; a folder holding ``h5_files/`` (else ``pt_files/``) is read as CLAM. The patching
  attributes ``patch_size``, ``patch_level``, ``downsample`` give the level-0 patch size when present.
- ``"stamp"``: ``feats [N, D]`` and ``coords [N, 2]`` in micrometres; root attributes ``unit="um"``,
  ``tile_size_um``, ``tile_size_px``, ``extractor``. With ``mpp=`` (level-0 micrometres per pixel) the
  coordinates become level-0 pixels; else ``tile_size_um / tile_size_px`` is the resolution and they become
  pixels at it (frame ``"px"``); without ``tile_size_px`` they stay in micrometres (frame ``"um"``).
- ``"slideflow"``: ``<slide>.pt`` (``[N, D]``) beside ``<slide>.index.npz`` (``arr_0``: tile centres in
  level-0 px) and a folder-level ``bags_config.json`` (``tile_px``, ``tile_um``). The level-0 tile side is
  ``tile_um / mpp`` with ``mpp=``, else the grid step of the centres (slideflow's default stride is one
  tile); centres move to top-left corners by half of it. Auto: a ``.pt`` with a sibling ``.index.npz``.
- ``"lazyslide"``: a SpatialData zarr store ``<slide>.zarr`` written by LazySlide / wsidata: tile polygons
  in ``shapes/tiles``, features in the AnnData table ``tables/<model>_tiles``, tile spec in the root
  attributes (see :mod:`.lazyslide`). Auto: a ``.zarr`` folder; ``feature_key=`` picks the table (or
  model) when a store holds several.
- ``"histossl"``: ``.npy [N, 3 + D]`` whose first columns are ``level, x, y``; coordinates are kept as
  stored (frame ``"stored"``). Never auto-detected: a plain ``[N, D]`` ``.npy`` would be misread.

Plain ``.npy`` / ``.pt`` files (auto) keep their former meaning and carry no geometry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import SlideGeometry, attr_float, attr_str
from .lazyslide import STORE_SUFFIX, lazyslide_slide
from .readers import FEATURE_SUFFIXES, probe_file, read_error
from .sources import Slide, check_numeric, feature_slide

FORMATS = ("auto", "trident", "clam", "stamp", "slideflow", "lazyslide", "histossl")
TRIDENT_ATTRS = ("patch_size_level0", "level0_magnification", "target_magnification", "level0_width")
_SUFFIX_OF = {"trident": (".h5", ".hdf5"), "stamp": (".h5", ".hdf5"), "clam": (".h5", ".hdf5", ".pt"),
              "slideflow": (".pt",), "histossl": (".npy",), "lazyslide": (STORE_SUFFIX,)}


def check_format(format: str) -> None:
    if format not in FORMATS:
        raise ValueError(f"images: unknown feature format {format!r}; expected one of {FORMATS}")


def resolve_folder(source: Any, format: str) -> tuple[Any, str, dict[str, Any] | None]:
    """A CLAM or slideflow output folder -> (what :func:`~.sources.normalise_source` reads, the format, the
    slideflow ``bags_config.json``); any other source is returned as given."""
    if not isinstance(source, str | Path) or not Path(source).is_dir():
        return source, format, None
    root = Path(source)
    if root.suffix.lower() == STORE_SUFFIX and format in ("auto", "lazyslide"):
        return {root.stem: root}, format, None  # one LazySlide store given on its own
    if format in ("auto", "clam"):
        for sub in ("h5_files", "pt_files"):
            if (root / sub).is_dir():
                return root / sub, "clam", None
    config_path = root / "bags_config.json"
    index = sorted(root.glob("*.index.npz"))
    if format == "slideflow" or (format == "auto" and (config_path.exists() or index)):
        config = None
        if config_path.exists():
            try:
                config = json.loads(config_path.read_text())
            except ValueError as err:
                raise ValueError(f"images: cannot parse {str(config_path)!r}: {err}") from err
        bags = {p.stem: p for p in sorted(root.glob("*.pt"))}  # not *.index.npy / .npz: they are the index
        if not bags:
            raise ValueError(f"images: slideflow folder {str(root)!r} holds no <slide>.pt bag")
        return bags, "slideflow", config
    return source, format, None


def _level0_mpp(mpp: float | Mapping[str, float] | None, slide_id: str) -> float | None:
    value = mpp.get(slide_id) if isinstance(mpp, Mapping) else mpp
    if value is not None and not float(value) > 0:
        raise ValueError(f"images: mpp for slide {slide_id!r} must be > 0, got {value!r}")
    return None if value is None else float(value)


def layout_slide(sample: str, sid: str, path: Path, *, format: str,
                 mpp: float | Mapping[str, float] | None = None,
                 config: Mapping[str, Any] | None = None, feature_key: str | None = None,
                 agg_key: str | None = None) -> Slide:
    """One feature file as a :class:`Slide` with its geometry (see the module docstring)."""
    suffix = path.suffix.lower()
    if not path.exists():
        raise ValueError(f"images: file {str(path)!r} for sample {sample!r} does not exist")
    if format != "auto" and suffix not in _SUFFIX_OF[format]:
        raise ValueError(f"images: file {str(path)!r} of sample {sample!r} cannot be format {format!r}: "
                         f"expected a file ending in {_SUFFIX_OF[format]}, found {suffix!r}")
    if suffix == STORE_SUFFIX:
        return lazyslide_slide(sample, sid, path, feature_key=feature_key, mpp=_level0_mpp(mpp, sid),
                               agg_key=agg_key)
    if suffix in (".h5", ".hdf5"):
        return _h5_slide(sample, sid, path, format, _level0_mpp(mpp, sid))
    if format == "histossl":
        return _histossl_slide(sample, sid, path)
    if suffix == ".pt" and (format == "slideflow" or (format == "auto" and _index_file(path) is not None)):
        return _slideflow_slide(sample, sid, path, _level0_mpp(mpp, sid), config or {})
    if suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"images: file {str(path)!r} for sample {sample!r} has an unsupported suffix; "
                         f"expected one of {FEATURE_SUFFIXES}")
    slide = feature_slide(sample, sid, path)
    if format == "clam":
        slide.geometry = SlideGeometry(format="clam", frame="level0_px", mpp=_level0_mpp(mpp, sid))
    return slide


# ---------------------------------------------------------------------- .h5: TRIDENT, CLAM, STAMP


def detect_h5(keys: list[str], coord_attrs: Any) -> str | None:
    """``"stamp"``, ``"trident"``, ``"clam"`` from an ``.h5`` file's datasets and ``coords`` attributes."""
    if "feats" in keys:
        return "stamp"
    if "features" in keys:
        return "trident" if any(a in coord_attrs for a in TRIDENT_ATTRS) else "clam"
    return None


def _h5_slide(sample: str, sid: str, path: Path, format: str, mpp: float | None) -> Slide:
    import h5py

    try:
        f = h5py.File(path, "r")
    except Exception as err:  # not an HDF5 file, truncated, locked: a named ValueError
        raise read_error(sample, path, err) from err
    with f:
        keys = sorted(f.keys())
        c_attrs = dict(f["coords"].attrs) if "coords" in f else {}
        found = detect_h5(keys, c_attrs)
        if found is None:
            raise ValueError(
                f"images: cannot read {str(path)!r} for sample {sample!r}: no dataset 'features' "
                f"(TRIDENT / CLAM) or 'feats' (STAMP) (found {keys}); expected one of them")
        if format == "auto":
            format = found
        elif (format == "stamp") != (found == "stamp"):
            want = "'feats' and 'coords' (STAMP)" if format == "stamp" else "'features' and 'coords'"
            raise ValueError(f"images: file {str(path)!r} of sample {sample!r} is not in the {format} "
                             f"layout: found datasets {keys}, expected {want}; it looks like {found} "
                             "(pass format='auto' or that name)")
        key = "feats" if format == "stamp" else "features"
        data = f[key]
        check_numeric(np.empty(0, dtype=data.dtype), sample, f"{path}:{key}")
        shape = tuple(data.shape)
        c_shape = tuple(f["coords"].shape) if "coords" in f else None
        # TRIDENT / CLAM coordinates are already level-0 px: read lazily with the rows; STAMP's convert
        coords = np.asarray(f["coords"][()]) if c_shape is not None and format == "stamp" else None
        attrs = {**dict(f.attrs), **c_attrs}  # TRIDENT keeps the spec on coords, STAMP on the root
    if format == "stamp" and c_shape is None and len(shape) == 2:
        raise ValueError(f"images: STAMP file {str(path)!r} of sample {sample!r} has 'feats' but no "
                         f"'coords' (found {keys}); expected coords [N, 2] in micrometres")
    if len(shape) == 1:  # a slide embedding: one token, no position on the slide
        geom = _h5_geometry(format, attrs, mpp, sample, path, slide_level=True)
        return Slide(slide_id=sid, n=1, shape=shape, path=path, key=key, single=True, geometry=geom)
    if len(shape) != 2:
        raise ValueError(f"images: sample {sample!r} (slide {sid!r}) has {key} of shape {shape} in "
                         f"{str(path)!r}; expected [N, D] features or a 1-D slide embedding")
    if c_shape is not None and c_shape != (shape[0], 2):
        raise ValueError(f"images: {str(path)!r} of sample {sample!r}: dataset 'coords' has shape "
                         f"{c_shape}, expected ({shape[0]}, 2)")
    geom = _h5_geometry(format, attrs, mpp, sample, path)
    xy = None
    if coords is not None:
        xy = (coords.astype(np.float64) / _stamp_scale(attrs, mpp)).astype(np.float32)
    return Slide(slide_id=sid, n=shape[0], shape=shape[1:], path=path, key=key, coords=xy, geometry=geom)


def _stamp_scale(attrs: Mapping[str, Any], mpp: float | None) -> float:
    """Micrometres per unit of the target frame (1 when the coordinates stay in micrometres)."""
    if mpp is not None:
        return mpp
    um, px = attr_float(attrs, "tile_size_um"), attr_float(attrs, "tile_size_px")
    return um / px if um and px else 1.0


def _h5_geometry(format: str, attrs: Mapping[str, Any], mpp: float | None, sample: str, path: Path,
                 slide_level: bool = False) -> SlideGeometry:
    size = attr_float(attrs, "level0_width"), attr_float(attrs, "level0_height")
    common = dict(magnification=attr_float(attrs, "level0_magnification"),
                  target_magnification=attr_float(attrs, "target_magnification"),
                  overlap=attr_float(attrs, "overlap"), extractor=attr_str(attrs, "extractor", "encoder"),
                  level0_size=None if None in size else (int(size[0]), int(size[1])),
                  slide_level=slide_level)
    if format != "stamp":
        patch = attr_float(attrs, "patch_size_level0")
        base = attr_float(attrs, "patch_size")
        if patch is None and base is not None:  # CLAM patching attrs, or TRIDENT without the level-0 size
            ratio = attr_float(attrs, "downsample")
            if ratio is None and common["magnification"] and common["target_magnification"]:
                ratio = common["magnification"] / common["target_magnification"]
            patch = base * (ratio if ratio is not None else 1.0)
        level = attr_float(attrs, "patch_level")
        return SlideGeometry(format=format, frame="level0_px", patch_size=patch,
                             mpp=mpp if mpp is not None else attr_float(attrs, "level0_mpp", "mpp"),
                             level=None if level is None else int(level), **common)
    unit = attr_str(attrs, "unit")
    if unit is not None and unit not in ("um", "µm", "micrometer", "micrometre"):
        raise ValueError(f"images: STAMP file {str(path)!r} of sample {sample!r} has coords unit "
                         f"{unit!r}; expected 'um' (micrometres)")
    um, px = attr_float(attrs, "tile_size_um"), attr_float(attrs, "tile_size_px")
    if mpp is not None:
        return SlideGeometry(format="stamp", frame="level0_px", patch_size=None if um is None else um / mpp,
                             mpp=mpp, **common)
    if um and px:
        return SlideGeometry(format="stamp", frame="px", patch_size=px, mpp=um / px, **common)
    return SlideGeometry(format="stamp", frame="um", patch_size=um, **common)


# ---------------------------------------------------------------------- slideflow, HistoSSL


def _index_file(path: Path) -> Path | None:
    for suffix in (".index.npz", ".index.npy"):
        candidate = path.with_name(path.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def _slideflow_slide(sample: str, sid: str, path: Path, mpp: float | None,
                     config: Mapping[str, Any]) -> Slide:
    index = _index_file(path)
    if index is None:
        raise ValueError(f"images: slideflow bag {str(path)!r} of sample {sample!r} has no "
                         f"{path.stem}.index.npz beside it; expected its tile centres (arr_0)")
    info = probe_file(path, sample)
    if len(info.shape) != 2:
        raise ValueError(f"images: sample {sample!r} (slide {sid!r}) has shape {info.shape} in "
                         f"{str(path)!r}; expected [N, D] features")
    try:
        stored = np.load(index)
        centres = np.asarray(stored["arr_0"] if isinstance(stored, np.lib.npyio.NpzFile) else stored)
    except Exception as err:
        raise read_error(sample, index, err) from err
    n = info.shape[0]
    if centres.ndim != 2 or centres.shape[0] != n or centres.shape[1] < 2:
        raise ValueError(f"images: {str(index)!r} of sample {sample!r} holds tile centres of shape "
                         f"{centres.shape}; expected ({n}, 2) to match {str(path)!r}")
    centres = centres[:, :2].astype(np.float64)
    tile_um = config.get("tile_um")
    target_mag = None
    if isinstance(tile_um, str):  # slideflow also names a tile by magnification: "10x"
        target_mag = float(tile_um.rstrip("xX")) if tile_um.rstrip("xX").replace(".", "").isdigit() else None
        tile_um = None
    tile_um = None if tile_um is None else float(tile_um)
    if mpp is not None and tile_um is not None:
        side = tile_um / mpp
    else:
        side = _grid_step(centres)
        if side is None:
            raise ValueError(f"images: slideflow slide {sid!r} of sample {sample!r}: the level-0 tile size "
                             "is unknown (fewer than two tiles on a grid and no mpp= with tile_um in "
                             "bags_config.json); pass mpp= (level-0 micrometres per pixel)")
        mpp = mpp if mpp is not None else (None if tile_um is None else tile_um / side)
    extractor = config.get("extractor")
    if isinstance(extractor, Mapping):
        extractor = extractor.get("class") or extractor.get("name")
    geom = SlideGeometry(format="slideflow", frame="level0_px", patch_size=side, mpp=mpp,
                         target_magnification=target_mag,
                         extractor=None if extractor is None else str(extractor))
    top_left = (centres - side / 2.0).astype(np.float32)
    return Slide(slide_id=sid, n=n, shape=info.shape[1:], path=path, coords=top_left, geometry=geom)


def _grid_step(centres: np.ndarray) -> float | None:
    """The smallest positive spacing between distinct x (or y) values of tile centres, or None."""
    steps = []
    for axis in (0, 1):
        diffs = np.diff(np.unique(centres[:, axis]))
        if diffs.size:
            steps.append(float(diffs.min()))
    return min(steps) if steps else None


def _histossl_slide(sample: str, sid: str, path: Path) -> Slide:
    try:
        arr = np.load(path, mmap_mode="r")
    except Exception as err:
        raise read_error(sample, path, err) from err
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise ValueError(f"images: HistoSSL file {str(path)!r} of sample {sample!r} has shape "
                         f"{arr.shape}; expected [N, 3 + D] with (level, x, y) in the first three columns")
    check_numeric(arr[:0], sample, str(path))
    head = np.asarray(arr[:, :3], dtype=np.float64)
    if not np.isfinite(head).all() or (head[:, 0] != np.round(head[:, 0])).any():
        raise ValueError(f"images: HistoSSL file {str(path)!r} of sample {sample!r}: column 0 must hold "
                         "integer pyramid levels and columns 1-2 finite x, y; found other values")
    levels = np.unique(head[:, 0])
    geom = SlideGeometry(format="histossl", frame="stored",
                         level=int(levels[0]) if levels.size == 1 else None)
    return Slide(slide_id=sid, n=int(arr.shape[0]), shape=(int(arr.shape[1]) - 3,), path=path,
                 coords=head[:, 1:3].astype(np.float32), skip_cols=3, geometry=geom)
