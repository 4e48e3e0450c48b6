"""ImageBags: every source form of feature and pixel bags, lazy reads, slide bookkeeping, every error."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.datasets import ImageBag, ImageBags
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

RNG = np.random.default_rng(0)


def _feats(n, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


@pytest.fixture
def files(tmp_path):
    """One slide per format: a.npy [5, 8], b.h5 [3, 8] with coords, c.pt dict [4, 8] with coords, d.pt
    tensor."""
    np.save(tmp_path / "a.npy", _feats(5, seed=1))
    with h5py.File(tmp_path / "b.h5", "w") as f:
        f["features"] = _feats(3, seed=2)
        f["coords"] = np.arange(6).reshape(3, 2) * 10
    torch.save(
        {"features": torch.from_numpy(_feats(4, seed=3)), "coords": torch.ones(4, 2)}, tmp_path / "c.pt"
    )
    torch.save(torch.from_numpy(_feats(2, seed=4)), tmp_path / "d.pt")
    return tmp_path


def test_arrays_files_and_lists(files):
    bags = ImageBags.from_features(
        {"m": _feats(6), 7: files / "a.npy", "u": [files / "b.h5", str(files / "c.pt")], "t": files / "d.pt"}
    )
    assert bags.kind == "features" and bags.feature_dim == 8 and bags.pixel_shape is None
    assert bags.sample_ids == ["m", "7", "u", "t"] and "7" in bags and len(bags) == 4
    assert [bags.n_patches(s) for s in bags.sample_ids] == [6, 5, 7, 2]
    assert bags.slide_ids("u") == ["b", "c"] and bags.slide_ids("m") == ["slide0"]
    # the .npy slide is memory-mapped on demand, never held in memory
    assert bags._slides["7"][0].array is None
    bag = bags.load("u")
    assert isinstance(bag, ImageBag) and bag.data.dtype == np.float32 and bag.data.shape == (7, 8)
    np.testing.assert_allclose(bag.data[:3], _feats(3, seed=2))
    np.testing.assert_allclose(bag.data[3:], _feats(4, seed=3))
    assert bag.slide_ids == ["b"] * 3 + ["c"] * 4 and bag.positions.tolist() == [0, 1, 2, 0, 1, 2, 3]
    np.testing.assert_array_equal(bag.coords[:3], np.arange(6).reshape(3, 2) * 10)
    np.testing.assert_array_equal(bag.coords[3:], np.ones((4, 2)))
    assert np.isnan(bags.load("7").coords).all() and bags.load("t").data.shape == (2, 8)
    np.testing.assert_allclose(bags.load("7").data, _feats(5, seed=1))


def test_load_indices_keep_requested_order_across_slides(files):
    bags = ImageBags.from_features({"u": [files / "b.h5", files / "a.npy", _feats(2, seed=9)]})
    full = bags.load("u")
    idx = [9, 0, 4, 2, 3, 3]
    part = bags.load("u", idx)
    np.testing.assert_array_equal(part.data, full.data[idx])
    np.testing.assert_array_equal(part.positions, full.positions[idx])
    assert part.slide_ids == [full.slide_ids[i] for i in idx] == ["slide2", "b", "a", "b", "a", "a"]
    np.testing.assert_array_equal(part.coords, full.coords[idx])
    assert len(bags.load("u", [])) == 0
    with pytest.raises(IndexError, match="out of range"):
        bags.load("u", [10])
    with pytest.raises(ValueError, match="unknown sample id 'zz'"):
        bags.load("zz")


def test_coords_argument_whole_bag_or_per_slide(files):
    c = np.arange(16, dtype=float).reshape(8, 2)
    bags = ImageBags.from_features(
        {"u": [files / "a.npy", files / "b.h5"], "v": _feats(3)}, coords={"u": c, "v": [np.zeros((3, 2))]}
    )
    np.testing.assert_array_equal(bags.load("u").coords, c)  # overrides the coords stored in b.h5
    assert (bags.load("v").coords == 0).all()
    with pytest.raises(ValueError, match="coords of sample 'u' have shape"):
        ImageBags.from_features({"u": [files / "a.npy"]}, coords={"u": np.zeros((4, 2))})
    with pytest.raises(ValueError, match="coords given for sample 'x'"):
        ImageBags.from_features({"u": _feats(2)}, coords={"x": np.zeros((2, 2))})


def test_directory_rule(tmp_path):
    np.save(tmp_path / "p1.npy", _feats(3))
    (tmp_path / "p2").mkdir()
    np.save(tmp_path / "p2" / "slideA.npy", _feats(2))
    np.save(tmp_path / "p2" / "slideB.npy", _feats(4))
    np.save(tmp_path / "TCGA.01.x.npy", _feats(1))  # dots belong to the sample id
    (tmp_path / "notes.txt").write_text("ignored: not a feature file")
    bags = ImageBags.from_features(tmp_path)
    assert sorted(bags.sample_ids) == ["TCGA.01.x", "p1", "p2"]
    assert bags.slide_ids("p2") == ["slideA", "slideB"] and bags.n_patches("p2") == 6
    assert bags.slide_ids("p1") == ["p1"]
    with pytest.raises(ValueError, match="is not a directory"):
        ImageBags.from_features(tmp_path / "p1.npy")
    np.save(tmp_path / "p2.npy", _feats(1))
    with pytest.raises(ValueError, match="sample 'p2' appears twice"):
        ImageBags.from_features(tmp_path)


def test_manifest(files):
    man = pd.DataFrame(
        {
            "sample_id": [1, 1, 2],
            "path": [files / "a.npy", files / "b.h5", files / "c.pt"],
            "slide_id": ["left", None, "x"],
        }
    )
    bags = ImageBags.from_features(man)
    assert bags.sample_ids == ["1", "2"] and bags.slide_ids("1") == ["left", "b"]
    with pytest.raises(ValueError, match=r"manifest lacks column\(s\) \['path'\]"):
        ImageBags.from_features(pd.DataFrame({"sample_id": [1]}))


def test_subset_and_bag_sizes(files):
    bags = ImageBags.from_features({"a": _feats(2), "b": _feats(5)})
    sub = bags.subset(["b"])
    assert sub.sample_ids == ["b"] and sub.feature_dim == 8 and sub.n_patches("b") == 5
    assert bags.bag_sizes().to_dict() == {"a": 2, "b": 5}
    with pytest.raises(ValueError, match="unknown sample id.*'c'"):
        bags.subset(["c"])


# ---------------------------------------------------------------------------- feature errors


def test_feature_errors(files, tmp_path):
    with pytest.raises(ValueError, match="sample 'z' has a bag of zero patches"):
        ImageBags.from_features({"a": _feats(2), "z": np.zeros((0, 8))})
    with pytest.raises(
        ValueError, match=r"inconsistent feature dim: sample 'a' has 8 but sample 'b' .* has 5"
    ):
        ImageBags.from_features({"a": _feats(2), "b": _feats(2, d=5)})
    missing = tmp_path / "gone.npy"
    with pytest.raises(ValueError, match=f"file '{missing}' for sample 'q' does not exist"):
        ImageBags.from_features({"q": missing})
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\); expected \[N, D\]"):
        ImageBags.from_features({"w": np.zeros((2, 3, 4))})
    with pytest.raises(ValueError, match="NaN or infinite"):
        ImageBags.from_features({"w": np.full((2, 3), np.nan)})
    with pytest.raises(TypeError, match="sample 's'.*dtype"):
        ImageBags.from_features({"s": np.array([["a", "b"]])})
    with pytest.raises(ValueError, match="unsupported suffix"):
        (tmp_path / "x.csv").write_text("1,2")
        ImageBags.from_features({"c": tmp_path / "x.csv"})
    with pytest.raises(TypeError, match="expected a dict sample -> bag"):
        ImageBags.from_features([_feats(2)])
    with pytest.raises(ValueError, match="duplicated slide ids"):
        ImageBags.from_features({"a": [files / "a.npy", files / "a.npy"]})
    with pytest.raises(ValueError, match="duplicated sample id '1'"):
        ImageBags.from_features({1: _feats(2), "1": _feats(2)})
    np.save(tmp_path / "w3.npy", np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="'w3'.*expected \\[N, D\\]"):
        ImageBags.from_features({"x": tmp_path / "w3.npy"})


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".pt"])
def test_corrupt_files_name_sample_and_path(tmp_path, suffix):
    bad = tmp_path / f"broken{suffix}"
    bad.write_bytes(b"this is not a real file" * 10)
    with pytest.raises(ValueError, match=f"cannot read '{bad}' for sample 'p9'") as info:
        ImageBags.from_features({"p9": bad})
    assert info.value.__cause__ is not None  # the underlying reader error is kept


def test_h5_without_features_and_file_deleted_after_construction(tmp_path):
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["embeddings"] = _feats(2)
    with pytest.raises(ValueError, match="cannot read.*'s'.*no dataset 'features'.*found \\['embeddings'\\]"):
        ImageBags.from_features({"s": tmp_path / "e.h5"})
    np.save(tmp_path / "k.npy", _feats(2))
    bags = ImageBags.from_features({"k": tmp_path / "k.npy"})
    (tmp_path / "k.npy").unlink()
    with pytest.raises(ValueError, match="cannot read .*k.npy' for sample 'k'"):
        bags.load("k")


# ---------------------------------------------------------------------------- pixels


def test_pixel_arrays_single_image_and_uint8(tmp_path):
    u8 = RNG.integers(0, 256, size=(3, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "img.npy", u8[0])
    bags = ImageBags.from_patches(
        {"a": u8, "b": RNG.random((3, 8, 8)).astype(np.float32), "c": tmp_path / "img.npy"}
    )
    assert bags.kind == "pixels" and bags.pixel_shape == (3, 8, 8) and bags.feature_dim is None
    assert [bags.n_patches(s) for s in "abc"] == [3, 1, 1]  # [C, H, W] = a bag of one image
    a = bags.load("a")
    assert a.data.dtype == np.float32 and a.data.shape == (3, 3, 8, 8)
    np.testing.assert_allclose(a.data, u8 / 255.0, rtol=1e-6)
    np.testing.assert_allclose(bags.load("c").data[0], u8[0] / 255.0, rtol=1e-6)


def test_pixel_errors(tmp_path):
    with pytest.raises(TypeError, match="sample 'a'.*dtype int64; expected uint8"):
        ImageBags.from_patches({"a": np.ones((1, 3, 4, 4), dtype=np.int64)})
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        ImageBags.from_patches({"a": np.full((1, 3, 4, 4), 2.0)})
    with pytest.raises(ValueError, match=r"sample 'a'.*shape \(4, 4\); expected \[N, C, H, W\]"):
        ImageBags.from_patches({"a": np.zeros((4, 4))})
    with pytest.raises(ValueError, match=r"inconsistent patch shape.*'a' has \(3, 4, 4\).*'b'.*\(3, 5, 5\)"):
        ImageBags.from_patches({"a": np.zeros((1, 3, 4, 4)), "b": np.zeros((1, 3, 5, 5))})
    with pytest.raises(ValueError, match="expected patch_size"):
        ImageBags.from_patches({"a": np.zeros((1, 3, 4, 4))}, patch_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="sample 'e' has a bag of zero patches"):
        ImageBags.from_patches({"e": tmp_path / "empty"})
    with pytest.raises(ValueError, match="'x' does not exist|file .* for sample 'x' does not exist"):
        ImageBags.from_patches({"x": tmp_path / "nope.png"})
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="cannot read .*bad.png' for sample 'y'"):
        ImageBags.from_patches({"y": tmp_path / "bad.png"})


def _write_tiles(folder: Path, sizes):
    folder.mkdir(parents=True)
    for k, (w, h) in enumerate(sizes):
        arr = np.full((h, w, 3), 40 * k, dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"tile{k}.png")


def test_tile_folders_read_lazily_as_rgb(tmp_path):
    _write_tiles(tmp_path / "root" / "s1", [(6, 4)] * 3)
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "root" / "s2.png")  # grayscale -> RGB
    bags = ImageBags.from_patches(tmp_path / "root")
    assert bags.sample_ids == ["s1", "s2"] and bags.pixel_shape == (3, 4, 6)
    assert bags.n_patches("s1") == 3 and bags.n_patches("s2") == 1
    assert bags.slide_ids("s1") == ["s1"] and bags.slide_ids("s2") == ["s2"]
    part = bags.load("s1", [2, 0])
    assert part.data.shape == (2, 3, 4, 6) and part.positions.tolist() == [2, 0]
    np.testing.assert_allclose(part.data[0], 80 / 255.0, rtol=1e-6)
    assert part.data.max() <= 1.0 and np.isnan(part.coords).all()
    _write_tiles(tmp_path / "mixed", [(6, 4), (8, 8)])
    with pytest.raises(ValueError, match="tiles of different sizes.*patch_size"):
        ImageBags.from_patches({"m": tmp_path / "mixed"})
    resized = ImageBags.from_patches({"m": tmp_path / "mixed"}, patch_size=5)
    assert resized.pixel_shape == (3, 5, 5) and resized.load("m").data.shape == (2, 3, 5, 5)


def test_real_he_tiles(shared_path):
    he_tiles = shared_path("he_tiles")
    tiles = sorted(he_tiles.glob("tissue-level0-*.png"))[:2] + sorted(he_tiles.glob("no-tissue.png"))
    bags = ImageBags.from_patches({"slideA": tiles[:2], "slideB": tiles[2]}, patch_size=32)
    assert bags.n_patches("slideA") == 2 and bags.slide_ids("slideA") == [t.stem for t in tiles[:2]]
    bag = bags.load("slideA")
    assert bag.data.shape == (2, 3, 32, 32) and 0.0 <= bag.data.min() and bag.data.max() <= 1.0
    assert bag.data.std() > 0.01  # real tissue, not a constant


@pytest.mark.parametrize("suffix", [".npy", ".pt", ".h5"])
def test_single_image_files_are_bags_of_one(tmp_path, suffix):
    img = RNG.random((3, 6, 6)).astype(np.float32)
    path = tmp_path / f"one{suffix}"
    if suffix == ".npy":
        np.save(path, img)
    elif suffix == ".pt":
        torch.save(torch.from_numpy(img), path)
    else:
        with h5py.File(path, "w") as f:
            f["features"] = img
    bags = ImageBags.from_patches({"s": path})
    assert bags.n_patches("s") == 1 and bags.pixel_shape == (3, 6, 6)
    np.testing.assert_allclose(bags.load("s").data[0], img)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 6), min_size=1, max_size=4), st.data())
def test_load_of_any_indices_matches_the_concatenated_bag(sizes, data):
    slides = [np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * k for k, n in enumerate(sizes)]
    bags = ImageBags.from_features({"s": slides})
    full = np.concatenate(slides)
    idx = data.draw(st.lists(st.integers(0, len(full) - 1), max_size=12))
    bag = bags.load("s", idx)
    np.testing.assert_array_equal(bag.data, full[idx].reshape(len(idx), 2))
    owners = np.repeat(np.arange(len(sizes)), sizes)
    assert bag.slide_ids == [f"slide{owners[i]}" for i in idx]
    starts = np.concatenate([[0], np.cumsum(sizes)])[owners]
    assert bag.positions.tolist() == [i - starts[i] for i in idx]
