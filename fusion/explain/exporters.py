"""Exports of a tidy attention frame: CSV, Parquet, JSON, AnnData (shared tokens, per-slide patches), GeoJSON.

Each writer is atomic (a temporary next to the target, renamed when complete). ``AttentionReport``'s
``to_*`` methods call these after checking the kinds asked for.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ...datasets.atomic import atomic_path, write_text_atomic
from .stream import PARQUET_OPTIONS
from .table import ARROW_SCHEMA, spatial_modalities, token_column_modalities


def write_csv(frame: pd.DataFrame, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def write_parquet(frame: pd.DataFrame, path: str | Path) -> Path:
    """One Parquet file of schema :data:`~.table.ARROW_SCHEMA` (what the streamed export writes too)."""
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(frame, schema=ARROW_SCHEMA, preserve_index=False), tmp,
                       **PARQUET_OPTIONS)
    return Path(path)


def write_json(frame: pd.DataFrame, path: str | Path) -> Path:
    """JSON records (one object per row; NA as null)."""
    return write_text_atomic(path, frame.to_json(orient="records", indent=None))


def _layer_name(kind: str, target_class: str) -> str:
    return kind if target_class == "" else f"{kind}[{target_class}]"


def shared_token_anndata(frame: pd.DataFrame):
    """AnnData: obs = samples, var = the tokens samples share, one layer per kind and class.

    Shared tokens are those of the modalities without per-sample token columns (modalities, clinical
    variables, genes or gene sets; see :func:`~.table.token_column_modalities`); patches and events are
    per sample (:func:`patch_anndata`). Entries a sample does not have are NaN. ``X`` is left empty.
    """
    import anndata as ad

    kinds = sorted(frame["kind"].dropna().unique())
    frame = frame[~frame["modality"].isin(token_column_modalities())]
    if frame.empty:
        raise ValueError("this report has no rows over shared tokens (modalities, clinical variables, "
                         f"genes); kinds: {kinds}")
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
        table = rows.pivot_table(index="sample_id", columns="_var", values="value", aggfunc="sum")
        table = table.rename(columns=rename).reindex(index=obs.index, columns=var.index)
        layers[_layer_name(kind, cls)] = table.to_numpy(dtype=np.float64)
    var.index.name = "token"
    return ad.AnnData(obs=obs, var=var, layers=layers)


def patch_anndata(frame: pd.DataFrame, sample_id: str | None = None, *,
                  geometry: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One AnnData per (sample, slide) of patch-level rows; coordinates in ``obsm["spatial"]``.

    Keys are ``"sample"`` or ``"sample:slide"``; obs are the patches (by position), one layer per kind
    and class of the patch rows.
    """
    import anndata as ad

    frame = frame[frame["modality"].isin(spatial_modalities())]
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
            values = part.set_index("token")["value"].reindex(obs.index).to_numpy(np.float64)
            layers[_layer_name(kind, cls)] = values[:, None]
        adata = ad.AnnData(obs=obs, var=pd.DataFrame(index=["attention"]), layers=layers)
        adata.obsm["spatial"] = patches[["x", "y"]].to_numpy(np.float64)
        adata.uns["sample_id"], adata.uns["slide_id"] = sid, sl
        g = (geometry or {}).get(sl)
        if g is not None:  # the scale in scverse's place, so squidpy / spatialdata draw true tiles
            adata.uns["geometry"] = {k: v for k, v in g.to_dict().items() if v is not None}  # h5ad-safe
            scale = {"spot_diameter_fullres": g.patch_size, "microns_per_pixel": g.mpp}
            adata.uns["spatial"] = {sl: {"scalefactors": {k: v for k, v in scale.items() if v is not None}}}
        out[sid if sl == "" else f"{sid}:{sl}"] = adata
    return out


def grid_spacing(xy: np.ndarray) -> float:
    """The smallest positive step between patch coordinates ``[N, 2]`` along x or y (1 when none)."""
    steps = np.concatenate([np.diff(np.unique(xy[:, i])) for i in range(2)])
    steps = steps[steps > 0]
    return float(steps.min()) if len(steps) else 1.0


def write_geojson(frame: pd.DataFrame, path: str | Path, sample_id: str, *, kind: str,
                  target_class: str | None = None, slide_id: str | None = None,
                  patch_size: float | None = None, magnification: float | None = None,
                  geometry: Mapping[str, Any] | None = None) -> Path:
    """Patch rows of one sample and kind as a GeoJSON FeatureCollection that QuPath imports.

    Each patch becomes a square tile (``objectType: "tile"``) at its ``x, y`` (top-left, level-0 pixels)
    of side ``patch_size`` (default: the slide's ``geometry[slide_id].patch_size``, else
    :func:`grid_spacing`), with the attention in ``measurements``. ``magnification`` (default: the
    geometry's) is stored in the collection's properties, with the geometry of each slide drawn.
    """
    rows = frame[(frame["sample_id"] == str(sample_id)) & (frame["kind"] == kind)
                 & frame["modality"].isin(spatial_modalities())]
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
    slides = rows["slide_id"].fillna("").astype(str).to_numpy()
    geoms = {sl: (geometry or {}).get(sl) for sl in dict.fromkeys(slides)}
    sizes = {sl: float(patch_size) if patch_size else
             (g.patch_size if g is not None and g.patch_size else grid_spacing(xy))
             for sl, g in geoms.items()}
    known = [g for g in geoms.values() if g is not None]
    if magnification is None and known:
        magnification = known[0].magnification
    features = []
    for (x, y), token, value, raw, sl in zip(xy, rows["token"], rows["value"], rows["raw_value"], slides):
        size = sizes[sl]
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
                                 "patch_size": (next(iter(sizes.values())) if len(set(sizes.values())) == 1
                                                else sizes),
                                 "magnification": magnification,
                                 "geometry": {sl: g.to_dict() for sl, g in geoms.items() if g is not None}}}
    return write_text_atomic(path, json.dumps(collection))
