"""Bags flow without copies at prediction: row sources read in chunks, single-sample batches unpadded."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from clinfuse.datasets import ImageBags
from clinfuse.datasets.batch import ModalityBatch
from clinfuse.datasets.images import rows as rows_module
from clinfuse.datasets.loading import CohortDataset, collate_samples, make_loader
from clinfuse.datasets.modalities import ReadContext
from clinfuse.datasets.modalities.images import BagReader
from clinfuse.encoders.images import FeatureBagEncoder

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference_models" / "persam_classification"


@pytest.fixture(scope="module")
def reference():
    from clinfuse.fusion import FusionModel
    from clinfuse.fusion.config import load_data_config

    model = FusionModel.load(REFERENCE / "model")
    cohort = load_data_config(REFERENCE / "data.yaml").to_cohort(task=model.task, require_targets=True)
    return model, cohort


def _whole_bag_proba(model, cohort, batch_size: int) -> np.ndarray:
    """Predictions through the loaded-tensor path (every bag read whole into ``features``)."""
    net = model._network_for_inference()
    out = []
    with torch.no_grad():
        for batch in make_loader(cohort, model.preprocessor_, batch_size=batch_size, stream=False):
            assert "features" in batch.modalities["images"].tensors
            out.append(torch.softmax(net(batch).outputs, dim=-1).numpy())
    return np.concatenate(out)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_chunked_prediction_matches_the_whole_bag(reference, monkeypatch, batch_size):
    model, cohort = reference
    encoder = model.network_.encoders["images"]
    monkeypatch.setattr(encoder, "chunk_rows", 3)  # bags of 8 patches: chunks 3 + 3 + 2
    reads = []
    original = rows_module.BagRows.chunks
    monkeypatch.setattr(rows_module.BagRows, "chunks",
                        lambda self, size: reads.append(size) or original(self, size))
    monkeypatch.setattr(model, "batch_size", batch_size)
    got = model.predict_proba(cohort).to_numpy()
    assert reads and set(reads) == {3}, "predict did not stream the bags in chunks of chunk_rows"
    np.testing.assert_allclose(got, _whole_bag_proba(model, cohort, batch_size), rtol=0, atol=1e-6)


def test_streamed_items_hold_no_bag_copy(reference):
    model, cohort = reference
    item = CohortDataset(cohort, model.preprocessor_, stream=True)[0]
    images = item.data["images"]
    assert "data" not in images and isinstance(images["rows"], rows_module.BagRows)
    loaded = CohortDataset(cohort, model.preprocessor_)[0].data["images"]
    np.testing.assert_array_equal(images["positions"], loaded["positions"])
    assert images["names"] == loaded["names"] and images["slide_ids"] == loaded["slide_ids"]
    np.testing.assert_array_equal(images["rows"].read(), loaded["data"])
    batch = collate_samples([item]).modalities["images"]
    assert "features" not in batch.tensors and batch.meta["feature_rows"][0] is images["rows"]


def test_training_reads_are_unchanged_by_streaming(reference):
    model, cohort = reference
    bags = cohort.images
    context = ReadContext(train=True, max_patches=5, seed=3, stream=True)
    a = BagReader(bags).read(bags.sample_ids[0], 0, context)
    b = BagReader(bags).read(bags.sample_ids[0], 0, ReadContext(train=True, max_patches=5, seed=3))
    assert "rows" not in a and a["data"].shape == (5, bags.feature_dim)
    np.testing.assert_array_equal(a["data"], b["data"])
    np.testing.assert_array_equal(a["positions"], b["positions"])


def _items(bags: ImageBags, stream: bool) -> list[dict]:
    reader, context = BagReader(bags), ReadContext(stream=stream)
    return [reader.read(s, i, context) for i, s in enumerate(bags.sample_ids)]


def test_a_single_sample_batch_is_not_padded():
    x = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32)
    bags = ImageBags.from_features({"s": x})
    from clinfuse.datasets.modalities.images import ImagesModality

    schema = {"kind": "features", "feature_dim": 4}
    one = ImagesModality().collate(_items(bags, False), schema, torch.tensor([True]))
    features = one.tensors["features"]
    assert features.shape == (1, 7, 4) and one.mask.shape == (1, 7) and bool(one.mask.all())
    assert np.shares_memory(features.numpy(), x), "a batch of one sample copied its bag"
    two = ImagesModality().collate(_items(bags, False) + [None], schema, torch.tensor([True, False]))
    padded = two.tensors["features"]
    assert padded.shape == (2, 7, 4) and not np.shares_memory(padded.numpy(), x)


def test_memory_mapped_bags_are_viewed_not_copied_to_float64(tmp_path):
    x = np.random.default_rng(1).standard_normal((10, 6)).astype(np.float32)
    np.save(tmp_path / "s.npy", x)
    mapped = np.load(tmp_path / "s.npy", mmap_mode="r")
    bags = ImageBags.from_features({"s": mapped})
    bag = bags.load("s")
    assert bag.data.dtype == np.float32 and np.shares_memory(bag.data, mapped)
    chunks = list(bags.rows("s").chunks(4))
    assert [len(c) for _, c in chunks] == [4, 4, 2]
    assert all(c.dtype == np.float32 and np.shares_memory(c, mapped) for _, c in chunks)
    # a float64 array is converted chunk by chunk, never as a whole
    wide = ImageBags.from_features({"s": x.astype(np.float64)}).rows("s")
    assert all(c.dtype == np.float32 and c.shape == (3, 6) or len(c) == 1 for _, c in wide.chunks(3))
    np.testing.assert_array_equal(wide.read(), x)


def test_npy_files_are_read_in_chunks_into_one_reused_buffer(tmp_path):
    x = np.random.default_rng(2).standard_normal((10, 6)).astype(np.float32)
    np.save(tmp_path / "s.npy", x)
    rows = ImageBags.from_features({"s": tmp_path / "s.npy"}).rows("s")
    seen = []
    for start, chunk in rows.chunks(4):
        np.testing.assert_array_equal(chunk, x[start:start + len(chunk)])
        seen.append(chunk)
    assert all(c.base is seen[0].base for c in seen), "each chunk allocated its own buffer"


def _h5(path: Path, x: np.ndarray, coords: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f["features"], f["coords"] = x, coords
    return path


def test_h5_bags_are_read_in_chunks_and_encode_as_the_whole_bag(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    x = {s: rng.standard_normal((n, 6)).astype(np.float32) for s, n in [("a", 11), ("b", 4)]}
    coords = {s: rng.uniform(0, 2000, (len(v), 2)).astype(np.float32) for s, v in x.items()}
    bags = ImageBags.from_features({s: _h5(tmp_path / f"{s}.h5", v, coords[s]) for s, v in x.items()})
    spans = []
    original = rows_module._H5Rows.rows
    monkeypatch.setattr(rows_module._H5Rows, "rows",
                        lambda self, a, b: spans.append((a, b)) or original(self, a, b))
    from clinfuse.datasets.modalities.images import ImagesModality

    schema = {"kind": "features", "feature_dim": 6}
    streamed = ImagesModality().collate(_items(bags, True), schema, torch.tensor([True, True]))
    loaded = ImagesModality().collate(_items(bags, False), schema, torch.tensor([True, True]))
    torch.testing.assert_close(streamed.tensors["coords"], loaded.tensors["coords"])
    encoder = FeatureBagEncoder(in_dim=6, d_model=8, positional=True, coord_scale=1 / 256).eval()
    encoder.chunk_rows = 4
    with torch.no_grad():
        a, b = encoder(streamed), encoder(loaded)
    assert spans == [(0, 4), (4, 8), (8, 11), (0, 4)], "h5 rows were not read chunk by chunk"
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=1e-6)
    assert bool((a.values[1, 4:] == 0).all()), "padding rows of a streamed batch must be exactly 0"


def test_a_multi_slide_bag_with_an_absent_sample_streams_like_the_loaded_batch(tmp_path):
    rng = np.random.default_rng(4)
    np.save(tmp_path / "a2.npy", rng.standard_normal((5, 6)).astype(np.float16))
    bags = ImageBags.from_features({"a": [rng.standard_normal((3, 6)), tmp_path / "a2.npy"],
                                    "b": rng.standard_normal((2, 6)).astype(np.float32)})
    from clinfuse.datasets.modalities.images import ImagesModality

    schema = {"kind": "features", "feature_dim": 6}
    items_s, items_l = _items(bags, True) + [None], _items(bags, False) + [None]
    present = torch.tensor([True, True, False])
    streamed = ImagesModality().collate(items_s, schema, present)
    loaded = ImagesModality().collate(items_l, schema, present)
    assert streamed.names == loaded.names and torch.equal(streamed.mask, loaded.mask)
    encoder = FeatureBagEncoder(in_dim=6, d_model=8, activation="gelu").eval()
    encoder.chunk_rows = 2
    with torch.no_grad():
        torch.testing.assert_close(encoder(streamed).values, encoder(loaded).values, rtol=0, atol=1e-6)
    with torch.enable_grad():  # autograd (training on a streamed batch) reads the bag whole
        torch.testing.assert_close(encoder.train(False)(streamed).values, encoder(loaded).values,
                                   rtol=0, atol=1e-6)


def test_a_non_finite_row_in_a_streamed_file_is_named(tmp_path):
    x = np.ones((9, 3), dtype=np.float32)
    x[6, 1] = np.nan
    np.save(tmp_path / "s.npy", x)
    rows = ImageBags.from_features({"s": tmp_path / "s.npy"}).rows("s")
    with pytest.raises(ValueError, match=r"sample 's'.*row 6 holds NaN"):
        list(rows.chunks(4))


def test_pixel_bags_have_no_row_source():
    bags = ImageBags.from_patches({"s": np.zeros((2, 3, 4, 4), dtype=np.float32)})
    assert bags.rows("s") is None
    item = BagReader(bags).read("s", 0, ReadContext(stream=True))
    assert item["data"].shape == (2, 3, 4, 4)


def test_the_encoder_names_a_source_larger_than_the_mask():
    bags = ImageBags.from_features({"s": np.zeros((5, 3), dtype=np.float32)})
    batch = ModalityBatch("images", torch.ones(1, 4, dtype=torch.bool), torch.tensor([True]), {}, [[""] * 4],
                          {"feature_rows": [bags.rows("s")]})
    with torch.no_grad(), pytest.raises(ValueError, match="sample 's' has 5 patches"):
        FeatureBagEncoder(in_dim=3, d_model=4).eval()(batch)
