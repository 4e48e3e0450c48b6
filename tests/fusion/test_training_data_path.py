"""What a fit's batches cost: validation streams its bags (no padded ``[B, N, D]`` copy), a training batch
of one whole bag is that bag (no padded copy, read once into float32), and the results are those of the
loaded bags."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clinfuse.datasets import Batch, ImageBags, loading, make_synthetic_cohort
from clinfuse.datasets.images import readers
from clinfuse.fusion import FusionModel, FusionNetwork


def cohort(n: int = 16):
    data, _ = make_synthetic_cohort(n, modalities=("clinical", "images"), n_patches=(4, 12), feature_dim=8,
                                    seed=2)
    return data


def tiny(**kw) -> FusionModel:
    kw = {"aggregator": "persam", "d_model": 8, "max_epochs": 2, "batch_size": 4, **kw}
    return FusionModel(verbose=False, early_stopping_patience=None, seed=3, **kw)


def spy_batches(monkeypatch) -> dict[str, list]:
    """Patch FusionNetwork.forward to keep the image batch and the fill flag of every forward, by mode."""
    seen: dict[str, list] = {"train": [], "eval": []}
    original = FusionNetwork.forward

    def spy(self, batch: Batch, **kwargs):
        fill = torch.utils.deterministic.fill_uninitialized_memory
        seen["train" if self.training else "eval"].append((batch.modalities["images"], fill))
        return original(self, batch, **kwargs)

    monkeypatch.setattr(FusionNetwork, "forward", spy)
    return seen


def test_validation_streams_bags_and_a_batch_of_one_bag_is_the_bag(monkeypatch):
    data = cohort()
    seen = spy_batches(monkeypatch)
    filling = torch.utils.deterministic.fill_uninitialized_memory
    model = tiny(batch_size=1, max_patches=None, max_epochs=1).fit(data)
    assert seen["train"] and seen["eval"]
    for images, fill in seen["eval"]:  # the encoder reads and projects the bag's rows in chunks
        assert "features" not in images.tensors and fill is False
    assert any(images.meta["feature_rows"][0] is not None for images, _ in seen["eval"])
    bags = {s: data.images.load(s).data for s in model.training_ids_ if s in data.images}
    trained = [(images, fill) for images, fill in seen["train"] if bool(images.present[0])]
    assert trained
    for images, fill in trained:
        features = images.tensors["features"]
        assert features.shape[0] == 1 and bool(images.mask.all()), "a batch of one bag was padded"
        # the in-memory bag itself (no copy), whichever sample it is
        assert any(np.shares_memory(features.numpy(), x) for x in bags.values())
        assert fill is False  # deterministic mode's fill of new memory is off while fitting...
    assert torch.utils.deterministic.fill_uninitialized_memory == filling  # ... and restored after


@pytest.mark.slow
@pytest.mark.parametrize("batch_size", [1, 4])
def test_streamed_validation_gives_the_history_of_loaded_bags(monkeypatch, batch_size):
    """The same fit with validation bags loaded whole (and padded) gives the identical history."""
    data = cohort()
    streamed = tiny(batch_size=batch_size).fit(data)
    make_loader = loading.make_loader
    monkeypatch.setattr(loading, "make_loader", lambda *a, **kw: make_loader(*a, **{**kw, "stream": False}))
    loaded = tiny(batch_size=batch_size).fit(data)
    assert streamed.history_ == loaded.history_
    assert streamed.best_epoch_ == loaded.best_epoch_
    assert streamed.metrics_["validation"] == loaded.metrics_["validation"]


def reads(monkeypatch) -> list[np.ndarray]:
    """Patch the .npy reader to keep every array it returns."""
    got: list[np.ndarray] = []
    reader = readers.FILE_READERS[".npy"]
    original = reader.read

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        got.append(out[0])
        return out

    monkeypatch.setattr(reader, "read", spy)
    return got


def test_a_whole_bag_file_is_read_once_into_float32(monkeypatch, tmp_path):
    x = np.random.default_rng(0).standard_normal((9, 5)).astype(np.float32)
    np.save(tmp_path / "s.npy", x)
    bags = ImageBags.from_features({"s": tmp_path / "s.npy"})
    got = reads(monkeypatch)
    bag = bags.load("s").data
    np.testing.assert_array_equal(bag, x)
    assert bag.dtype == np.float32 and len(got) == 1
    assert np.shares_memory(bag, got[0]), "the file's rows were copied after reading"
    sorted_draw = bags.load("s", np.array([1, 4, 7])).data  # a training draw: sorted, no gather either
    np.testing.assert_array_equal(sorted_draw, x[[1, 4, 7]])
    assert np.shares_memory(sorted_draw, got[1])


def test_rows_in_any_order_with_repeats_are_read_as_asked(tmp_path):
    x = np.random.default_rng(1).standard_normal((6, 3))  # float64 on disk: one cast to float32
    np.save(tmp_path / "s.npy", x)
    for rows in ([5, 0, 3], [2, 2, 1], [4], [0, 1, 2, 3, 4, 5]):
        data, _ = readers.read_file_rows(tmp_path / "s.npy", "s", np.array(rows, dtype=np.int64),
                                         single=False, coords=False)
        assert data.dtype == np.float32
        np.testing.assert_array_equal(data, x[rows].astype(np.float32))
