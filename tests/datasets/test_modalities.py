"""The modality registry and interface: the built-in four, and a fifth one defined in this file alone."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.datasets import (
    MODALITIES,
    TOKEN_KIND,
    Cohort,
    ModalityBatch,
    Preprocessor,
    make_loader,
    make_synthetic_cohort,
)
from clinfuse.datasets.modalities import (
    MODALITY_REGISTRY,
    Modality,
    ModalityPreprocessor,
    Normalised,
    TableReader,
    get_modality,
    register_modality,
    unregister_modality,
)
from clinfuse.datasets.statistics import mean_std
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.datasets.validation import indexed_frame
from clinfuse.encoders import default_encoder
from clinfuse.fusion.config import DataConfig, data_keys, write_cohort_files
from clinfuse.fusion.persistence import data_shapes

BUILT_IN = ("clinical", "genomics", "images", "events")


@pytest.fixture(scope="module")
def cohort():
    cohort, _ = make_synthetic_cohort(24, n_patches=(3, 6), feature_dim=8, n_genes=12, n_codes=6, seed=3)
    return cohort


def test_registry_lists_the_four_in_canonical_order():
    assert MODALITY_REGISTRY.names() == BUILT_IN
    assert MODALITIES == BUILT_IN and list(MODALITIES) == list(BUILT_IN)
    assert repr(MODALITIES) == repr(BUILT_IN) and "events" in MODALITIES and MODALITIES[1] == "genomics"
    kinds = {"clinical": "feature", "genomics": "gene", "images": "patch", "events": "event"}
    assert dict(TOKEN_KIND) == kinds
    assert [m.name for m in MODALITY_REGISTRY] == list(BUILT_IN)


def test_unknown_modality_lists_the_registered_ones():
    registered = "registered modalities: clinical, genomics, images, events"
    with pytest.raises(ValueError, match=f"unknown modality 'audio'; {registered}"):
        get_modality("audio")
    with pytest.raises(ValueError, match="registered modalities: clinical"):
        default_encoder("audio", {})


def test_registry_refuses_duplicates_reserved_names_and_non_modalities():
    with pytest.raises(ValueError, match="already registered"):
        register_modality(type(get_modality("clinical")))
    with pytest.raises(TypeError, match="expected a Modality"):
        register_modality(object())  # type: ignore[arg-type]

    class Labels(Proteomics):
        name = "labels"

    with pytest.raises(ValueError, match="reserved"):
        register_modality(Labels)
    assert MODALITY_REGISTRY.names() == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_preprocessor_round_trips_through_json(cohort, name):
    fitted = Preprocessor(top_genes=8).fit(cohort).preprocessors_[name]
    state = json.loads(json.dumps(fitted.to_dict()))
    again = type(fitted).from_dict(state)
    assert again.is_fitted and again.schema() == fitted.schema() and again.state() == fitted.state()
    assert again.get_params() == fitted.get_params()
    data = getattr(cohort, name)
    context = (cohort.index_time,) if name == "events" else ()
    a, b = fitted.transform(data, *context), again.transform(data, *context)
    if name == "clinical":
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    elif name == "genomics":
        np.testing.assert_array_equal(a, b)
    elif name == "events":
        assert a.keys() == b.keys()
        for sid in a:
            for key in ("codes", "values", "times"):
                np.testing.assert_array_equal(a[sid][key], b[sid][key])
    assert type(fitted)().to_dict()["fitted"] is None  # unfitted: parameters only


def test_reference_preprocessor_files_load_through_the_parts():
    root = Path(__file__).resolve().parents[1] / "data" / "reference_models"
    for path in sorted(root.glob("*/model/preprocessor.json")):
        raw = json.loads(path.read_text())
        p = Preprocessor.from_json(path)
        assert p.to_dict()["fitted"] == raw["fitted"] and p.to_dict()["params"] == raw["params"]
        assert set(p.preprocessors_) == set(raw["fitted"]["modalities"])


def test_token_grids_of_images_and_events():
    images = random_modality_batch("images", random_schema("images"), lengths=[2, 3])
    grids = get_modality("images").token_grids(images)
    assert list(grids) == ["position", "x", "y", "slide_id"] == list(get_modality("images").report_columns)
    np.testing.assert_array_equal(grids["x"], images.tensors["coords"][..., 0].numpy())
    assert grids["slide_id"] == images.meta["slide_id"]
    meta = {"x": np.ones((2, 3)), "slide_id": [["a"] * 3] * 2}
    own = get_modality("images").token_grids(None, meta)
    assert list(own) == ["x", "slide_id"] and own["x"].tolist() == [[1.0] * 3] * 2
    events = random_modality_batch("events", random_schema("events"), lengths=[2, 3])
    grids = get_modality("events").token_grids(events)
    assert list(grids) == ["time", "code"]
    assert grids["time"] is events.tensors["times"] and grids["code"] == events.meta["code"]
    assert get_modality("clinical").token_grids(None) == {}


# ------------------------------------------------------------------------------- a fifth modality


class ProteomicsPreprocessor(ModalityPreprocessor):
    """Standardises each protein with its training mean / std."""

    params = ("scale",)

    def __init__(self, *, scale: bool = True) -> None:
        self.scale = bool(scale)

    def _fit(self, frame: pd.DataFrame, cohort: Any) -> None:
        self.proteins_ = [str(c) for c in frame.columns]
        self.stats_ = [list(mean_std(frame[c].to_numpy(dtype=np.float64))) for c in frame.columns]

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        values = frame[self.proteins_].to_numpy(dtype=np.float64)
        if self.scale:
            mean, std = np.array(self.stats_).T
            values = (values - mean) / std
        return np.nan_to_num(values).astype(np.float32)

    def schema(self) -> dict[str, Any]:
        return {"genes": list(self.proteins_), "gene_sets": None}  # the gene encoders' input contract

    def state(self) -> dict[str, Any]:
        return {"proteins": self.proteins_, "stats": self.stats_}

    def _load(self, state: dict[str, Any]) -> None:
        self.proteins_, self.stats_ = state["proteins"], state["stats"]

    def check_compatible(self, frame: pd.DataFrame) -> list[str]:
        lost = [p for p in self.proteins_ if p not in frame.columns]
        return [f"proteomics: missing protein(s) {lost}"] if lost else []


class Proteomics(Modality):
    """A numeric vector per sample (a DataFrame samples x proteins), one token per protein."""

    name = "proteomics"
    token_kind = "protein"
    layout = "genomics"  # batches like the genomics ones: the gene encoders encode it too
    preprocessor_class = ProteomicsPreprocessor
    noun = "protein profile"
    data_keys: ClassVar[dict[str, str]] = {"proteomics": "protein table (CSV), one row per sample"}

    def normalise(self, data: Any, options: Mapping[str, Any]) -> Normalised:
        frame = indexed_frame(data, what="proteomics").astype(np.float64)
        return Normalised(frame, {}, [])

    def sample_ids(self, data: pd.DataFrame) -> list[str]:
        return list(data.index)

    def subset(self, data: pd.DataFrame, ids: list[str]) -> pd.DataFrame | None:
        return data.loc[ids] if ids else None

    def summary_lines(self, data: pd.DataFrame, cohort: Any) -> list[str]:
        return [f"  proteomics: {data.shape[1]} proteins"]

    def shape(self, data: pd.DataFrame) -> list[int]:
        return list(data.shape)

    def default_encoder(self, schema_entry: Mapping[str, Any]) -> str:
        return "gene_transformer"

    def reader(self, data: pd.DataFrame, cohort: Any, preprocessor: ProteomicsPreprocessor) -> TableReader:
        return TableReader({str(s): i for i, s in enumerate(data.index)}, preprocessor.transform(data))

    def collate(self, items: Sequence[np.ndarray | None], schema_entry: Mapping[str, Any],
                present: torch.Tensor) -> ModalityBatch:
        proteins = list(schema_entry["genes"])
        values = np.zeros((len(items), len(proteins)), dtype=np.float32)
        for b, item in enumerate(items):
            if item is not None:
                values[b] = item
        mask = present[:, None].expand(len(items), len(proteins)).clone()
        names = [list(proteins) if p else [""] * len(proteins) for p in present.tolist()]
        return ModalityBatch(self.name, mask, present, {"values": torch.from_numpy(values)}, names)

    def read_files(self, source: Any) -> dict[str, Any]:
        return {"proteomics": source.table("proteomics")}

    def write_files(self, data: pd.DataFrame, cohort: Any, folder: Path) -> dict[str, Any]:
        data.rename_axis("sample_id").reset_index().to_csv(folder / "proteomics.csv", index=False)
        return {"proteomics": "proteomics.csv"}


@pytest.fixture
def proteomics():
    register_modality(Proteomics)
    try:
        yield get_modality("proteomics")
    finally:
        unregister_modality("proteomics")
    assert MODALITY_REGISTRY.names() == BUILT_IN


def _fifth_cohort(cohort: Cohort) -> Cohort:
    rng = np.random.default_rng(0)
    ids = cohort.sample_ids[2:]  # two samples lack proteomics
    proteins = pd.DataFrame(rng.normal(size=(len(ids), 5)), index=ids, columns=[f"P{i}" for i in range(5)])
    return Cohort(clinical=cohort.clinical, events=cohort.events, labels=cohort.labels, proteomics=proteins)


def test_a_fifth_modality_builds_a_cohort_fits_and_collates(cohort, proteomics):
    assert MODALITIES[-1] == "proteomics" and TOKEN_KIND["proteomics"] == "protein"
    five = _fifth_cohort(cohort)
    assert five.modalities == ("clinical", "events", "proteomics")
    assert five.has(five.sample_ids[3], "proteomics") and not five.has(five.sample_ids[0], "proteomics")
    summary = five.summary()
    assert "  proteomics: 5 proteins" in summary and re.search(r"proteomics\s+22 / 24 samples", summary)
    sub = five.subset(five.sample_ids[:4])
    assert list(sub.proteomics.index) == five.sample_ids[2:4]
    assert data_shapes(five)["proteomics"] == [22, 5]

    pre = Preprocessor(modality_params={"proteomics": {"scale": False}}).fit(five)
    assert list(pre.schema_) == ["clinical", "events", "proteomics", "task"]
    assert pre.proteins_ == [f"P{i}" for i in range(5)] and pre.preprocessors_["proteomics"].scale is False
    again = Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again.schema_ == pre.schema_ and again.modality_params == {"proteomics": {"scale": False}}
    assert default_encoder("proteomics", pre.schema_["proteomics"]) == "gene_transformer"

    batch = next(iter(make_loader(five, pre, batch_size=6)))
    assert list(batch.modalities) == ["clinical", "events", "proteomics"]
    prot = batch.modalities["proteomics"]
    assert prot.tensors["values"].shape == (6, 5)
    assert prot.present.tolist() == [False, False, True, True, True, True]
    assert not prot.mask[0].any() and prot.mask[2].all() and prot.names[2][0] == "P0"
    first = five.proteomics.iloc[0].to_numpy()
    np.testing.assert_allclose(prot.tensors["values"][2].numpy(), first, rtol=1e-6)

    with pytest.raises(ValueError, match="proteomics: missing protein"):
        pre.check_compatible(Cohort(proteomics=five.proteomics.drop(columns="P1")))


def test_a_fifth_modality_reads_and_writes_its_files(cohort, proteomics, tmp_path):
    five = _fifth_cohort(cohort)
    assert "proteomics" in data_keys()
    spec = write_cohort_files(five, tmp_path)
    assert spec["proteomics"] == "proteomics.csv" and (tmp_path / "proteomics.csv").is_file()
    back = DataConfig.parse(spec, base=tmp_path).to_cohort(task="classification", require_targets=True)
    assert back.modalities == five.modalities
    pd.testing.assert_frame_equal(back.proteomics, five.proteomics, check_names=False)


def test_unknown_cohort_keywords_name_the_registered_modalities():
    with pytest.raises(TypeError, match="unexpected keyword.*'proteomics'.*clinical"):
        Cohort(proteomics=pd.DataFrame({"a": [1.0]}, index=["s1"]))


def _fifth_with_images(cohort: Cohort) -> Cohort:
    five = _fifth_cohort(cohort)
    return Cohort(clinical=five.clinical, images=cohort.images, labels=five.labels,
                  proteomics=five.proteomics)


def test_a_fifth_modality_trains_predicts_saves_and_explains(cohort, proteomics, tmp_path):
    """The proof that a modality is one module: nothing in the library names proteomics, yet the default
    model (PersAM over the image bag, the clinical record and the protein panel) trains on it, saves,
    reloads, predicts the same and exports per-protein weights beside the patch attention."""
    from clinfuse.fusion import FusionModel

    five = _fifth_with_images(cohort)
    assert five.modalities == ("clinical", "images", "proteomics")
    model = FusionModel(d_model=16, n_heads=2, max_epochs=2, batch_size=8, validation_fraction=0.0,
                        verbose=False, seed=0).fit(five)
    assert model.modalities_ == ["clinical", "images", "proteomics"]
    assert model.network_config_["encoders"]["proteomics"]["name"] == "gene_transformer"
    assert "protein" in model.attention_kinds and "patch" in model.attention_kinds
    proba = model.predict_proba(five)
    assert proba.shape == (len(five), 2) and np.isfinite(proba.to_numpy()).all()

    loaded = FusionModel.load(model.save(tmp_path / "model"))
    pd.testing.assert_frame_equal(loaded.predict_proba(five), proba)

    report = loaded.explain(five)
    rows = report.to_frame()
    protein = rows[rows["kind"] == "protein"]
    assert set(protein["modality"]) == {"proteomics"}
    assert set(protein["token"]) == {f"P{i}" for i in range(5)}
    assert set(protein["sample_id"]) == set(five.proteomics.index)  # only the samples that have the panel
    sums = protein.groupby(["sample_id", "target_class"])["value"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-5)
    modality = rows[rows["kind"] == "modality"]
    assert "proteomics" in set(modality["token"])
    without = modality[modality["sample_id"] == five.sample_ids[0]]
    assert float(without.loc[without["token"] == "proteomics", "value"].sum()) == 0.0  # absent: weight 0
