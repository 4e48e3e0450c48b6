"""Slide embeddings as a per-patient feature vector (the other choice besides a one-token bag)."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets import Cohort, ImageBags, slide_embeddings

RNG = np.random.default_rng(5)
D = 6


def _titan_folder(root, slides):
    """TRIDENT's slide_features_<encoder>/ layout: one <slide>.h5 with a 1-D ``features`` per slide."""
    folder = root / "slide_features_titan"
    folder.mkdir()
    for sid, vec in slides.items():
        with h5py.File(folder / f"{sid}.h5", "w") as f:
            f["features"] = vec.astype(np.float32)
    return folder


def test_several_slides_of_a_patient_reduce_to_one_row(tmp_path):
    v = {s: RNG.normal(size=D).astype(np.float32) for s in ("a1", "a2", "b1", "stray")}
    folder = _titan_folder(tmp_path, v)
    patients = {"a1": "A", "a2": "A", "b1": "B"}
    with pytest.warns(UserWarning, match="stray"):
        frame = slide_embeddings(folder, patient_of=patients)
    assert list(frame.index) == ["A", "B"] and list(frame.columns) == [f"slide_{k}" for k in range(D)]
    np.testing.assert_allclose(frame.loc["A"], (v["a1"].astype(np.float64) + v["a2"]) / 2, rtol=1e-6)
    np.testing.assert_allclose(frame.loc["B"], v["b1"], rtol=1e-6)
    assert frame.attrs["slides"]["A"] == ["a1", "a2"]
    with pytest.warns(UserWarning):
        bags = ImageBags.from_features(folder, patient_of=patients)
    top = bags.slide_vectors(reduce="max", prefix="titan_")
    np.testing.assert_allclose(top.loc["A"], np.maximum(v["a1"], v["a2"]), rtol=1e-6)
    assert top.columns[0] == "titan_0"
    with pytest.raises(ValueError, match=r"reduce must be one of \('mean', 'max'\), got 'median'"):
        bags.slide_vectors(reduce="median")


def test_patch_bags_are_not_turned_into_vectors(tmp_path):
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f["features"] = RNG.normal(size=(4, D)).astype(np.float32)
    with pytest.raises(ValueError, match=r"1 slide\(s\) are patch bags: 'p' \(slide 'p': 4 patches\)"):
        ImageBags.from_features(tmp_path).slide_vectors()
    with pytest.raises(ValueError, match=r"'only' \(slide 'slide0': 1 patches\)"):  # [1, D] is no embedding
        ImageBags.from_features({"only": RNG.normal(size=(1, D))}).slide_vectors()


@pytest.mark.slow
def test_a_fusion_model_learns_from_slide_vectors_as_clinical_variables(tmp_path):
    """End to end: TITAN-style slide files -> vectors per patient (two slides for some, averaged) ->
    Cohort(clinical=vectors) -> FusionModel fit -> predictions for held-out patients."""
    from clinfuse.fusion import FusionModel

    n = 80
    y = np.array(["high", "low"] * (n // 2))
    centre = np.where(y == "high", 1.0, -1.0)[:, None] * np.ones(D)
    slides, patient_of = {}, {}
    for i in range(n):
        for k in range(1 + i % 2):  # every second patient has two slides
            sid = f"P{i:02d}-S{k}"
            slides[sid] = centre[i] + RNG.normal(scale=0.3, size=D)
            patient_of[sid] = f"P{i:02d}"
    vectors = slide_embeddings(_titan_folder(tmp_path, slides), patient_of=patient_of)
    ids = [f"P{i:02d}" for i in range(n)]
    joined = Cohort(clinical=pd.DataFrame({"age": RNG.normal(60, 10, size=n)}, index=ids).join(vectors),
                    labels=pd.Series(y, index=ids))  # beside real clinical variables: numeric columns
    assert joined.clinical_types == {"age": "numeric", **{f"slide_{k}": "numeric" for k in range(D)}}
    cohort = Cohort(clinical=vectors, labels=pd.Series(y, index=ids))
    train, test = cohort.subset(ids[:60]), cohort.subset(ids[60:])
    model = FusionModel(task="classification", d_model=16, n_heads=2, n_layers=1, batch_size=8,
                        max_epochs=20, early_stopping_patience=20, verbose=False, seed=0).fit(train)
    predicted = model.predict(test)
    assert list(predicted.index) == ids[60:]
    assert (predicted.to_numpy() == y[60:]).mean() >= 0.8  # the label lives in the embedding alone
