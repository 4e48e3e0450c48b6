"""Each extractor layout, written in that tool's own file layout, read back with its geometry."""

import json

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.datasets import ImageBags
from clinfuse.datasets.images import SlideGeometry

RNG = np.random.default_rng(0)


def _feats(n, d=6):
    return RNG.normal(size=(n, d)).astype(np.float32)


def _trident(path, n=4, *, ps=256, ps0=512, mag0=40, mag=20):
    feats = _feats(n)
    coords = (np.arange(n * 2).reshape(n, 2) * ps0).astype(np.int64)
    with h5py.File(path, "w") as f:
        f["features"] = feats
        c = f.create_dataset("coords", data=coords)
        for k, v in dict(patch_size=ps, patch_size_level0=ps0, level0_magnification=mag0,
                         target_magnification=mag, overlap=0, level0_width=90000,
                         level0_height=60000).items():
            c.attrs[k] = v
        c.attrs["name"] = path.stem
    return feats, coords


def _stamp(path, n=3, *, tile_um=256.0, tile_px=224, with_px=True):
    feats = _feats(n)
    coords_um = np.array([[0.0, 0.0], [256.0, 0.0], [512.0, 256.0]])[:n].astype(np.float32)
    with h5py.File(path, "w") as f:
        f["coords"] = coords_um
        f["feats"] = feats
        f.attrs["extractor"] = "ctranspath"
        f.attrs["unit"] = "um"
        f.attrs["tile_size_um"] = tile_um
        if with_px:
            f.attrs["tile_size_px"] = tile_px
        f.attrs["feat_type"] = "tile"
    return feats, coords_um


def test_trident_folder_level0_px_and_tile_spec(tmp_path):
    feats, coords = _trident(tmp_path / "TCGA-AA-0001.h5")
    _trident(tmp_path / "TCGA-AA-0002.h5", n=2)
    bags = ImageBags.from_features(tmp_path)
    assert bags.sample_ids == ["TCGA-AA-0001", "TCGA-AA-0002"]
    bag = bags.load("TCGA-AA-0001")
    np.testing.assert_allclose(bag.data, feats)
    np.testing.assert_array_equal(bag.coords, coords.astype(np.float32))
    g = bags.geometry["TCGA-AA-0001"]
    assert isinstance(g, SlideGeometry)
    assert (g.format, g.frame, g.unit) == ("trident", "level0_px", "px")
    assert g.patch_size == 512 and g.magnification == 40 and g.target_magnification == 20
    assert g.level0_size == (90000, 60000) and g.overlap == 0 and g.mpp is None
    with pytest.raises(AttributeError):
        g.patch_size = 1  # frozen
    g2 = ImageBags.from_features(tmp_path, format="trident", mpp=0.25).geometry["TCGA-AA-0002"]
    assert g2.mpp == 0.25 and g2.patch_size_um == 128.0


def test_trident_slide_embedding_is_a_one_token_bag(tmp_path):
    folder = tmp_path / "slide_features_titan"
    folder.mkdir()
    vec = RNG.normal(size=8).astype(np.float32)
    with h5py.File(folder / "s1.h5", "w") as f:
        f["features"] = vec
    bags = ImageBags.from_features(folder)
    assert bags.n_patches("s1") == 1 and bags.feature_dim == 8
    bag = bags.load("s1")
    np.testing.assert_allclose(bag.data, vec[None])
    assert np.isnan(bag.coords).all()
    assert bags.geometry["s1"].slide_level


def test_clam_output_folder_reads_h5_files_and_pt_files(tmp_path):
    (tmp_path / "h5_files").mkdir()
    (tmp_path / "pt_files").mkdir()
    feats = _feats(3)
    coords = np.array([[0, 0], [256, 0], [0, 256]], dtype=np.int64)
    with h5py.File(tmp_path / "h5_files" / "slideA.h5", "w") as f:
        f["features"], f["coords"] = feats, coords
    torch.save(torch.from_numpy(feats), tmp_path / "pt_files" / "slideA.pt")
    bags = ImageBags.from_features(tmp_path)  # the CLAM root: h5_files/ is preferred (it has coords)
    np.testing.assert_array_equal(bags.load("slideA").coords, coords)
    g = bags.geometry["slideA"]
    assert (g.format, g.frame, g.patch_size) == ("clam", "level0_px", None)
    pt = ImageBags.from_features(tmp_path / "pt_files", format="clam")
    np.testing.assert_allclose(pt.load("slideA").data, feats)
    assert pt.geometry["slideA"].format == "clam"


def test_clam_patching_attrs_give_level0_patch_size(tmp_path):
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["features"] = _feats(2)
        c = f.create_dataset("coords", data=np.array([[0, 0], [1024, 0]]))
        c.attrs["patch_size"], c.attrs["patch_level"] = 256, 1
        c.attrs["downsample"] = np.array([4.0, 4.0])
    g = ImageBags.from_features({"s": tmp_path / "s.h5"}).geometry["s"]
    assert (g.format, g.patch_size, g.level) == ("clam", 1024.0, 1)


def test_stamp_um_to_px_with_tile_resolution_or_level0_mpp(tmp_path):
    feats, um = _stamp(tmp_path / "slide1.h5")
    bags = ImageBags.from_features(tmp_path)
    np.testing.assert_allclose(bags.load("slide1").data, feats)
    tile_mpp = 256.0 / 224
    np.testing.assert_allclose(bags.load("slide1").coords, um / tile_mpp, rtol=1e-6)
    g = bags.geometry["slide1"]
    assert (g.format, g.frame, g.patch_size, g.extractor) == ("stamp", "px", 224.0, "ctranspath")
    assert g.mpp == pytest.approx(tile_mpp) and g.patch_size_um == pytest.approx(256.0)
    lv0 = ImageBags.from_features(tmp_path, format="stamp", mpp={"slide1": 0.5})
    np.testing.assert_allclose(lv0.load("slide1").coords, um / 0.5)
    g0 = lv0.geometry["slide1"]
    assert (g0.frame, g0.patch_size, g0.mpp) == ("level0_px", 512.0, 0.5)


def test_stamp_without_tile_px_stays_in_micrometres(tmp_path):
    _, um = _stamp(tmp_path / "old.h5", with_px=False)
    bags = ImageBags.from_features({"p": tmp_path / "old.h5"})
    np.testing.assert_array_equal(bags.load("p").coords, um)
    g = bags.geometry["old"]
    assert (g.frame, g.unit, g.patch_size, g.mpp, g.patch_size_um) == ("um", "um", 256.0, None, 256.0)


def test_stamp_wrong_unit_and_missing_coords_are_named(tmp_path):
    _stamp(tmp_path / "mm.h5")
    with h5py.File(tmp_path / "mm.h5", "a") as f:
        f.attrs["unit"] = "mm"
    with pytest.raises(ValueError, match=r"mm.h5'.*sample 'p'.*unit 'mm'; expected 'um'"):
        ImageBags.from_features({"p": tmp_path / "mm.h5"})
    with h5py.File(tmp_path / "nc.h5", "w") as f:
        f["feats"] = _feats(2)
    with pytest.raises(ValueError, match=r"STAMP file .*nc.h5'.*sample 'q'.*no 'coords'"):
        ImageBags.from_features({"q": tmp_path / "nc.h5"})


def _slideflow(folder, name, centres, *, tile_px=299, tile_um=302):
    feats = _feats(len(centres))
    torch.save(torch.from_numpy(feats), folder / f"{name}.pt")
    np.savez(folder / f"{name}.index.npz", np.asarray(centres, dtype=np.int64))
    (folder / "bags_config.json").write_text(json.dumps(
        {"extractor": {"class": "slideflow.model.extractors.retccl.RetCCLFeatures", "kwargs": {}},
         "normalizer": None, "num_features": 6, "tile_px": tile_px, "tile_um": tile_um}))
    return feats


def test_slideflow_centres_become_top_left(tmp_path):
    centres = [[302, 302], [906, 302], [302, 906]]  # a grid with a step of 604 level-0 px
    feats = _slideflow(tmp_path, "slideX", centres)
    bags = ImageBags.from_features(tmp_path)
    assert bags.sample_ids == ["slideX"]  # the .index.npz and bags_config.json are not samples
    bag = bags.load("slideX")
    np.testing.assert_allclose(bag.data, feats)
    np.testing.assert_array_equal(bag.coords, np.asarray(centres) - 302)
    g = bags.geometry["slideX"]
    assert (g.format, g.frame, g.patch_size) == ("slideflow", "level0_px", 604.0)
    assert g.mpp == pytest.approx(0.5) and g.extractor.endswith("RetCCLFeatures")
    exact = ImageBags.from_features(tmp_path, format="slideflow", mpp=0.25).geometry["slideX"]
    assert exact.patch_size == pytest.approx(1208.0)
    np.testing.assert_array_equal(
        ImageBags.from_features(tmp_path, mpp=0.25).load("slideX").coords, np.asarray(centres) - 604)


def test_slideflow_errors_name_the_file(tmp_path):
    _slideflow(tmp_path, "one", [[100, 100]])
    with pytest.raises(ValueError, match=r"slideflow slide 'one'.*tile size is unknown.*pass mpp="):
        ImageBags.from_features(tmp_path)
    torch.save(torch.from_numpy(_feats(2)), tmp_path / "lone.pt")
    with pytest.raises(ValueError, match=r"lone.pt' of sample 'lone' has no lone.index.npz"):
        ImageBags.from_features({"lone": tmp_path / "lone.pt"}, format="slideflow")
    np.savez(tmp_path / "lone.index.npz", np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"lone.index.npz' of sample 'lone'.*\(5, 2\); expected \(2, 2\)"):
        ImageBags.from_features({"lone": tmp_path / "lone.pt"})


def test_histossl_npy_level_x_y_columns(tmp_path):
    feats = _feats(3, d=5)
    head = np.array([[16, 3, 4], [16, 5, 4], [16, 3, 7]], dtype=np.float32)
    np.save(tmp_path / "h.npy", np.hstack([head, feats]))
    bags = ImageBags.from_features({"p": tmp_path / "h.npy"}, format="histossl")
    assert bags.feature_dim == 5
    bag = bags.load("p", [2, 0])
    np.testing.assert_allclose(bag.data, feats[[2, 0]])
    np.testing.assert_array_equal(bag.coords, head[[2, 0], 1:])
    g = bags.geometry["h"]
    assert (g.format, g.frame, g.level) == ("histossl", "stored", 16)
    plain = ImageBags.from_features({"p": tmp_path / "h.npy"})  # auto keeps the plain [N, D] meaning
    assert plain.feature_dim == 8 and plain.geometry == {}
    np.save(tmp_path / "narrow.npy", _feats(3, d=3))
    with pytest.raises(ValueError, match=r"HistoSSL file .*narrow.npy'.*\(3, 3\); expected \[N, 3 \+ D\]"):
        ImageBags.from_features({"p": tmp_path / "narrow.npy"}, format="histossl")


def test_detection_errors_say_found_and_expected(tmp_path):
    _stamp(tmp_path / "st.h5")
    with pytest.raises(ValueError, match=r"st.h5' of sample 's' is not in the trident layout: found "
                                         r"datasets \['coords', 'feats'\].*looks like stamp"):
        ImageBags.from_features({"s": tmp_path / "st.h5"}, format="trident")
    _trident(tmp_path / "tr.h5")
    with pytest.raises(ValueError, match=r"tr.h5' of sample 's' is not in the stamp layout.*'features'"):
        ImageBags.from_features({"s": tmp_path / "tr.h5"}, format="stamp")
    with pytest.raises(ValueError, match=r"cannot be format 'stamp'.*found '.npy'"):
        np.save(tmp_path / "x.npy", _feats(2))
        ImageBags.from_features({"s": tmp_path / "x.npy"}, format="stamp")
    with pytest.raises(ValueError, match=r"unknown feature format 'qupath'; expected one of"):
        ImageBags.from_features({"s": tmp_path / "x.npy"}, format="qupath")


def test_layouts_mix_in_one_patient_and_geometry_travels_with_subset(tmp_path):
    _trident(tmp_path / "a.h5", n=2)
    _stamp(tmp_path / "b.h5", n=3)
    bags = ImageBags.from_features({"pat": [tmp_path / "a.h5", tmp_path / "b.h5"], "other": _feats(2)})
    assert bags.n_patches("pat") == 5
    sub = bags.subset(["pat"])
    assert sub.slide_geometry("pat", "a").format == "trident"
    assert sub.slide_geometry("pat", "b").format == "stamp"
    assert set(sub.geometry) == {"a", "b"}
    assert bags.slide_geometry("other", "slide0") is None
    with pytest.raises(ValueError, match=r"sample 'pat' has no slide 'zz'"):
        bags.slide_geometry("pat", "zz")


def test_coords_that_do_not_match_the_features_are_named(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["features"] = _feats(3)
        f["coords"] = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"bad.h5' of sample 's'.*'coords' has shape \(2, 2\), "
                                         r"expected \(3, 2\)"):
        ImageBags.from_features({"s": tmp_path / "bad.h5"})


def test_yaml_data_config_names_the_format_and_mpp(tmp_path):
    from clinfuse.fusion.config import load_data_config

    (tmp_path / "feats").mkdir()
    _, um = _stamp(tmp_path / "feats" / "p1.h5")
    clinical = pd.DataFrame({"sample_id": ["p1"], "age": [60.0], "label": ["a"]})
    clinical.to_csv(tmp_path / "clin.csv", index=False)
    (tmp_path / "data.yaml").write_text("clinical: clin.csv\nimages: feats\nlabel: label\n"
                                        "image_format: stamp\nimage_mpp: 0.5\n")
    cohort = load_data_config(tmp_path / "data.yaml").to_cohort(task="classification", require_targets=True)
    assert cohort.images.geometry["p1"].frame == "level0_px"
    np.testing.assert_allclose(cohort.images.load("p1").coords, um / 0.5)


def test_a_patients_trident_slides_join_with_their_geometry(tmp_path):
    """patient_of and the layout readers together: two TRIDENT slides of one TCGA patient form one bag,
    each slide keeping its own tile spec; a stray slide is left out and named."""
    a, _ = _trident(tmp_path / "TCGA-AA-0001-01Z-00-DX1.h5", n=3, ps0=512)
    b, _ = _trident(tmp_path / "TCGA-AA-0001-01Z-00-DX2.h5", n=2, ps0=1024, mag0=20)
    _trident(tmp_path / "slide_without_barcode.h5", n=2)
    with pytest.warns(UserWarning, match="slide_without_barcode"):
        bags = ImageBags.from_features(tmp_path, patient_of="tcga")
    assert bags.sample_ids == ["TCGA-AA-0001"] and bags.unmatched_slides == ["slide_without_barcode"]
    np.testing.assert_allclose(bags.load("TCGA-AA-0001").data, np.concatenate([a, b]))
    dx1, dx2 = (bags.geometry[f"TCGA-AA-0001-01Z-00-DX{k}"] for k in (1, 2))
    assert (dx1.format, dx1.patch_size, dx1.magnification) == ("trident", 512, 40)
    assert (dx2.patch_size, dx2.magnification) == (1024, 20)
