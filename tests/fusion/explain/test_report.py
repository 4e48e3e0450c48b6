"""AttentionReport: tidy rows from attention records, normalisation, exports (atomic), AnnData, GeoJSON."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.datasets.batch import Batch
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.fusion.explain import COLUMNS, AttentionReport, ParquetStream, records_to_frame
from clinfuse.fusion.records import AttentionRecord, masked_normalise

CLASSES = ["low", "high"]


def _batch_and_records(seed: int = 0):
    """A batch of 3 samples (sample 1 lacks images) and records of several kinds over it."""
    images = random_modality_batch("images", random_schema("images"), lengths=[4, 0, 6], seed=seed)
    clinical = random_modality_batch("clinical", random_schema("clinical"),
                                     present=[True, True, False], seed=seed)
    batch = Batch(sample_ids=["a", "b", "c"], patient_ids=["P1", "P1", "P2"],
                  modalities={"clinical": clinical, "images": images})
    g = torch.Generator().manual_seed(seed)

    def record(kind, mb, n_classes, class_names):
        raw = torch.randn(3, n_classes, mb.n_tokens, generator=g)
        mask = mb.mask[:, None, :].expand_as(raw)
        return AttentionRecord(kind=kind, modality=mb.modality, value=masked_normalise(raw, mask),
                               raw=raw, mask=mb.mask, names=mb.names, class_names=class_names)

    present = torch.stack([clinical.present, images.present], dim=1)  # [B, M]
    mod_raw = torch.randn(3, 1, 2, generator=g)
    modality = AttentionRecord(kind="modality", modality="all",
                               value=masked_normalise(mod_raw, present[:, None]),
                               raw=mod_raw, mask=present, names=[["clinical", "images"]] * 3)
    phi_raw = torch.rand(3, 2, 1, generator=g)
    phi = AttentionRecord(kind="phi", modality="clinical", value=phi_raw / phi_raw.sum(1, keepdim=True),
                          raw=phi_raw, mask=torch.ones(3, 1, dtype=torch.bool), names=[["clinical"]] * 3,
                          class_names=CLASSES)
    records = [modality, record("feature", clinical, 1, None), record("patch", images, 1, None),
               record("explanatory", images, 2, CLASSES), phi]
    return batch, records


def test_rows_columns_and_normalisation():
    batch, records = _batch_and_records()
    frame = records_to_frame(batch, records)
    assert list(frame.columns) == list(COLUMNS)
    by = ["sample_id", "kind", frame.target_class.fillna("-")]
    sums = frame[frame.kind != "phi"].groupby(by)["value"].sum()
    assert np.allclose(sums.to_numpy(), 1.0)
    # padding never appears: sample a has 4 patches, b none (absent), c has 6
    patches = frame[frame.kind == "patch"]
    assert patches.groupby("sample_id").size().to_dict() == {"a": 4, "c": 6}
    # absent modality: weight 0 exactly, and no token rows
    mod = frame[frame.kind == "modality"].set_index(["sample_id", "token"])["value"]
    assert mod[("b", "images")] == 0.0 and mod[("c", "clinical")] == 0.0
    assert frame[(frame.kind == "feature") & (frame.sample_id == "c")].empty
    # structured patch columns come from the batch; patient ids from groups
    assert patches[["position", "x", "y"]].notna().all().all()
    assert set(patches.slide_id) == {"s0"}
    assert set(frame[frame.sample_id == "b"].patient_id) == {"P1"}
    # phi: one row per class with token "clinical", normalised over classes
    phi = frame[frame.kind == "phi"]
    assert set(phi.token) == {"clinical"} and np.allclose(phi.groupby("sample_id").value.sum(), 1.0)


def test_raw_values_are_kept():
    batch, records = _batch_and_records()
    frame = records_to_frame(batch, records, kinds=["patch"])
    raw = records[2].raw[0, 0, :4].numpy()
    assert np.allclose(frame[frame.sample_id == "a"].raw_value.to_numpy(), raw)


def test_modality_weights_and_missing_kind_error():
    batch, records = _batch_and_records()
    report = AttentionReport(records_to_frame(batch, records), aggregator="x")
    weights = report.modality_weights()
    assert list(weights.index) == ["a", "b", "c"] and np.allclose(weights.sum(1), 1.0)
    assert weights.loc["b", "images"] == 0.0
    no_modality = AttentionReport(records_to_frame(batch, records, kinds=["patch"]), aggregator="abmil")
    with pytest.raises(ValueError, match="abmil.*modality"):
        no_modality.modality_weights()
    with pytest.raises(ValueError, match="unknown attention kind"):
        report.to_frame(kinds=["nonsense"])


def test_top_tokens_orders_by_value():
    batch, records = _batch_and_records()
    report = AttentionReport(records_to_frame(batch, records))
    top = report.top_tokens("c", k=3, kind="patch")
    assert len(top) == 3 and top.value.is_monotonic_decreasing
    with pytest.raises(ValueError, match="'zzz' is not in this report"):
        report.top_tokens("zzz")


def test_exports_round_trip(tmp_path):
    batch, records = _batch_and_records()
    report = AttentionReport(records_to_frame(batch, records))
    back = pd.read_parquet(report.to_parquet(tmp_path / "att.parquet"))
    assert len(back) == len(report.frame) and list(back.columns) == list(COLUMNS)
    assert len(pd.read_csv(report.to_csv(tmp_path / "att.csv"))) == len(report.frame)
    assert len(json.loads(report.to_json(tmp_path / "att.json").read_text())) == len(report.frame)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_streaming_is_atomic(tmp_path):
    batch, records = _batch_and_records()
    out = tmp_path / "stream.parquet"
    stream = ParquetStream(out)
    stream.write(records_to_frame(batch, records))
    assert not out.exists()  # nothing visible until close
    stream.abort(RuntimeError("interrupted"))
    assert not out.exists() and list(tmp_path.iterdir()) == []
    stream = ParquetStream(out)
    for seed in range(3):
        batch, records = _batch_and_records(seed)
        stream.write(records_to_frame(batch, records))
    stream.close()
    report = AttentionReport(path=out)
    assert len(report.to_frame()) == stream.rows


def test_anndata_exports():
    batch, records = _batch_and_records()
    report = AttentionReport(records_to_frame(batch, records))
    adata = report.to_anndata()
    assert list(adata.obs_names) == ["a", "b", "c"]
    assert {"modality", "feature", "phi[low]", "phi[high]"} <= set(adata.layers)
    names = set(adata.var_names)
    assert {"age", "grade", "clinical", "images"} <= names or "clinical/clinical" in names
    feature = pd.DataFrame(adata.layers["feature"], index=adata.obs_names, columns=adata.var_names)
    assert np.isnan(feature.loc["c", "age"])  # sample c has no clinical data: NaN, not 0
    patches = report.to_patch_anndata()
    assert set(patches) == {"a:s0", "c:s0"}
    assert patches["c:s0"].obsm["spatial"].shape == (6, 2)
    assert np.isclose(np.nansum(patches["c:s0"].layers["patch"]), 1.0)


def test_geojson_for_qupath(tmp_path):
    batch, records = _batch_and_records()
    report = AttentionReport(records_to_frame(batch, records))
    path = report.to_geojson(tmp_path / "a.geojson", "a", patch_size=256)
    data = json.loads(path.read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 4
    ring = data["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and abs(ring[1][0] - ring[0][0]) == 256
    total = sum(f["properties"]["measurements"]["attention_patch"] for f in data["features"])
    assert np.isclose(total, 1.0)
    with pytest.raises(ValueError, match="target_class"):
        report.to_geojson(tmp_path / "b.geojson", "a", kind="explanatory")


def test_atomic_outputs_get_ordinary_permissions(tmp_path):
    import os

    from clinfuse.datasets.atomic import atomic_path, write_text_atomic

    umask = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "folder", directory=True) as tmp:
            (tmp / "inner.txt").write_text("y")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "folder" / "inner.txt").read_text() == "y"
