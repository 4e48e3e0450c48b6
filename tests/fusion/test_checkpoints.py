"""Checkpoints of a fit (``checkpoint_dir``), the monitored metric, and ``fit(..., resume=True)``: a run
killed with SIGKILL and resumed ends with the weights of an uninterrupted one."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel
from clinfuse.fusion.cli import main
from clinfuse.fusion.config import write_cohort_files
from sklearn.base import clone

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "batch_size": 8, "max_patches": 4, "verbose": False,
        "seed": 0}


@pytest.fixture(scope="module")
def cohort():
    cohort, _ = make_synthetic_cohort(24, modalities=("clinical", "genomics"), n_genes=12, seed=3)
    return cohort


def test_new_hyperparameters_are_estimator_params():
    model = FusionModel(monitor="auc", checkpoint_dir="ck")
    assert model.get_params()["monitor"] == "auc" and model.get_params()["checkpoint_dir"] == "ck"
    assert clone(model).get_params() == model.get_params()
    assert FusionModel().get_params()["checkpoint_dir"] is None


@pytest.mark.parametrize("kw, match", [({"monitor": "loss"}, "monitor must be one of"),
                                       ({"monitor": "c_index"}, "c_index.*classification"),
                                       ({"checkpoint_dir": 3}, "checkpoint_dir must be a path")])
def test_bad_monitor_or_checkpoint_dir_is_named(cohort, kw, match):
    with pytest.raises((ValueError, TypeError), match=match):
        FusionModel(**TINY, max_epochs=1, **kw).fit(cohort)


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_without_checkpoint_dir_nothing_is_written(cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    FusionModel(**TINY, max_epochs=2).fit(cohort)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_monitor_picks_the_best_weights_and_checkpoints(tmp_path):
    cohort, _ = make_synthetic_cohort(40, task="survival", modalities=("clinical", "genomics"), n_genes=12,
                                      seed=4)
    model = FusionModel(**TINY, task="survival", n_time_bins=3, max_epochs=4, monitor="c_index",
                        early_stopping_patience=None, checkpoint_dir=tmp_path)
    model.fit(cohort)
    scores = [h["val_metric"] for h in model.history_]
    assert model.best_epoch_ == scores.index(max(scores))  # the first epoch with the highest c-index
    assert {p.name for p in tmp_path.iterdir()} == {"last.ckpt", "best.ckpt", "run.json"}
    best = torch.load(tmp_path / "best.ckpt", map_location="cpu", weights_only=True)
    last = torch.load(tmp_path / "last.ckpt", map_location="cpu", weights_only=True)
    assert best["epoch"] == model.best_epoch_ and last["epoch"] == 3
    weights = {k[len("network."):]: v for k, v in best["state_dict"].items() if k.startswith("network.")}
    for k, v in model.network_.state_dict().items():
        torch.testing.assert_close(weights[k], v, rtol=0, atol=0)


def test_resume_refuses_other_data_or_hyperparameters(cohort, tmp_path):
    FusionModel(**TINY, max_epochs=1, checkpoint_dir=tmp_path).fit(cohort)
    with pytest.raises(ValueError, match=r"cannot resume .*hyperparameter lr: 0.001 in the checkpoint, 0.01"):
        FusionModel(**TINY, max_epochs=1, lr=1e-2, checkpoint_dir=tmp_path).fit(cohort, resume=True)
    fewer = cohort.subset(list(cohort.sample_ids)[:-3])
    with pytest.raises(ValueError, match="cannot resume .*training ids"):
        FusionModel(**TINY, max_epochs=1, checkpoint_dir=tmp_path).fit(fewer, resume=True)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        FusionModel(**TINY, max_epochs=1, checkpoint_dir=tmp_path / "empty").fit(cohort, resume=True)
    with pytest.raises(ValueError, match="resume=True needs a checkpoint folder"):
        FusionModel(**TINY, max_epochs=1).fit(cohort, resume=True)


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_cli_train_resume_and_checkpoint_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CLINFUSE_DEBUG", raising=False)
    cohort, _ = make_synthetic_cohort(24, modalities=("clinical", "genomics"), n_genes=12, seed=3)
    spec = write_cohort_files(cohort, tmp_path / "files")
    run = tmp_path / "files" / "run.yaml"
    run.write_text(yaml.safe_dump({"task": "classification", "data": spec,
                                   "model": {**TINY, "max_epochs": 2}}))
    out = tmp_path / "model"
    assert main(["train", "--config", str(run), "--out", str(out)]) == 0
    folder = tmp_path / "model.checkpoints"
    assert {p.name for p in folder.iterdir()} == {"last.ckpt", "best.ckpt", "run.json"}
    assert "checkpoints in" in capsys.readouterr().out
    first = FusionModel.load(out).network_.state_dict()
    # Resuming a finished run ends at once with the same model.
    assert main(["train", "--config", str(run), "--out", str(out), "--resume"]) == 0
    for k, v in FusionModel.load(out).network_.state_dict().items():
        torch.testing.assert_close(v, first[k], rtol=0, atol=0)
    other = yaml.safe_load(run.read_text())
    other["model"]["lr"] = 0.5
    run.write_text(yaml.safe_dump(other))
    assert main(["train", "--config", str(run), "--out", str(out), "--resume"]) == 2
    assert "cannot resume" in capsys.readouterr().err
    assert main(["train", "--config", str(run), "--out", str(out), "--checkpoint-dir",
                 str(out / "ck")]) == 2
    assert "inside --out" in capsys.readouterr().err


WORKER = """
import sys, time, json, torch
torch.set_num_threads(1)
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel, training
step = training.FusionLightningModule.training_step
def slow(self, batch, i):
    time.sleep(0.05)  # so that the kill lands mid-training
    return step(self, batch, i)
training.FusionLightningModule.training_step = slow
cohort, _ = make_synthetic_cohort(24, task="survival", n_patches=(6, 16), feature_dim=8, n_genes=12,
                                  n_codes=6, seed=0)
FusionModel(**json.loads(sys.argv[1])).fit(cohort)
"""


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_gives_the_uninterrupted_weights(tmp_path):
    # Dropout, modality dropout, patch sampling and shuffling all draw random numbers; early stopping and
    # the LR schedule carry state across epochs.
    params = {**TINY, "task": "survival", "n_time_bins": 3, "batch_size": 4, "max_epochs": 6,
              "modality_dropout": 0.3, "dropout": 0.2, "early_stopping_patience": 3}
    cohort, _ = make_synthetic_cohort(24, task="survival", n_patches=(6, 16), feature_dim=8, n_genes=12,
                                      n_codes=6, seed=0)
    whole = FusionModel(**params).fit(cohort)

    folder = tmp_path / "ckpt"
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    args = json.dumps({**params, "checkpoint_dir": str(folder)})
    proc = subprocess.Popen([sys.executable, str(script), args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (folder / "last.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    kept = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=True)
    assert kept["epoch"] < params["max_epochs"] - 1  # killed mid-training

    resumed = FusionModel(**params, checkpoint_dir=folder).fit(cohort, resume=True)
    assert resumed.history_ == whole.history_ and resumed.best_epoch_ == whole.best_epoch_
    got = resumed.network_.state_dict()
    for k, v in whole.network_.state_dict().items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(resumed.predict_risk(cohort).to_numpy()),
                               torch.tensor(whole.predict_risk(cohort).to_numpy()), rtol=0, atol=1e-6)
    assert Path(folder / "run.json").is_file()


@pytest.mark.slow  # several seconds: CI runs it, the quick suite does not
def test_default_monitor_is_the_task_metric_for_classification():
    """monitor=None (the default): a classifier keeps the epoch of the best validation AUC, not loss."""
    cohort, _ = make_synthetic_cohort(60, modalities=("clinical", "genomics"), n_genes=12, seed=5)
    model = FusionModel(**{**TINY, "seed": 1}, max_epochs=8, early_stopping_patience=None, lr=3e-2)
    assert model.monitor is None
    model.fit(cohort)
    auc = [h["val_metric"] for h in model.history_]
    loss = [h["val_loss"] for h in model.history_]
    assert auc.index(max(auc)) != loss.index(min(loss))  # the two rules disagree on this run
    assert model.best_epoch_ == auc.index(max(auc))
    explicit = FusionModel(**{**TINY, "seed": 1}, max_epochs=8, early_stopping_patience=None, lr=3e-2,
                           monitor="val_loss").fit(cohort)
    assert explicit.best_epoch_ == loss.index(min(loss))


def test_default_monitor_of_survival_is_the_c_index():
    from clinfuse.fusion.checkpoints import resolve_monitor

    assert resolve_monitor("survival", None) == "c_index"
    assert resolve_monitor("classification", None) == "auc"
    assert resolve_monitor("classification", "val_loss") == "val_loss"
