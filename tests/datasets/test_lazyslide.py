"""LazySlide / wsidata SpatialData stores, written in their on-disk layout, read back with their geometry.

``_spatialdata_store`` writes a store with spatialdata itself, the way ``wsidata.io.add_tiles`` and
``add_features`` build it (the compatibility proof); ``_hand_store`` writes the same files with zarr,
anndata and pyarrow (a zarr v2 root here, v3 from spatialdata), so the reader is tested without
spatialdata too.
"""

from __future__ import annotations

import json
import struct
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from clinfuse.datasets import ImageBags
from clinfuse.datasets.images.lazyslide import wkb_bounds

RNG = np.random.default_rng(3)
W, DOWN = 256, 2.0  # tiles of 256 px at 0.5 mpp on a 0.25-mpp slide: 512 level-0 px
SPEC = dict(height=W, width=W, stride_height=W, stride_width=W, mpp=0.5, ops_level=0, ops_downsample=DOWN,
            base_level=0, base_downsample=DOWN, tissue_name="tissues")
PROPS = {"shape": [4000, 6000], "n_level": 1, "level_shape": [[4000, 6000]], "level_downsample": [1.0],
         "mpp": 0.25, "magnification": 40.0}


def _tiles(n):
    xy = np.stack([np.arange(n) * 600, np.arange(n) % 2 * 512], axis=1).astype(np.int64)
    return xy, RNG.normal(size=(n, 5)).astype(np.float32)


def _obs(n, order, region="tiles"):
    tid = np.arange(n)[order]
    return pd.DataFrame({"tile_id": tid, "library_id": pd.Categorical([region] * n)}, index=tid.astype(str))


def _spatialdata_store(path, n=4, *, tables=("uni",), order=None, props=PROPS):
    """A store built like wsidata does: box polygons in shapes['tiles'], tables '<model>_tiles' linked by
    region / region_key / instance_key; ``order`` permutes the table rows against the tiles."""
    gpd = pytest.importorskip("geopandas")
    sd = pytest.importorskip("spatialdata")
    from shapely import box
    from spatialdata.models import ShapesModel, TableModel

    xy, feats = _tiles(n)
    side = int(W * DOWN)
    gdf = gpd.GeoDataFrame({"tile_id": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "tissue_id": 0,
                            "geometry": [box(x, y, x + side, y + side) for x, y in xy]})
    order = np.arange(n) if order is None else np.asarray(order)
    made = {f"{m}_tiles": TableModel.parse(ad.AnnData(X=feats[order], obs=_obs(n, order)), region="tiles",
                                           region_key="library_id", instance_key="tile_id") for m in tables}
    sdata = sd.SpatialData(shapes={"tiles": ShapesModel.parse(gdf)}, tables=made,
                           attrs={"tile_spec": {"tiles": SPEC}, "slide_properties": props})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notice about autosharding in its next release
        sdata.write(path)
    return xy, feats


def _wkb_box(x, y, side):
    ring = [(x, y), (x + side, y), (x + side, y + side), (x, y + side), (x, y)]
    points = b"".join(struct.pack("<dd", *p) for p in ring)
    return struct.pack("<BII", 1, 3, 1) + struct.pack("<I", 5) + points  # little-endian Polygon, 1 ring


def _hand_store(path, n=3, *, tables=("uni",), spec=SPEC, props=PROPS, side=None, feats=None, agg=None):
    """The same files without spatialdata: zarr v2 root attributes, GeoParquet tiles, AnnData tables."""
    xy, made = _tiles(n)
    feats = made if feats is None else feats
    side = int(W * DOWN) if side is None else side
    path.mkdir()
    (path / ".zgroup").write_text(json.dumps({"zarr_format": 2}))
    (path / ".zattrs").write_text(json.dumps({"spatialdata_attrs": {"version": "0.1"},
                                              "tile_spec": {"tiles": spec}, "slide_properties": props}))
    shapes = path / "shapes" / "tiles"
    shapes.mkdir(parents=True)
    table = pa.table({"tile_id": np.arange(n), "x": xy[:, 0], "y": xy[:, 1], "tissue_id": np.zeros(n, int),
                      "geometry": [_wkb_box(float(x), float(y), side) for x, y in xy]})
    pq.write_table(table, shapes / "shapes.parquet")
    for model in tables:
        adata = ad.AnnData(X=feats, obs=_obs(n, np.arange(n)),
                           uns={"spatialdata_attrs": {"region": "tiles", "region_key": "library_id",
                                                      "instance_key": "tile_id"}, **(agg or {})})
        _write_zarr(adata, path / "tables" / f"{model}_tiles")
    return xy, feats


def _write_zarr(adata, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # anndata's notice that v3 becomes its default: v2 is meant here
        adata.write_zarr(path)


@pytest.mark.slow
def test_a_spatialdata_store_is_detected_with_its_tile_spec(tmp_path):
    order = [2, 0, 3, 1]  # table rows in another order than the tiles: linked through tile_id
    xy, feats = _spatialdata_store(tmp_path / "slide-1.zarr", order=order)
    bags = ImageBags.from_features(tmp_path)
    assert bags.sample_ids == ["slide-1"] and bags.feature_dim == 5
    bag = bags.load("slide-1")
    np.testing.assert_allclose(bag.data, feats[order])
    np.testing.assert_array_equal(bag.coords, xy[order].astype(np.float32))  # level-0 top-left corners
    g = bags.geometry["slide-1"]
    assert (g.format, g.frame, g.patch_size, g.mpp) == ("lazyslide", "level0_px", 512, 0.25)
    assert (g.magnification, g.target_magnification, g.level, g.overlap) == (40, 20, 0, 0)
    assert g.level0_size == (6000, 4000) and g.extractor == "uni" and g.patch_size_um == 128
    named = ImageBags.from_features(tmp_path / "slide-1.zarr", format="lazyslide", mpp=0.24)
    assert named.sample_ids == ["slide-1"] and named.geometry["slide-1"].mpp == 0.24
    np.testing.assert_allclose(named.load("slide-1", [3, 1]).data, feats[order][[3, 1]])


@pytest.mark.slow
def test_hand_written_stores_join_patients_and_take_mpp_from_the_tile_spec(tmp_path):
    props = {k: v for k, v in PROPS.items() if k != "mpp"}  # the slide's own mpp unknown: tiles' mpp / down
    a, fa = _hand_store(tmp_path / "TCGA-AA-0001-01Z-00-DX1.zarr", n=3, props=props)
    b, fb = _hand_store(tmp_path / "TCGA-AA-0001-01Z-00-DX2.zarr", n=2, props=props)
    _hand_store(tmp_path / "TCGA-BB-0002-01Z-00-DX1.zarr", n=2)
    bags = ImageBags.from_features(tmp_path, patient_of="tcga")
    assert bags.sample_ids == ["TCGA-AA-0001", "TCGA-BB-0002"]
    bag = bags.load("TCGA-AA-0001")
    np.testing.assert_allclose(bag.data, np.concatenate([fa, fb]))
    np.testing.assert_array_equal(bag.coords, np.concatenate([a, b]).astype(np.float32))
    assert bag.slide_ids == ["TCGA-AA-0001-01Z-00-DX1"] * 3 + ["TCGA-AA-0001-01Z-00-DX2"] * 2
    g = bags.geometry["TCGA-AA-0001-01Z-00-DX2"]
    assert (g.mpp, g.patch_size, g.magnification) == (0.25, 512, 40)


def test_without_a_tile_spec_the_polygons_give_the_tile_size(tmp_path):
    _hand_store(tmp_path / "s.zarr", spec={}, props={}, side=300)
    g = ImageBags.from_features(tmp_path).geometry["s"]
    assert (g.patch_size, g.mpp, g.level) == (300, None, None)
    assert wkb_bounds([_wkb_box(5.0, 7.0, 10)]).tolist() == [[5, 7, 15, 17]]


def test_the_feature_table_is_chosen_by_keyword_or_named_in_the_error(tmp_path):
    _hand_store(tmp_path / "s.zarr", tables=("uni", "conch_v1_5"))
    with pytest.raises(ValueError, match=r"s.zarr' of sample 's' holds several feature tables "
                                         r"\['conch_v1_5_tiles', 'uni_tiles'\]; pass feature_key="):
        ImageBags.from_features(tmp_path)
    assert ImageBags.from_features(tmp_path, feature_key="uni").geometry["s"].extractor == "uni"
    both = ImageBags.from_features(tmp_path, feature_key="conch_v1_5_tiles")
    assert both.geometry["s"].extractor == "conch_v1_5"
    with pytest.raises(ValueError, match=r"no feature table 'gigapath'.*tables found: \['conch_v1_5_tiles', "
                                         r"'uni_tiles'\]"):
        ImageBags.from_features(tmp_path, feature_key="gigapath")
    (tmp_path / "bare").mkdir()
    _hand_store(tmp_path / "bare" / "t.zarr", tables=())
    (tmp_path / "bare" / "t.zarr" / "tables").mkdir()
    with pytest.raises(ValueError, match=r"t.zarr' of sample 't' holds no feature table.*tables found: \[\]"):
        ImageBags.from_features(tmp_path / "bare")
    (tmp_path / "plain.zarr").mkdir()
    with pytest.raises(ValueError, match=r"plain.zarr' of sample 'plain' is not a SpatialData store"):
        ImageBags.from_features({"plain": tmp_path / "plain.zarr"})
    (tmp_path / "x.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"cannot be format 'lazyslide'.*found '.h5'"):
        ImageBags.from_features({"x": tmp_path / "x.h5"}, format="lazyslide")


@pytest.mark.slow
def test_lazyslide_tiles_travel_to_geojson_and_anndata(fitted_classifier, tmp_path):
    """The cohort's bags rewritten as LazySlide stores: exports draw 512-px tiles from the tile spec."""
    from clinfuse.datasets import Cohort

    test = fitted_classifier.test
    folder = tmp_path / "stores"
    folder.mkdir()
    for sample in test.images.sample_ids:
        feats = test.images.load(sample).data
        _hand_store(folder / f"{sample}.zarr", n=len(feats), feats=feats)  # the cohort's own features
    images = ImageBags.from_features(folder)
    cohort = Cohort(clinical=test.clinical, genomics=test.genomics, images=images, events=test.events,
                    labels=test.labels)
    report = fitted_classifier.model.explain(cohort)
    sample = cohort.images.sample_ids[0]
    collection = json.loads(report.to_geojson(tmp_path / "a.geojson", sample, kind="exploratory").read_text())
    ring = np.asarray(collection["features"][1]["geometry"]["coordinates"][0])
    assert ring[0].tolist() == [600.0, 512.0] and ring[2].tolist() == [1112.0, 1024.0]
    assert collection["properties"]["patch_size"] == 512
    adata = next(iter(report.to_patch_anndata(sample).values()))
    assert adata.uns["geometry"]["format"] == "lazyslide" and adata.uns["geometry"]["mpp"] == 0.25
    assert adata.uns["spatial"][sample]["scalefactors"]["spot_diameter_fullres"] == 512
    np.testing.assert_array_equal(adata.obsm["spatial"][:2], [[0, 0], [600, 512]])


def test_yaml_names_the_lazyslide_feature_table(tmp_path):
    from clinfuse.fusion.config import load_data_config

    (tmp_path / "stores").mkdir()
    _, feats = _hand_store(tmp_path / "stores" / "p1.zarr", n=2, tables=("uni", "virchow"))
    pd.DataFrame({"sample_id": ["p1"], "age": [60.0], "label": ["a"]}).to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "data.yaml").write_text("clinical: c.csv\nimages: stores\nlabel: label\n"
                                        "image_format: lazyslide\nimage_feature_key: virchow\n")
    cohort = load_data_config(tmp_path / "data.yaml").to_cohort(task="classification", require_targets=True)
    assert cohort.images.geometry["p1"].extractor == "virchow"
    np.testing.assert_allclose(cohort.images.load("p1").data, feats)
    (tmp_path / "stores" / "p1.zarr" / "shapes" / "tiles" / "shapes.parquet").unlink()
    with pytest.raises(ValueError, match=r"p1.zarr' of sample 'p1' has no tiles 'shapes/tiles/shapes.parq"):
        ImageBags.from_features(tmp_path / "stores", feature_key="uni")


@pytest.mark.slow
def test_lazyslide_slide_aggregates_load_as_embeddings_and_vectors(tmp_path):
    """feature_aggregation's uns['agg_ops']['agg_slide'] (a [1, D] TITAN vector): a one-token bag, or
    with slide_embeddings a per-patient row (the mean of a patient's slides)."""
    from clinfuse.datasets import slide_embeddings

    vecs = RNG.normal(size=(3, 7)).astype(np.float32)
    for k, sid in enumerate(["A-1", "A-2", "B-1"]):
        agg = {"agg_ops": {"agg_slide": {"encoder": "titan", "tile_key": "tiles", "features": vecs[k:k + 1]},
                           "agg_tissue_id": {"encoder": "mean", "features": RNG.normal(size=(2, 5))}}}
        _hand_store(tmp_path / f"{sid}.zarr", agg=agg)
    bags = ImageBags.from_features(tmp_path, agg_key="agg_slide")
    assert bags.feature_dim == 7 and bags.n_patches("A-2") == 1
    np.testing.assert_allclose(bags.load("A-2").data, vecs[1:2])
    g = bags.geometry["A-2"]
    assert g.slide_level and g.extractor == "titan" and g.mpp == 0.25
    rows = slide_embeddings(tmp_path, agg_key="agg_slide", patient_of=lambda s: s.split("-")[0])
    assert list(rows.index) == ["A", "B"]
    np.testing.assert_allclose(rows.loc["A"], vecs[:2].astype(np.float64).mean(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match=r"aggregate 'agg_tissue_id' .* holds features of shape \(2, 5\)"):
        ImageBags.from_features(tmp_path, agg_key="agg_tissue_id")
    with pytest.raises(ValueError, match=r"no aggregate 'agg_x' in uns\['agg_ops'\] \(found \['agg_slide', "
                                         r"'agg_tissue_id'\]\)"):
        ImageBags.from_features(tmp_path, agg_key="agg_x")
    with pytest.raises(ValueError, match=r"patch bags: 'A-1' \(slide 'A-1': 3 patches\)"):
        slide_embeddings(tmp_path)  # the tile features are no slide embedding
