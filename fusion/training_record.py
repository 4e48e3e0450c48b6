"""``clinfuse train``: fit on a config's data (one fold of its ``split:`` when it has one), evaluate the
fold's test samples, and save the model with the record of its training.

The model folder (``--out``) holds, besides what ``FusionModel.save`` writes:

- ``history.csv``: one row per epoch, every value of ``model.history_`` (epoch, train_loss, val_loss,
  val_metric: AUROC or C-index on the validation samples);
- ``training_curve.png``: training and validation loss per epoch, the kept epoch marked;
- ``logs/``: the Lightning logs of the fit (``model.logger`` of run.yaml; default CSV:
  ``logs/csv/metrics.csv``, one row per epoch; ``tensorboard``: ``logs/tensorboard/``; ``mlflow``:
  ``logs/mlflow.db``, see :mod:`clinfuse.fusion.loggers`). While training they are kept with the
  checkpoints (``<checkpoint folder>/logs``, so that ``--resume`` continues them) and moved into the
  model folder when it is saved, unless run.yaml names its own ``model.log_dir``, which is copied;
- in ``metrics.json``: ``validation`` (metrics on the split's ``val`` samples, or on the inner split),
  ``test`` (on the split's ``test`` samples, per missingness pattern) and ``split`` (file, fold, sizes).

They are written into the folder before it is swapped in, so the manifest lists them and
``FusionModel.load`` verifies the folder as usual (it reads only the files it needs).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

HISTORY_FILE = "history.csv"
CURVE_FILE = "training_curve.png"


def write_training_record(model: Any, folder: Path, *, validation: str) -> list[str]:
    """``history.csv`` and ``training_curve.png`` of a fitted ``model`` into ``folder``; returns the names.
    ``validation``: what the validation loss was measured on (the figure's title says it)."""
    from .explain.figures import plot_training_curve, pyplot, save_figure

    pd.DataFrame(model.history_).to_csv(folder / HISTORY_FILE, index=False, float_format="%.6g")
    fig = plot_training_curve(model.history_, best_epoch=model.best_epoch_)
    from matplotlib.ticker import MaxNLocator

    fig.axes[0].set_title(f"training curve (validation = {validation})")
    fig.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs, not fractions of one
    pyplot().close(save_figure(fig, folder / CURVE_FILE))
    return [HISTORY_FILE, CURVE_FILE]


@dataclass
class TrainRun:
    """What :func:`train_from_config` did: the fitted model, where it is saved, the metrics it printed."""

    model: Any
    path: Path
    validation_source: str  # "split val" or "inner split"
    validation_metrics: dict[str, Any] | None
    test_metrics: dict[str, Any] | None
    files: list[str]


def train_from_config(cfg: Any, *, out: str | Path, checkpoint_dir: str | Path, resume: bool = False,
                      fold: int | None = None) -> TrainRun:
    """Fit ``FusionModel(task=cfg.task, **cfg.model)`` on the config's data, or on the training samples of
    one fold of its ``split:`` (``fold`` overrides the YAML's), with the fold's ``val`` samples as the
    validation set of early stopping (an inner split of the training samples when the fold has none), then
    evaluate its ``test`` samples and save everything to ``out`` (see the module docstring)."""
    from .loggers import LOGS, log_folder
    from .model import FusionModel
    from .persistence import save_model

    split = cfg.study_split(fold=fold)
    cohort = cfg.data.to_cohort(task=cfg.task, require_targets=True)
    print(cohort.summary())
    validation = test = None
    if split is not None:
        print(split.describe(len(cohort)))
        cohort, validation, test = split.cohorts(cohort)
    keys = {**cfg.model, "checkpoint_dir": str(checkpoint_dir)}
    staged = keys.get("log_dir") is None  # the logs are kept with the checkpoints until the save
    if staged:
        keys["log_dir"] = str(Path(checkpoint_dir) / LOGS)
    else:  # run.yaml paths are relative to the file; never inside --out
        keys["log_dir"] = given = (cfg.base / Path(keys["log_dir"]).expanduser()).resolve()
        target = Path(out).expanduser().resolve()
        if given == target or target in given.parents:
            raise ValueError(f"model.log_dir {given} is inside --out {target}, which the save replaces; "
                             "leave it out (the logs are saved into --out/logs) or choose a folder outside")
    model = FusionModel(task=cfg.task, **keys)
    model.fit(cohort, validation, resume=resume)
    source = "split val" if validation is not None else "inner split"
    test_metrics = model.evaluate(test) if test is not None else None
    metrics = dict(model.metrics_)
    if split is not None:
        metrics.update({"test": test_metrics, "split": split.record()} if test_metrics is not None
                       else {"split": split.record()})
    model._set_fitted(replace(model._fitted_state(), metrics=metrics))
    files: list[str] = []

    logs = log_folder(model.log_dir, model.checkpoint_dir)

    def extras(folder: Path) -> None:
        files.extend(write_training_record(model, folder, validation=source))
        if logs is not None and logs.is_dir():
            shutil.copytree(logs, folder / LOGS)
            files.append(f"{LOGS}/")

    path = save_model(out, class_name=type(model).__name__, params=model.get_params(),
                      state=model._fitted_state(), extras=extras)
    if logs is not None and staged:  # staged beside the checkpoints: now in the model folder
        shutil.rmtree(logs, ignore_errors=True)
    return TrainRun(model=model, path=path, validation_source=source,
                    validation_metrics=metrics.get("validation"), test_metrics=test_metrics, files=files)
