"""CohortDataset / collate_samples / make_loader: batches follow the contract of clinfuse.datasets.batch."""

from __future__ import annotations

import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.datasets import Cohort, CohortDataset, ImageBags, Preprocessor, collate_samples, make_loader
from clinfuse.datasets.batch import MODALITIES, Batch
from clinfuse.datasets.loading import format_days
from clinfuse.datasets.testing import random_modality_batch
from hypothesis import given, settings
from hypothesis import strategies as st

IDS = [f"s{i}" for i in range(10)]
D = 5


def make_cohort(*, task: str = "classification") -> Cohort:
    """s0 lacks genomics, s1 lacks images, s2 has two slides, s3 has a 40-patch bag, s4 has 12 events."""
    rng = np.random.default_rng(0)
    clinical = pd.DataFrame({"age": rng.normal(60, 10, 10), "stage": rng.choice(["I", "II"], 10)}, index=IDS)
    genomics = ad.AnnData(X=rng.normal(size=(9, 6)), obs=pd.DataFrame(index=IDS[1:]),
                          var=pd.DataFrame(index=[f"G{j}" for j in range(6)]))
    bags: dict[str, object] = {s: rng.normal(size=(3 + i % 4, D)).astype(np.float32)
                               for i, s in enumerate(IDS)}
    del bags["s1"]
    bags["s2"] = [rng.normal(size=(2, D)).astype(np.float32), rng.normal(size=(3, D)).astype(np.float32)]
    bags["s3"] = rng.normal(size=(40, D)).astype(np.float32)
    rows = [(s, float(t), c, v) for s in IDS for t, c, v in [(1.0, "HR", 70.0), (3.5, "LAB", np.nan)]]
    rows += [("s4", 10.0 + k, "HR", 60.0 + k) for k in range(10)]
    events = pd.DataFrame(rows, columns=["sample_id", "time", "code", "value"])
    kw = {"clinical": clinical, "genomics": genomics, "images": ImageBags.from_features(bags),
          "events": events,
          "groups": pd.Series([f"p{i // 2}" for i in range(10)], index=IDS)}
    if task == "classification":
        kw["labels"] = pd.Series(["a", "b"] * 5, index=IDS)
    else:
        kw["survival"] = pd.DataFrame({"time": np.arange(1.0, 11.0), "event": [1, 0] * 5}, index=IDS)
    return Cohort(**kw)


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    return make_cohort()


@pytest.fixture(scope="module")
def pre(cohort) -> Preprocessor:
    return Preprocessor().fit(cohort)


def full_batch(cohort, pre, **kw) -> Batch:
    ds = CohortDataset(cohort, pre, **kw)
    return collate_samples([ds[i] for i in range(len(ds))])


def test_batch_matches_the_contract_format(cohort, pre):
    batch = full_batch(cohort, pre)
    assert batch.sample_ids == IDS and batch.patient_ids == [f"p{i // 2}" for i in range(10)]
    assert list(batch.modalities) == list(MODALITIES)
    for m, mb in batch.modalities.items():
        ref = random_modality_batch(m, pre.schema_[m], lengths=[3] * 10)
        assert mb.modality == m and mb.mask.dtype == torch.bool and mb.present.shape == (10,)
        assert set(mb.tensors) == set(ref.tensors) and set(mb.meta) == set(ref.meta), m
        for key, value in mb.tensors.items():
            assert value.dtype == ref.tensors[key].dtype, (m, key)
            assert value.shape[0] == 10 and value.shape[2:] == ref.tensors[key].shape[2:], (m, key)
        assert len(mb.names) == 10 and all(len(row) == mb.n_tokens for row in mb.names)
        assert all((name != "") == real for row, mrow in zip(mb.names, mb.mask.tolist(), strict=True)
                   for name, real in zip(row, mrow, strict=True))
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [0, 1] * 5
    assert batch.time is None and batch.event is None
    clinical = batch.modalities["clinical"]
    assert clinical.names[0] == ["age", "stage"] and clinical.mask.all()


def test_absent_modality_is_masked_not_imputed(cohort, pre):
    batch = full_batch(cohort, pre)
    genomics, images = batch.modalities["genomics"], batch.modalities["images"]
    assert genomics.present.tolist() == [False] + [True] * 9
    assert not genomics.mask[0].any() and genomics.mask[1:].all() and genomics.names[0] == [""] * 6
    assert not images.present[1] and not images.mask[1].any()
    assert images.meta["slide_id"][1] == [""] * images.n_tokens
    for m, mb in batch.modalities.items():
        expected = [cohort.has(s, m) for s in IDS]
        assert mb.present.tolist() == expected, m


def test_images_padding_positions_and_names(cohort, pre):
    batch = full_batch(cohort, pre)
    images = batch.modalities["images"]
    sizes = [0 if s == "s1" else cohort.images.n_patches(s) for s in IDS]
    assert images.n_tokens == max(sizes) == 40
    assert images.mask.sum(1).tolist() == sizes
    assert images.tensors["features"].shape == (10, 40, D)
    assert (images.tensors["features"][~images.mask] == 0).all()
    bag0 = cohort.images.load("s0")
    np.testing.assert_array_equal(images.tensors["features"][0, : len(bag0)].numpy(), bag0.data)
    # a lone unnamed slide: `position`
    assert images.names[0][: len(bag0)] == [str(i) for i in range(len(bag0))]
    assert images.names[2][:5] == ["slide0:0", "slide0:1", "slide1:0", "slide1:1", "slide1:2"]
    assert images.tensors["position"][2, :5].tolist() == [0, 1, 0, 1, 2]
    assert images.meta["slide_id"][2][:6] == ["slide0", "slide0", "slide1", "slide1", "slide1", ""]


def test_max_patches_samples_in_training_and_keeps_all_at_inference(cohort, pre):
    full = cohort.images.load("s3").data
    ds = CohortDataset(cohort, pre, train=True, max_patches=6, seed=3)
    first, second = ds[3].images, ds[3].images
    for bag in (first, second):
        pos = bag["positions"]
        assert len(pos) == 6 and len(set(pos.tolist())) == 6 and (np.diff(pos) > 0).all()
        np.testing.assert_array_equal(bag["data"], full[pos])
    assert first["positions"].tolist() != second["positions"].tolist()  # a new draw per read
    again = CohortDataset(cohort, pre, train=True, max_patches=6, seed=3)[3].images
    assert again["positions"].tolist() == first["positions"].tolist()  # reproducible
    assert len(ds[0].images["positions"]) == cohort.images.n_patches("s0")  # small bags untouched
    assert len(CohortDataset(cohort, pre, train=False, max_patches=6)[3].images["positions"]) == 40
    with pytest.raises(ValueError, match="max_patches"):
        CohortDataset(cohort, pre, max_patches=0)


def test_events_times_order_names_and_cut(cohort):
    pre = Preprocessor(max_events=4).fit(cohort)
    batch = full_batch(cohort, pre)
    events = batch.modalities["events"]
    assert events.tensors["n_cut"].tolist() == [0, 0, 0, 0, 8, 0, 0, 0, 0, 0]
    assert events.n_tokens == 4 and events.mask[4].all() and events.mask[0].sum() == 2
    t_index = cohort.index_time["s4"]
    assert t_index == 19.0  # the latest event by default
    assert events.tensors["times"][4].tolist() == [0.0, 1.0, 2.0, 3.0]  # the 4 most recent, most recent first
    assert events.names[4] == ["HR@0", "HR@1", "HR@2", "HR@3"] and events.meta["code"][4] == ["HR"] * 4
    assert events.tensors["times"][0, :2].tolist() == [0.0, 2.5]
    assert events.names[0][:2] == ["LAB@0", "HR@2.5"]
    assert events.tensors["has_value"][0, :2].tolist() == [False, True]
    assert (events.tensors["times"][events.mask] >= 0).all()
    assert events.tensors["codes"][0, :2].tolist() == [pre.code_vocab_.index("LAB") + 2,
                                                       pre.code_vocab_.index("HR") + 2]
    assert (events.tensors["codes"][~events.mask] == 0).all()
    assert format_days(0.041666) == "0.04" and format_days(12.0) == "12" and format_days(1.5) == "1.5"


def test_survival_targets_and_unfitted_or_incompatible_preprocessor():
    cohort = make_cohort(task="survival")
    batch = full_batch(cohort, Preprocessor().fit(cohort))
    assert batch.labels is None and batch.time.dtype == torch.float32 and batch.event.dtype == torch.float32
    assert batch.time.tolist() == list(np.arange(1.0, 11.0)) and batch.event.tolist() == [1.0, 0.0] * 5
    with pytest.raises(ValueError, match="not fitted yet"):
        CohortDataset(cohort, Preprocessor())
    clinical_only = Preprocessor().fit(Cohort(clinical=cohort.clinical))
    with pytest.raises(ValueError, match="not seen at fit time"):
        CohortDataset(cohort, clinical_only)


def test_make_loader_shuffles_reproducibly(cohort, pre):
    def order(seed):
        loader = make_loader(cohort, pre, batch_size=3, shuffle=True, seed=seed)
        return [s for b in loader for s in b.sample_ids]

    first = order(7)
    assert sorted(first) == sorted(IDS) and first == order(7) and first != order(8)
    loader = make_loader(cohort, pre, batch_size=4)
    batches = list(loader)
    assert [len(b) for b in batches] == [4, 4, 2] and [s for b in batches for s in b.sample_ids] == IDS


def test_npy_bags_are_read_lazily_per_item(tmp_path):
    rng = np.random.default_rng(1)
    paths = {}
    for i in range(4):
        path = tmp_path / f"slide{i}_x.npy"
        np.save(path, rng.normal(size=(500, 64)).astype(np.float32))
        paths[f"s{i}"] = path
    cohort = Cohort(images=ImageBags.from_features(paths),
                    labels=pd.Series(["a", "b"] * 2, index=list(paths)))
    ds = CohortDataset(cohort, Preprocessor().fit(cohort))
    assert len(pickle.dumps(ds)) < 4 * 500 * 64 * 4 / 20  # the dataset holds paths, not arrays
    np.testing.assert_array_equal(ds[1].images["data"], np.load(paths["s1"]))
    assert ds[1].images["names"][:2] == ["slide1_x:0", "slide1_x:1"]  # a named file: `slide:position`
    # changed on disk after the dataset was built
    np.save(paths["s1"], np.full((500, 64), 2.0, dtype=np.float32))
    assert (ds[1].images["data"] == 2.0).all()  # read again from disk on the next access


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_random_missingness_and_bag_sizes_never_break_batching(data):
    n = data.draw(st.integers(2, 8), label="n")
    patterns = data.draw(st.lists(st.lists(st.booleans(), min_size=4, max_size=4).filter(any), min_size=n,
                                  max_size=n), label="presence")
    sizes = data.draw(st.lists(st.integers(1, 12), min_size=n, max_size=n), label="bag sizes")
    batch_size = data.draw(st.integers(1, 5), label="batch size")
    max_patches = data.draw(st.one_of(st.none(), st.integers(1, 6)), label="max_patches")
    rng = np.random.default_rng(n)
    ids = [f"x{i}" for i in range(n)]
    has = {m: [s for s, p in zip(ids, patterns, strict=True) if p[k]] for k, m in enumerate(MODALITIES)}
    kw = {}
    if has["clinical"]:
        k = len(has["clinical"])
        sex = rng.choice(["f", "m"], k).astype(object)
        sex[0] = None if k > 1 else sex[0]  # a missing category, never a column without any value
        kw["clinical"] = pd.DataFrame({"age": rng.normal(size=k), "sex": sex}, index=has["clinical"])
    if has["genomics"]:
        kw["genomics"] = ad.AnnData(X=rng.normal(size=(len(has["genomics"]), 4)),
                                    obs=pd.DataFrame(index=has["genomics"]))
    if has["images"]:
        kw["images"] = ImageBags.from_features(
            {s: rng.normal(size=(sizes[ids.index(s)], 3)).astype(np.float32) for s in has["images"]})
    if has["events"]:
        kw["events"] = pd.DataFrame([(s, float(t), f"c{t % 3}", float(t)) for s in has["events"]
                                     for t in range(sizes[ids.index(s)])], columns=["sample_id", "time",
                                                                                    "code", "value"])
    cohort = Cohort(**kw, labels=pd.Series(["u", "v"] * (n // 2) + ["u"] * (n % 2), index=ids))
    pre = Preprocessor().fit(cohort)
    seen = []
    for batch in make_loader(cohort, pre, batch_size=batch_size, shuffle=True, train=True,
                             max_patches=max_patches):
        seen += batch.sample_ids
        for m, mb in batch.modalities.items():
            for b, sid in enumerate(batch.sample_ids):
                assert bool(mb.present[b]) == cohort.has(sid, m)
                n_real = int(mb.mask[b].sum())
                if not cohort.has(sid, m):
                    assert n_real == 0
                elif m == "images":
                    size = sizes[ids.index(sid)]
                    assert n_real == (size if max_patches is None else min(size, max_patches))
                elif m == "events":
                    assert n_real == sizes[ids.index(sid)]
                else:
                    assert n_real == mb.n_tokens
            for key, value in mb.tensors.items():
                if value.dtype.is_floating_point and key != "coords":  # coords are NaN when unknown
                    assert torch.isfinite(value).all(), m
    assert sorted(seen) == sorted(ids) and len(seen) == n
