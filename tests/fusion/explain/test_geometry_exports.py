"""A cohort read from TRIDENT files: the explanation exports draw tiles of the files' true size."""

from __future__ import annotations

import json

import h5py
import numpy as np
from clinfuse.datasets import Cohort, ImageBags
from clinfuse.fusion.explain.plotting import SCALE_BAR_GID

PATCH0 = 512  # level-0 tile side stated by the files; the coordinates step by 600 so spacing would differ


def _trident_cohort(test, folder):
    folder.mkdir()
    for sample in test.images.sample_ids:
        bag = test.images.load(sample)
        n = len(bag)
        coords = np.stack([np.arange(n) * 600, np.zeros(n)], axis=1).astype(np.int64)
        with h5py.File(folder / f"{sample}.h5", "w") as f:
            f["features"] = bag.data
            c = f.create_dataset("coords", data=coords)
            c.attrs["patch_size"], c.attrs["patch_size_level0"] = 256, PATCH0
            c.attrs["level0_magnification"], c.attrs["target_magnification"] = 40, 20
    images = ImageBags.from_features(folder, mpp=0.25)
    return Cohort(clinical=test.clinical, genomics=test.genomics, images=images, events=test.events,
                  labels=test.labels)


def test_geojson_and_anndata_use_the_trident_tile_size(fitted_classifier, tmp_path):
    cohort = _trident_cohort(fitted_classifier.test, tmp_path / "features_uni")
    report = fitted_classifier.model.explain(cohort)
    sample = cohort.images.sample_ids[0]
    assert report.geometry[sample].patch_size == PATCH0
    path = report.to_geojson(tmp_path / "a.geojson", sample, kind="exploratory")
    collection = json.loads(path.read_text())
    ring = np.asarray(collection["features"][1]["geometry"]["coordinates"][0])
    assert ring[0].tolist() == [600.0, 0.0] and ring[2].tolist() == [600.0 + PATCH0, PATCH0]
    props = collection["properties"]
    assert props["patch_size"] == PATCH0 and props["magnification"] == 40
    assert props["geometry"][sample]["frame"] == "level0_px"
    adata = next(iter(report.to_patch_anndata(sample).values()))
    assert adata.uns["geometry"]["patch_size"] == PATCH0 and adata.uns["geometry"]["format"] == "trident"
    assert adata.uns["spatial"][sample]["scalefactors"]["spot_diameter_fullres"] == PATCH0
    np.testing.assert_array_equal(adata.obsm["spatial"][:2], [[0, 0], [600, 0]])
    fig = report.plot_patches(sample, kind="exploratory", path=tmp_path / "map.png")
    maps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert maps and all(ax.get_xlabel() == "x (µm)" for ax in maps)  # the files' mpp, not guessed
    assert [a for a in maps[0].artists if a.get_gid() == SCALE_BAR_GID]
