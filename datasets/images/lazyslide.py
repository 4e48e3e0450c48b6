"""The LazySlide / wsidata reader: one SpatialData zarr store per slide, read from its on-disk format.

What ``wsidata`` (LazySlide's data layer) writes with ``wsi.write()`` into ``<slide>.zarr``:

- ``shapes/<tile_key>/shapes.parquet``: the tiles (``tile_key`` is ``"tiles"`` by default) as GeoParquet,
  one box polygon per tile in level-0 pixels (WKB geometry), columns ``tile_id``, ``x``, ``y``,
  ``tissue_id``; the GeoDataFrame's index is the tile's instance id.
- ``tables/<model>_<tile_key>``: the features, an AnnData (zarr) with ``X [N, D]`` and ``obs`` columns
  ``tile_id`` and ``library_id``; ``uns["spatialdata_attrs"]`` links it to the tiles: ``region`` (the
  tile key), ``region_key`` (``"library_id"``) and ``instance_key`` (``"tile_id"``, matched to the shapes'
  index).
- root attributes (``zarr.json``, or ``.zattrs`` in zarr v2 stores): ``tile_spec[<tile_key>]`` with
  ``width``, ``height``, ``stride_width``, ``stride_height``, ``mpp`` (of the tiles), ``ops_level``,
  ``base_downsample`` (tile pixels -> level-0 pixels) ...; ``slide_properties`` with the level-0 ``mpp``,
  ``magnification`` and ``shape`` (height, width).

``lazyslide.tl.feature_aggregation`` adds slide-level vectors to a table: ``uns["agg_ops"][<agg key>]``
with ``features [1, D]`` and the ``encoder`` (``agg_slide`` for the whole slide); ``agg_key=`` reads one.

It is read with zarr, anndata and pyarrow (dependencies already), so ``spatialdata`` itself is not needed;
the features stay on disk and each bag reads only its rows. Coordinates are the top-left corners of the
tile polygons (level-0 px, the bounds wsidata reads tiles from), in the table's row order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .geometry import SlideGeometry
from .readers import FILE_READERS, BagFile, read_error
from .sources import Slide, check_numeric

STORE_SUFFIX = ".zarr"
TILE_KEY = "tiles"


def group_attrs(folder: Path) -> dict[str, Any]:
    """The attributes of a zarr group folder (v3 ``zarr.json``, v2 ``.zattrs``); {} when it has none."""
    for name, inner in (("zarr.json", "attributes"), (".zattrs", None)):
        path = folder / name
        if path.exists():
            meta = json.loads(path.read_text())
            return dict(meta.get(inner) or {}) if inner else dict(meta)
    return {}


def is_store(path: Path) -> bool:
    """True for a SpatialData zarr store (a folder with a ``tables/`` or ``shapes/`` group)."""
    return path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists()) and (
        (path / "tables").is_dir() or (path / "shapes").is_dir())


def _children(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def choose_table(store: Path, sample: str, feature_key: str | None,
                 specs: dict[str, Any]) -> str:
    """The feature table of ``store``: ``feature_key`` as a table name or a model name (``"uni"`` ->
    ``"uni_tiles"``, LazySlide's naming), else the one table named ``<model>_<tile key>``."""
    tables = _children(store / "tables")
    tile_keys = sorted(specs, key=len, reverse=True) or [TILE_KEY]
    if feature_key is not None:
        for name in (feature_key, *(f"{feature_key}_{k}" for k in tile_keys)):
            if name in tables:
                return name
        raise ValueError(f"images: LazySlide store {str(store)!r} of sample {sample!r} has no feature table "
                         f"{feature_key!r} (nor {feature_key}_<tile key>); tables found: {tables}")
    found = [t for t in tables if any(t.endswith(f"_{k}") and len(t) > len(k) + 1 for k in tile_keys)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ValueError(f"images: LazySlide store {str(store)!r} of sample {sample!r} holds no feature "
                         f"table (<model>_<tile key>, tile keys {tile_keys}); tables found: {tables}. Run "
                         "lazyslide.tl.feature_extraction, or pass feature_key= naming the table")
    raise ValueError(f"images: LazySlide store {str(store)!r} of sample {sample!r} holds several feature "
                     f"tables {found}; pass feature_key= (a table name or a model name such as "
                     f"{found[0].rsplit('_' + tile_keys[-1], 1)[0]!r})")


def _read_elem(group: Any) -> Any:
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(group)


def _link(table: Path, sample: str) -> tuple[Any, str | None, str | None, str | None]:
    """(obs DataFrame, region, region_key, instance_key) of an AnnData zarr table."""
    import zarr

    group = zarr.open_group(str(table), mode="r")
    obs = _read_elem(group["obs"])
    attrs: dict[str, Any] = {}
    if "uns" in group and "spatialdata_attrs" in group["uns"]:
        attrs = _read_elem(group["uns"]["spatialdata_attrs"])
    region = attrs.get("region")
    if isinstance(region, np.ndarray | list | tuple):
        region = list(np.asarray(region).reshape(-1))
        if len(region) != 1:
            raise ValueError(f"images: LazySlide table {str(table)!r} of sample {sample!r} annotates several "
                             f"regions {region}; expected the one tile shapes element")
        region = region[0]
    return obs, None if region is None else str(region), attrs.get("region_key"), attrs.get("instance_key")


def wkb_bounds(blobs: list[bytes]) -> np.ndarray:
    """``[N, 4]`` (minx, miny, maxx, maxy) of WKB polygons / multipolygons (2-D, either byte order)."""
    out = np.empty((len(blobs), 4), dtype=np.float64)
    for i, blob in enumerate(blobs):
        xy = _wkb_points(memoryview(blob), 0)[0]
        out[i] = (xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max())
    return out


def _wkb_points(buf: memoryview, at: int) -> tuple[np.ndarray, int]:
    """All vertices of the (multi)polygon starting at byte ``at``, and the offset after it."""
    order = "<" if buf[at] == 1 else ">"
    kind = int(np.frombuffer(buf, dtype=f"{order}u4", count=1, offset=at + 1)[0])
    at += 5
    if kind % 1000 == 6:  # MultiPolygon: polygons follow, each with its own header
        n = int(np.frombuffer(buf, dtype=f"{order}u4", count=1, offset=at)[0])
        at += 4
        parts = []
        for _ in range(n):
            xy, at = _wkb_points(buf, at)
            parts.append(xy)
        return np.concatenate(parts), at
    if kind % 1000 != 3:
        raise ValueError(f"WKB geometry type {kind} is not a polygon")
    rings = int(np.frombuffer(buf, dtype=f"{order}u4", count=1, offset=at)[0])
    at += 4
    parts = []
    for _ in range(rings):
        n = int(np.frombuffer(buf, dtype=f"{order}u4", count=1, offset=at)[0])
        parts.append(np.frombuffer(buf, dtype=f"{order}f8", count=2 * n, offset=at + 4).reshape(n, 2))
        at += 4 + 16 * n
    return np.concatenate(parts), at


def _tile_corners(store: Path, tile_key: str, sample: str) -> tuple[Any, np.ndarray]:
    """(instance ids, ``[N, 4]`` bounds) of the tiles in ``shapes/<tile_key>/shapes.parquet``."""
    import pyarrow.parquet as pq

    path = store / "shapes" / tile_key / "shapes.parquet"
    if not path.exists():
        raise ValueError(f"images: LazySlide store {str(store)!r} of sample {sample!r} has no tiles "
                         f"{str(path.relative_to(store))!r} (shapes found: {_children(store / 'shapes')}); "
                         "expected GeoParquet tiles (spatialdata >= 0.2)")
    frame = pq.read_table(path).to_pandas()
    geometry = frame.get("geometry")
    if geometry is not None and len(frame) and isinstance(geometry.iloc[0], bytes | bytearray):
        return frame.index, wkb_bounds(list(geometry))
    if {"x", "y"} <= set(frame.columns):  # geoarrow encoding: the tile corners wsidata also stores
        xy = frame[["x", "y"]].to_numpy(dtype=np.float64)
        return frame.index, np.hstack([xy, np.full_like(xy, np.nan)])
    raise ValueError(f"images: cannot read the tile polygons of {str(path)!r} (sample {sample!r}): expected "
                     "WKB geometry or x, y columns")


def lazyslide_slide(sample: str, sid: str, store: Path, *, feature_key: str | None = None,
                    mpp: float | None = None, agg_key: str | None = None) -> Slide:
    """One LazySlide store as a :class:`Slide`: features ``tables/<table>/X`` read lazily, coordinates the
    top-left corners of the linked tiles (level-0 px), geometry from the tile spec and slide properties.
    With ``agg_key`` (``"agg_slide"``), the table's slide-level vector instead: what
    ``lazyslide.tl.feature_aggregation`` stores in ``uns["agg_ops"][agg_key]["features"]``, as a
    one-token slide embedding."""
    import zarr

    if not is_store(store):
        raise ValueError(f"images: {str(store)!r} of sample {sample!r} is not a SpatialData store (a zarr "
                         "folder with tables/ and shapes/ groups); expected a LazySlide <slide>.zarr")
    attrs = group_attrs(store)
    specs = attrs.get("tile_spec") or {}
    name = choose_table(store, sample, feature_key, specs)
    table = store / "tables" / name
    try:
        obs, region, _, instance_key = _link(table, sample)
        x = zarr.open_group(str(table), mode="r").get("X")
    except Exception as err:
        raise read_error(sample, table, err) from err
    if not isinstance(x, zarr.Array) or len(x.shape) != 2:
        raise ValueError(f"images: LazySlide table {str(table)!r} of sample {sample!r} has no dense X "
                         f"[N, D] (found {type(x).__name__}); expected the tile features")
    check_numeric(np.empty(0, dtype=x.dtype), sample, str(table))
    # no region stated: the tile key the table is named after (<model>_<tile key>), else "tiles"
    tile_key = region or next((k for k in sorted(specs, key=len, reverse=True) if name.endswith("_" + k)),
                              TILE_KEY)
    model = name[: -len(tile_key) - 1] if name.endswith("_" + tile_key) else name
    spec, props = specs.get(tile_key) or {}, attrs.get("slide_properties") or {}
    if agg_key is not None:
        return _aggregate_slide(sample, sid, table, agg_key, spec, props, mpp, model)
    ids, bounds = _tile_corners(store, tile_key, sample)
    if instance_key is not None and instance_key in obs.columns:
        wanted = obs[instance_key].to_numpy()
        pos = _positions(ids, wanted)
        if pos is None:
            raise ValueError(f"images: LazySlide table {str(table)!r} of sample {sample!r}: its "
                             f"{instance_key!r} values do not all match the tiles of shapes[{tile_key!r}]")
    elif len(ids) == x.shape[0]:
        pos = np.arange(x.shape[0])
    else:
        raise ValueError(f"images: LazySlide table {str(table)!r} of sample {sample!r} has {x.shape[0]} rows "
                         f"but shapes[{tile_key!r}] has {len(ids)} tiles and no instance_key links them")
    if len(pos) != x.shape[0]:
        raise ValueError(f"images: LazySlide table {str(table)!r} of sample {sample!r} has {x.shape[0]} rows "
                         f"but {len(pos)} obs entries")
    corners = bounds[pos]
    geom = _geometry(spec, props, mpp, corners, extractor=model)
    return Slide(slide_id=sid, n=int(x.shape[0]), shape=(int(x.shape[1]),), path=store,
                 key=f"tables/{name}/X", coords=corners[:, :2].astype(np.float32), geometry=geom)


def _aggregate_slide(sample: str, sid: str, table: Path, agg_key: str, spec: dict[str, Any],
                     props: dict[str, Any], mpp: float | None, model: str) -> Slide:
    import zarr

    group = zarr.open_group(str(table), mode="r")
    ops = group["uns"]["agg_ops"] if "uns" in group and "agg_ops" in group["uns"] else None
    found = sorted(ops.group_keys()) if ops is not None else []
    if agg_key not in found:
        raise ValueError(f"images: LazySlide table {str(table)!r} of sample {sample!r} has no aggregate "
                         f"{agg_key!r} in uns['agg_ops'] (found {found}); run "
                         "lazyslide.tl.feature_aggregation, or leave agg_key=None for the tile features")
    info = _read_elem(ops[agg_key])
    vec = np.asarray(info.get("features"))
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    if vec.ndim != 1 or not vec.size:
        raise ValueError(f"images: LazySlide aggregate {agg_key!r} of {str(table)!r} (sample {sample!r}) "
                         f"holds features of shape {vec.shape}; expected one slide-level vector [1, D] (an "
                         "aggregate by group, such as by tissue piece, has several)")
    check_numeric(vec, sample, f"{table}:uns/agg_ops/{agg_key}")
    if not np.isfinite(vec).all():
        raise ValueError(f"images: LazySlide aggregate {agg_key!r} of sample {sample!r} has NaN or inf")
    encoder = info.get("encoder")
    geom = _geometry(spec, props, mpp, None, extractor=encoder if isinstance(encoder, str) else model,
                     slide_level=True)
    return Slide(slide_id=sid, n=1, shape=(int(vec.size),), array=vec.astype(np.float32)[None],
                 path=table, geometry=geom)


def _positions(ids: Any, wanted: np.ndarray) -> np.ndarray | None:
    import pandas as pd

    index = pd.Index(ids)
    for cast in (lambda v: v, lambda v: v.astype(str)):  # instance ids may be stored as str or int
        try:
            pos = pd.Index(cast(index.to_numpy())).get_indexer(cast(wanted))
        except (TypeError, ValueError):
            continue
        if (pos >= 0).all():
            return pos
    return None


def _geometry(spec: dict[str, Any], props: dict[str, Any], mpp: float | None, corners: np.ndarray | None,
              extractor: str, slide_level: bool = False) -> SlideGeometry:
    width, down = spec.get("width"), spec.get("base_downsample")
    patch = float(int(width * down)) if width and down else None  # wsidata's base_width
    if patch is None and corners is not None and len(corners) and np.isfinite(corners[:, 2]).all():
        patch = float(np.median(corners[:, 2] - corners[:, 0]))  # no spec: the polygons' own side
    slide_mpp = props.get("mpp")
    if slide_mpp is None and spec.get("mpp") and down:
        slide_mpp = spec["mpp"] / down  # tiles' mpp over their downsample from level 0
    mag = props.get("magnification")
    shape = props.get("shape")
    stride = spec.get("stride_width")
    return SlideGeometry(
        format="lazyslide", frame="level0_px", patch_size=patch or None,
        mpp=mpp if mpp is not None else (None if slide_mpp is None else float(slide_mpp)),
        magnification=None if not mag else float(mag),
        target_magnification=float(mag) / float(down) if mag and down else None,
        level=None if spec.get("ops_level") is None else int(spec["ops_level"]),
        overlap=float(width - stride) if width and stride is not None else None,
        level0_size=(int(shape[1]), int(shape[0])) if shape and len(shape) == 2 else None,
        extractor=extractor, slide_level=slide_level)


class ZarrTableFile(BagFile):
    """Rows of a store's feature matrix ``<store>/<key>`` (a zarr array), read without the rest."""

    def probe(self, path: Path) -> Any:
        raise NotImplementedError("LazySlide stores are probed by lazyslide_slide")

    def read(self, path: Path, rows: np.ndarray, single: bool, coords: bool,
             key: str = "features") -> tuple[np.ndarray, np.ndarray | None]:
        import zarr

        array = zarr.open_array(str(path / key), mode="r")
        return np.asarray(array.get_orthogonal_selection((rows, slice(None)))), None


FILE_READERS[STORE_SUFFIX] = ZarrTableFile()
