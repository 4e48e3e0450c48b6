"""Non-finite values in bag files are refused as they are read, naming the sample, the file and the row."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from clinfuse.datasets import ImageBags


def _bag(n=6, d=4, dtype=np.float32):
    return np.random.default_rng(0).normal(size=(n, d)).astype(dtype)


def _write(path, arr):
    if path.suffix == ".npy":
        np.save(path, arr)
    elif path.suffix == ".h5":
        with h5py.File(path, "w") as f:
            f["features"] = arr
    else:
        torch.save({"features": torch.from_numpy(arr)}, path)


@pytest.mark.parametrize("suffix", [".npy", ".h5", ".pt"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_a_bag_file_names_sample_file_and_row(tmp_path, suffix, bad):
    arr = _bag()
    arr[3, 1] = bad
    arr[5, 0] = bad
    _write(tmp_path / f"p01{suffix}", arr)
    _write(tmp_path / f"p02{suffix}", _bag())
    bags = ImageBags.from_features(tmp_path)  # construction reads shapes only
    assert np.isfinite(bags.load("p02").data).all()
    with pytest.raises(ValueError, match=r"sample 'p01'.*p01\.\w+.*row 3 holds NaN or infinite"):
        bags.load("p01")
    with pytest.raises(ValueError, match="row 5 holds"):
        bags.load("p01", [5, 0])  # the row is the file's, whatever order was asked
    assert np.isfinite(bags.load("p01", [0, 1, 2, 4]).data).all()  # clean rows still read


@pytest.mark.parametrize("value", [1e300, 1e39, -3.5e38])
def test_float64_values_that_overflow_float32_are_refused(tmp_path, value):
    arr = _bag(dtype=np.float64)
    arr[2, 3] = value
    np.save(tmp_path / "s.npy", arr)
    bags = ImageBags.from_features({"s": tmp_path / "s.npy"})
    with pytest.raises(ValueError, match=r"sample 's'.*s\.npy.*row 2 holds values too large for float32"):
        bags.load("s")


def test_largest_float32_values_still_read(tmp_path):
    arr = _bag(dtype=np.float64)
    arr[0, 0] = 3.0e38
    np.save(tmp_path / "s.npy", arr)
    data = ImageBags.from_features({"s": tmp_path / "s.npy"}).load("s").data
    assert data.dtype == np.float32 and np.isfinite(data).all()


def test_a_nan_bag_stops_training_naming_the_sample(tmp_path):
    from clinfuse.datasets import make_synthetic_cohort
    from clinfuse.fusion import FusionModel

    cohort, _ = make_synthetic_cohort(24, task="classification", n_patches=(4, 6), seed=0,
                                      modalities=("images",))
    folder = tmp_path / "bags"
    folder.mkdir()
    for sid in cohort.sample_ids:
        np.save(folder / f"{sid}.npy", cohort.images.load(sid).data)
    bad = cohort.sample_ids[3]
    arr = np.load(folder / f"{bad}.npy")
    arr[1] = np.nan
    np.save(folder / f"{bad}.npy", arr)
    from clinfuse.datasets import Cohort

    files = Cohort(images=ImageBags.from_features(folder), labels=cohort.labels)
    model = FusionModel(d_model=8, n_heads=2, max_epochs=1, batch_size=8, verbose=False,
                        validation_fraction=0.0)
    with pytest.raises(ValueError, match=rf"sample '{bad}'.*row 1 holds NaN"):
        model.fit(files)
