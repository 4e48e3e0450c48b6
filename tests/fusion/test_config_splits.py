"""Config ``samples:`` and ``split:`` (CLAM / PORPOISE splits layout); ``clinfuse train`` on one fold writes
the per-epoch history, the training curve and the test metrics, and the folder still loads verified."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel
from clinfuse.fusion.cli import main
from clinfuse.fusion.config import DataConfig, load_run_config, write_cohort_files
from clinfuse.fusion.study_split import read_samples, read_split

TINY_MODEL = {"max_epochs": 3, "d_model": 16, "n_heads": 2, "batch_size": 8, "verbose": False,
              "early_stopping_patience": 5}


def clam_splits(path, train, val, test):
    """What CLAM's ``save_splits`` writes: an unnamed index column, then train, val, test padded with NaN."""
    n = max(len(train), len(val), len(test))
    frame = pd.DataFrame({c: pd.Series(ids + [np.nan] * (n - len(ids)), dtype=object)
                          for c, ids in (("train", train), ("val", val), ("test", test))})
    frame.to_csv(path)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A clinical + images cohort of 30 samples as files, and two CLAM folds splits/splits_{0,1}.csv."""
    root = tmp_path_factory.mktemp("study")
    cohort, _ = make_synthetic_cohort(30, modalities=("clinical", "images"), n_patches=(3, 5), feature_dim=6,
                                      seed=3)
    spec = write_cohort_files(cohort, root)
    ids = list(cohort.sample_ids)
    (root / "splits").mkdir()
    for k in (0, 1):
        order = ids[k * 6:] + ids[:k * 6]
        clam_splits(root / "splits" / f"splits_{k}.csv", order[:18], order[18:24], order[24:])
    return root, spec, ids


def test_read_split_clam_layout(study):
    root, _, ids = study
    split = read_split({"file": "splits/splits_{fold}.csv", "fold": 1}, base=root)
    assert split.fold == 1 and split.train == ids[6:24] and split.val == ids[24:] and split.test == ids[:6]
    same = read_split({"file": "splits"}, base=root, fold=1)  # a folder: splits_<fold>.csv
    assert same.train == split.train and same.test == split.test
    # PORPOISE: train and val only
    pd.DataFrame({"train": pd.Series(ids[:20]), "val": pd.Series(ids[20:])}).to_csv(root / "p.csv")
    porpoise = read_split({"file": "p.csv"}, base=root)
    assert porpoise.val == ids[20:] and porpoise.test == []


def test_split_errors(study, tmp_path):
    root, spec, ids = study
    cohort = DataConfig.parse(spec, base=root).to_cohort(task="classification", require_targets=True)
    clam_splits(tmp_path / "bad.csv", ids[:10] + ["GHOST1"], ids[10:12], ["GHOST2"])
    split = read_split({"file": str(tmp_path / "bad.csv")}, base=root)
    with pytest.raises(ValueError, match=r"column 'train' has id\(s\) 'GHOST1'"):
        split.cohorts(cohort)
    clam_splits(tmp_path / "twice.csv", ids[:10], ids[9:12], [])
    with pytest.raises(ValueError, match=f"id '{ids[9]}' is listed in 'train' and in 'val'"):
        read_split({"file": str(tmp_path / "twice.csv")}, base=root)
    with pytest.raises(ValueError, match="unknown key"):
        read_split({"file": "splits", "folds": 2}, base=root)
    with pytest.raises(FileNotFoundError, match="splits_7.csv"):
        read_split({"file": "splits"}, base=root, fold=7)
    pd.DataFrame({"training": ids}).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(ValueError, match="no column 'train'"):
        read_split({"file": str(tmp_path / "cols.csv")}, base=root)


def test_samples_key(study, tmp_path):
    root, spec, ids = study
    (tmp_path / "ids.txt").write_text(f"# kept\n{ids[3]}\n\n{ids[1]}\n")
    assert read_samples(str(tmp_path / "ids.txt"), base=root) == [ids[3], ids[1]]
    pd.DataFrame({"case_id": ids[:4], "x": 1}).to_csv(tmp_path / "cases.csv", index=False)
    assert read_samples({"file": str(tmp_path / "cases.csv"), "column": "case_id"}, base=root) == ids[:4]
    with pytest.raises(ValueError, match="no column 'sample_id'"):
        read_samples(str(tmp_path / "cases.csv"), base=root)
    cohort = DataConfig.parse({**spec, "samples": ids[5:9]}, base=root).to_cohort(
        task="classification", require_targets=True)
    assert list(cohort.sample_ids) == ids[5:9] and len(cohort.images.sample_ids) == 4
    with pytest.raises(ValueError, match="'NOPE' are not samples"):
        DataConfig.parse({**spec, "samples": [ids[0], "NOPE"]}, base=root).to_cohort(
            task="classification", require_targets=True)


@pytest.mark.slow  # a fit (seconds)
def test_train_on_a_fold_writes_history_curve_and_test_metrics(study, tmp_path, capsys):
    root, spec, ids = study
    run = {"task": "classification", "data": spec, "model": TINY_MODEL,
           "split": {"file": "splits/splits_{fold}.csv", "fold": 0}}
    (root / "run.yaml").write_text(yaml.safe_dump(run))
    assert load_run_config(root / "run.yaml").study_split().test == ids[24:]
    out = tmp_path / "fold1"
    assert main(["train", "--config", str(root / "run.yaml"), "--out", str(out), "--fold", "1"]) == 0
    printed = capsys.readouterr().out
    assert "split splits_1.csv (fold 1): train 18, val 6, test 6; 0 sample(s)" in printed
    assert "test metrics (split test" in printed and "validation metrics (split val)" in printed
    model = FusionModel.load(out)  # extra files are in the manifest: the folder verifies
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [h["epoch"] for h in model.history_] and len(history) == 3
    np.testing.assert_allclose(history["val_loss"], [h["val_loss"] for h in model.history_], rtol=1e-5)
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    manifest = json.loads((out / "manifest.json").read_text())
    assert {"history.csv", "training_curve.png"} <= set(manifest["files"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"]["fold"] == 1 and metrics["split"]["n_test"] == 6
    assert metrics["test"]["n"] == 6 and metrics["validation"]["n"] == 6
    # the test metrics are those of the model on the fold's test samples
    cohort = DataConfig.parse(spec, base=root).to_cohort(task="classification", require_targets=True)
    again = model.evaluate(cohort.subset(ids[:6]))
    assert again["auc"] == pytest.approx(metrics["test"]["auc"], nan_ok=True)
    # the model folder with its extra files is replaced by the next run (they are clinfuse outputs)
    assert main(["train", "--config", str(root / "run.yaml"), "--out", str(out), "--fold", "1"]) == 0


def test_training_record_travels_in_the_verified_model_folder(fitted_classifier, tmp_path):
    from clinfuse.fusion.persistence import save_model
    from clinfuse.fusion.training_record import write_training_record

    model = fitted_classifier.model
    out = tmp_path / "m"
    save_model(out, class_name="FusionModel", params=model.get_params(), state=model._fitted_state(),
               extras=lambda folder: write_training_record(model, folder, validation="inner split"))
    history = pd.read_csv(out / "history.csv")
    assert len(history) == len(model.history_)
    np.testing.assert_allclose(history["train_loss"], [h["train_loss"] for h in model.history_], rtol=1e-5)
    assert FusionModel.load(out).history_ == model.history_
    (out / "history.csv").write_text("epoch\n0\n")  # edited after the save: the manifest catches it
    with pytest.raises(ValueError, match="history.csv"):
        FusionModel.load(out)
