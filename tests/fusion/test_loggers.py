"""Lightning logging of a fit (``FusionModel(logger=..., log_dir=...)``) and ``clinfuse train``'s logs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel
from clinfuse.fusion.cli import main
from clinfuse.fusion.config import write_cohort_files
from clinfuse.fusion.loggers import make_loggers
from pytorch_lightning import Callback
from pytorch_lightning.loggers import CSVLogger
from sklearn.base import clone

TINY = {"d_model": 16, "n_heads": 2, "n_layers": 1, "batch_size": 8, "max_patches": 4, "verbose": False,
        "seed": 0}
COLUMNS = {"epoch", "step", "train_loss", "val_loss", "lr"}


@pytest.fixture(scope="module")
def cohort():
    cohort, _ = make_synthetic_cohort(24, modalities=("clinical", "genomics"), n_genes=12, seed=3)
    return cohort


def _csv(folder):
    return pd.read_csv(folder / "csv" / "metrics.csv")


def _check_rows(frame, history, metric):
    assert set(frame.columns) == COLUMNS | {metric}
    assert list(frame["epoch"]) == list(frame["step"]) == [row["epoch"] for row in history]
    assert frame["train_loss"].tolist() == pytest.approx([row["train_loss"] for row in history])
    assert frame["val_loss"].tolist() == pytest.approx([row["val_loss"] for row in history])
    assert frame[metric].tolist() == pytest.approx([row["val_metric"] for row in history])
    assert (frame["lr"] > 0).all() and frame["lr"].is_monotonic_decreasing  # warm-up of 1 epoch, then cosine


@pytest.mark.parametrize("kw, error, match", [
    ({"logger": "wandb"}, ValueError, r"unknown logger 'wandb'.*\['csv', 'tensorboard', 'mlflow'\]"),
    ({"logger": ["csv", "neptune"]}, ValueError, "unknown logger 'neptune'"),
    ({"logger": 3}, TypeError, "logger must be None, False"),
    ({"log_dir": 3}, TypeError, "log_dir must be a path"),
    ({"callbacks": ["x"]}, TypeError, "callbacks must be None or a list of Lightning Callbacks"),
    ({"logger": "csv"}, ValueError, r"no folder for them: set FusionModel\(log_dir=\.\.\.\)"),
])
def test_bad_logging_hyperparameters_are_named(cohort, kw, error, match):
    with pytest.raises(error, match=match):
        FusionModel(**TINY, max_epochs=1, **kw).fit(cohort)


def test_logging_hyperparameters_clone_and_resolve(tmp_path):
    mine = CSVLogger(tmp_path, name="mine")
    for logger in ("tensorboard", ["csv", "mlflow"], False):
        assert clone(FusionModel(logger=logger, log_dir=tmp_path)).get_params()["logger"] == logger
    copied = clone(FusionModel(logger=mine)).get_params()["logger"]  # sklearn deep-copies an instance
    assert isinstance(copied, CSVLogger) and copied.log_dir == mine.log_dir
    assert make_loggers(mine, log_dir=None, checkpoint_dir=None) == [mine]  # an instance passes through
    assert make_loggers(None, log_dir=None, checkpoint_dir=None) == []  # nothing written without a folder
    assert make_loggers(False, log_dir=tmp_path, checkpoint_dir=tmp_path) == []
    assert make_loggers(None, log_dir=None, checkpoint_dir=tmp_path) == []  # checkpoint_dir: checkpoints only
    (default,) = make_loggers(None, log_dir=tmp_path / "logs", checkpoint_dir=None)
    assert isinstance(default, CSVLogger) and Path(default.log_dir) == tmp_path / "logs" / "csv"
    (named,) = make_loggers("csv", log_dir=None, checkpoint_dir=tmp_path)  # a named one: checkpoint_dir/logs
    assert Path(named.log_dir) == tmp_path / "logs" / "csv"


def test_missing_logger_packages_are_named(tmp_path, monkeypatch):
    import lightning_fabric.loggers.tensorboard as tb
    import pytorch_lightning.loggers.mlflow as mlf

    monkeypatch.setattr(tb, "_TENSORBOARD_AVAILABLE", False)
    monkeypatch.setattr(tb, "_TENSORBOARDX_AVAILABLE", False)
    monkeypatch.setattr(mlf, "_MLFLOW_AVAILABLE", False)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        make_loggers("tensorboard", log_dir=tmp_path, checkpoint_dir=None)
    with pytest.raises(ImportError, match="pip install mlflow-skinny"):
        make_loggers(["csv", "mlflow"], log_dir=tmp_path, checkpoint_dir=None)


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_default_logs_csv_into_log_dir_one_row_per_epoch(cohort, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []

    class Count(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            seen.append(trainer.current_epoch)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Lightning warning on a normal fit with a logger
        model = FusionModel(**TINY, max_epochs=3, early_stopping_patience=None, checkpoint_dir="ck",
                            log_dir="logs", callbacks=[Count()]).fit(cohort)
    assert seen == [0, 1, 2]  # the user's callback ran every epoch
    _check_rows(_csv(tmp_path / "logs"), model.history_, "auc")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "logs"]  # nothing else in the cwd
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["csv"]
    # a fresh fit into the same folder replaces the earlier log instead of appending to it
    FusionModel(**TINY, max_epochs=2, early_stopping_patience=None, log_dir="logs").fit(cohort)
    assert len(_csv(tmp_path / "logs")) == 2


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_without_validation_logs_train_loss_and_lr_only(cohort, tmp_path):
    model = FusionModel(**TINY, max_epochs=2, validation_fraction=0, logger="csv", log_dir=tmp_path)
    model.fit(cohort)
    frame = _csv(tmp_path)
    assert set(frame.columns) == {"epoch", "step", "train_loss", "lr"} and len(frame) == 2
    assert frame["train_loss"].tolist() == pytest.approx([r["train_loss"] for r in model.history_])


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_tensorboard_event_file_has_the_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cohort, _ = make_synthetic_cohort(30, task="survival", modalities=("clinical",), seed=5)
    model = FusionModel(**TINY, task="survival", n_time_bins=3, max_epochs=3, early_stopping_patience=None,
                        logger="tensorboard", log_dir=tmp_path).fit(cohort)
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert {"train_loss", "val_loss", "c_index", "lr", "epoch"} <= set(events.Tags()["scalars"])
    val = events.Scalars("val_loss")
    assert [e.step for e in val] == [0, 1, 2]
    assert [e.value for e in val] == pytest.approx([r["val_loss"] for r in model.history_], rel=1e-5)
    assert [e.value for e in events.Scalars("c_index")] == pytest.approx(
        [r["val_metric"] for r in model.history_], rel=1e-5)


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_mlflow_run_has_the_epoch_metrics(cohort, tmp_path):
    # mlflow-skinny is in the [loggers] extra only (it pulls a web stack), not in [dev]
    MlflowClient = pytest.importorskip("mlflow.tracking", reason="pip install clinfuse[loggers]").MlflowClient

    model = FusionModel(**TINY, max_epochs=2, early_stopping_patience=None, logger="mlflow",
                        log_dir=tmp_path).fit(cohort)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("clinfuse").experiment_id])
    history = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1]
    assert [m.value for m in history] == pytest.approx([r["val_loss"] for r in model.history_])
    assert {"train_loss", "auc", "lr"} <= set(run.data.metrics)


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_saved_model_keeps_named_logger_and_drops_instances(cohort, tmp_path):
    model = FusionModel(**TINY, max_epochs=1, logger="csv", log_dir=tmp_path / "logs").fit(cohort)
    assert FusionModel.load(model.save(tmp_path / "m")).get_params()["logger"] == "csv"
    model.set_params(logger=CSVLogger(tmp_path / "own"), callbacks=[Callback()])
    loaded = FusionModel.load(model.save(tmp_path / "m2"))
    assert loaded.get_params()["logger"] is None and loaded.get_params()["callbacks"] is None
    params = json.loads((tmp_path / "m2" / "config.json").read_text())["params"]
    assert params["log_dir"] == str(tmp_path / "logs")


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
@pytest.mark.parametrize("logger", [None, "tensorboard"])
def test_cli_train_logs_inside_out(tmp_path, logger):
    cohort, _ = make_synthetic_cohort(24, modalities=("clinical",), seed=2)
    data = tmp_path / "data"
    spec = write_cohort_files(cohort, data)
    model = {"max_epochs": 2, "d_model": 16, "n_heads": 2, "batch_size": 8, "verbose": False,
             "early_stopping_patience": None, **({"logger": logger} if logger else {})}
    (data / "run.yaml").write_text(yaml.safe_dump({"task": "classification", "data": spec, "model": model}))
    before = sorted(p.name for p in data.iterdir())
    assert main(["train", "--config", str(data / "run.yaml"), "--out", str(tmp_path / "model")]) == 0
    out = tmp_path / "model"
    if logger is None:
        assert len(_csv(out / "logs")) == 2
    else:
        assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert any(name.startswith("logs/") for name in manifest)  # listed, so load verifies them
    FusionModel.load(out)
    # the staged copy beside the checkpoints is gone; nothing was written next to run.yaml
    assert not (tmp_path / "model.checkpoints" / "logs").exists()
    assert sorted(p.name for p in data.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "model", "model.checkpoints"]


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_a_verbose_logged_fit_prints_no_lightning_advice(cohort, tmp_path, capfd, caplog):
    """With loggers and checkpoints, verbose=True still prints the progress bar only: no tips, banners,
    deprecations or "folder not empty" warnings."""
    import logging

    with caplog.at_level(logging.INFO):
        FusionModel(**{**TINY, "verbose": True}, max_epochs=2, checkpoint_dir=tmp_path / "ck",
                    logger=["csv", "tensorboard"]).fit(cohort)
    out, err = capfd.readouterr()
    printed = out + err + caplog.text
    assert "Epoch 1/1" in printed
    for advice in ("Tip:", "litlogger", "GPU available", "deprecated", "exists and is not empty", "Warning"):
        assert advice not in printed, printed


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_a_resumed_fit_logs_every_epoch_once(cohort, tmp_path):
    kw = {**TINY, "max_epochs": 3, "early_stopping_patience": None, "checkpoint_dir": tmp_path / "ck",
          "log_dir": tmp_path / "logs"}

    class StopAfterTwo(Callback):  # an interrupted run: two epochs checkpointed, then it ends
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                trainer.should_stop = True

    FusionModel(**kw, callbacks=[StopAfterTwo()]).fit(cohort)
    assert _csv(tmp_path / "logs")["epoch"].tolist() == [0, 1]
    model = FusionModel(**kw).fit(cohort, resume=True)
    frame = _csv(tmp_path / "logs")
    assert frame["epoch"].tolist() == [0, 1, 2] and len(model.history_) == 3
    assert frame["val_loss"].tolist() == pytest.approx([r["val_loss"] for r in model.history_])
    assert frame["lr"].isna().tolist() == [True, True, False]  # the checkpoint keeps no learning rate
