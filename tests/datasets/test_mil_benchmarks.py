"""load_mil_benchmark: PRTools multiple-instance files (Fox, Tiger, Elephant), on a small file written in the
same layout and on the real files (counts from their SOURCE.txt)."""

from __future__ import annotations

import numpy as np
import pytest
from clinfuse.datasets import load_mil_benchmark
from scipy import io


def write_prtools(path, data, nlab, milbag, name="Toy (test)"):
    """A ``.mat`` holding the fields of a PRTools dataset struct ``x`` that the loader reads."""
    x = {"data": np.asarray(data, dtype=float), "nlab": np.asarray(nlab, dtype=np.uint8),
         "ident": {"ident": np.arange(1, len(nlab) + 1, dtype=np.uint16),
                   "milbag": np.asarray(milbag, dtype=np.uint8)},
         "name": name, "objsize": len(nlab), "featsize": np.shape(data)[1]}
    io.savemat(path, {"x": x})
    return path


@pytest.fixture
def toy(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(7, 3))
    return write_prtools(tmp_path / "toy.mat", data, [2, 2, 2, 1, 1, 2, 2], [1, 1, 1, 2, 2, 10, 10]), data


def test_small_file_gives_one_feature_bag_per_mil_bag(toy):
    path, data = toy
    c = load_mil_benchmark(path)
    assert c.task == "classification" and c.modalities == ("images",) and c.name == "Toy (test)"
    assert c.sample_ids == ["toy_01", "toy_02", "toy_10"]  # zero-padded to the widest bag id
    assert c.labels.loc[c.sample_ids].tolist() == ["positive", "negative", "positive"]
    assert c.images.kind == "features" and c.images.feature_dim == 3
    assert c.images.bag_sizes().loc[c.sample_ids].tolist() == [3, 2, 2]
    bag = c.images.load("toy_02")
    np.testing.assert_allclose(bag.data, data[3:5].astype(np.float32))
    assert bag.coords is None or np.isnan(np.asarray(bag.coords, dtype=float)).all()
    assert c.excluded == []


def test_folder_with_name(tmp_path):
    write_prtools(tmp_path / "fox.mat", np.ones((2, 2)), [1, 2], [1, 2])
    assert load_mil_benchmark(tmp_path, name="fox").sample_ids == ["fox_1", "fox_2"]
    with pytest.raises(ValueError, match="name= one of"):
        load_mil_benchmark(tmp_path)
    with pytest.raises(ValueError, match="name must be one of"):
        load_mil_benchmark(tmp_path, name="zebra")
    with pytest.raises(ValueError, match="no file at"):
        load_mil_benchmark(tmp_path / "tiger.mat")


def test_bad_files_name_the_file_and_field(tmp_path):
    with pytest.raises(ValueError, match=r"bag '1' \(sample 'mixed_1'\) has instances labelled \[1, 2\]"):
        load_mil_benchmark(write_prtools(tmp_path / "mixed.mat", np.ones((2, 2)), [1, 2], [1, 1]))
    with pytest.raises(ValueError, match=r"x.nlab holds \[3\]"):
        load_mil_benchmark(write_prtools(tmp_path / "lab.mat", np.ones((2, 2)), [1, 3], [1, 2]))
    nan = np.ones((2, 2))
    nan[1, 0] = np.nan
    with pytest.raises(ValueError, match="nan.mat.*non-finite features, first at row 1"):
        load_mil_benchmark(write_prtools(tmp_path / "nan.mat", nan, [1, 2], [1, 2]))
    io.savemat(tmp_path / "other.mat", {"y": np.ones(2)})
    with pytest.raises(ValueError, match="no PRTools struct 'x'; found \\['y'\\]"):
        load_mil_benchmark(tmp_path / "other.mat")
    io.savemat(tmp_path / "noident.mat", {"x": {"data": np.ones((2, 2)), "nlab": np.array([1, 2])}})
    with pytest.raises(ValueError, match="noident.mat.*no field 'ident'"):
        load_mil_benchmark(tmp_path / "noident.mat")
    with pytest.raises(ValueError, match="expected one row per instance"):
        load_mil_benchmark(write_prtools(tmp_path / "len.mat", np.ones((3, 2)), [1, 2], [1, 2]))
    (tmp_path / "junk.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match="cannot read .*junk.mat"):
        load_mil_benchmark(tmp_path / "junk.mat")


@pytest.mark.parametrize("name,instances", [("fox", 1320), ("tiger", 1220), ("elephant", 1391)])
def test_real_files(shared_path, name, instances):
    c = load_mil_benchmark(shared_path("mil_benchmarks"), name=name)
    assert len(c) == 200 and c.images.feature_dim == 230
    assert int(c.images.bag_sizes().sum()) == instances
    assert c.labels.value_counts().to_dict() == {"negative": 100, "positive": 100}
    assert c.name == f"{name.capitalize()} (Andrews)"
    assert c.sample_ids[0] == f"{name}_001" and c.sample_ids[-1] == f"{name}_200"
