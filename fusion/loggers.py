"""The Lightning loggers of a fit (``FusionModel(logger=..., log_dir=...)``) and what each epoch logs.

``logger`` is one of:

- None (default): a :class:`~pytorch_lightning.loggers.CSVLogger` in ``log_dir`` when that is given,
  nothing otherwise: a plain ``fit`` writes no file, and ``checkpoint_dir`` holds its checkpoints only;
- ``"csv"``, ``"tensorboard"``, ``"mlflow"`` (or a list of them): Lightning's logger of that name, in the
  fit's log folder (ValueError when there is none);
- False: no logger;
- a Lightning ``Logger`` instance, or a list of them: used as given (their own folders).

The log folder is ``log_dir``, else ``<checkpoint_dir>/logs``; in it ``csv/metrics.csv`` (one row per
epoch), ``tensorboard/events.out.tfevents.*``, ``mlflow.db`` (an MLflow SQLite store, experiment "clinfuse",
one run per fit; ``mlflow ui --backend-store-uri sqlite:///<log folder>/mlflow.db``). Every epoch logs
``epoch``, ``train_loss``, ``val_loss``, the task metric (``auc`` or ``c_index``, on the validation
samples) and ``lr`` (the learning rate of the main parameter group), with the epoch as the step.
A fresh fit replaces the CSV and TensorBoard files of an earlier fit in the same folder; a
resumed fit (``fit(..., resume=True)``) writes the epochs of the checkpoint into the CSV again, then goes
on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOGGER_NAMES = ("csv", "tensorboard", "mlflow")
LOGS = "logs"  # the log folder inside checkpoint_dir
MLFLOW_DB = "mlflow.db"
_PIP = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny"}  # what to pip install for each name
TASK_METRIC = {"classification": "auc", "survival": "c_index"}


def _names(logger: Any) -> list[str] | None:
    """The logger names of ``logger`` (a name or a list of names), None when it is not made of names."""
    items = [logger] if isinstance(logger, str) else logger if isinstance(logger, list | tuple) else None
    if items is None or not items or not all(isinstance(x, str) for x in items):
        return None
    return list(items)


def check_params(*, logger: Any, log_dir: Any, callbacks: Any) -> None:
    """``FusionModel``'s ``logger``, ``log_dir`` and ``callbacks`` (ValueError / TypeError naming them)."""
    from pytorch_lightning import Callback
    from pytorch_lightning.loggers import Logger

    if log_dir is not None and not isinstance(log_dir, str | os.PathLike):
        raise TypeError(f"log_dir must be a path or None, got {type(log_dir).__name__}")
    names = _names(logger)
    if names is not None:
        unknown = [n for n in names if n not in LOGGER_NAMES]
        if unknown:
            raise ValueError(f"logger: unknown logger {unknown[0]!r}; the names are {list(LOGGER_NAMES)} "
                             "(or None, False, a Lightning Logger or a list of them)")
    elif not (logger is None or logger is False or isinstance(logger, Logger) or (
            isinstance(logger, list | tuple) and all(isinstance(x, Logger) for x in logger))):
        raise TypeError(f"logger must be None, False, one of {list(LOGGER_NAMES)}, a Lightning Logger or a "
                        f"list of them, got {logger!r}")
    if callbacks is not None and not (isinstance(callbacks, list | tuple)
                                      and all(isinstance(c, Callback) for c in callbacks)):
        raise TypeError(f"callbacks must be None or a list of Lightning Callbacks, got {callbacks!r}")


def log_folder(log_dir: Any, checkpoint_dir: Any) -> Path | None:
    """Where named loggers write: ``log_dir``, else ``<checkpoint_dir>/logs``, else None."""
    if log_dir is not None:
        return Path(log_dir).expanduser()
    return None if checkpoint_dir is None else Path(checkpoint_dir).expanduser() / LOGS


def make_loggers(logger: Any, *, log_dir: Any, checkpoint_dir: Any, resume: bool = False) -> list[Any]:
    """The Lightning loggers ``logger`` stands for (see the module docstring); [] for none."""
    from pytorch_lightning.loggers import Logger

    if logger is False:
        return []
    if isinstance(logger, Logger):
        return [logger]
    if isinstance(logger, list | tuple) and all(isinstance(x, Logger) for x in logger):
        return list(logger)
    folder = log_folder(log_dir, checkpoint_dir)
    if logger is None:
        if log_dir is None:
            return []
        names = ["csv"]
    else:
        names = _names(logger) or []
        if folder is None:
            raise ValueError(f"logger={logger!r} writes files and this fit has no folder for them: set "
                             "FusionModel(log_dir=...) (or checkpoint_dir=..., whose logs/ it then uses)")
    return [_make(name, folder, resume=resume) for name in dict.fromkeys(names)]


def _make(name: str, folder: Path, *, resume: bool) -> Any:
    if name == "csv":
        from pytorch_lightning.loggers import CSVLogger

        # a resumed fit writes the checkpoint's epochs again (Lightning's CSV writer would drop them)
        for old in ("metrics.csv", "hparams.yaml"):
            (folder / "csv" / old).unlink(missing_ok=True)
        return CSVLogger(folder, name="csv", version="", flush_logs_every_n_steps=1)
    if name == "tensorboard":
        from lightning_fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE
        from pytorch_lightning.loggers import TensorBoardLogger

        if not (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE):
            raise ImportError(f"logger='tensorboard' needs the tensorboard package: pip install "
                              f"{_PIP[name]} (or clinfuse[loggers])")
        if not resume:  # a fresh fit: the curves of an earlier fit in this folder would mix with its own
            for old in (folder / "tensorboard").glob("events.out.tfevents.*"):
                old.unlink()
        return TensorBoardLogger(folder, name="tensorboard", version="", default_hp_metric=False)
    from pytorch_lightning.loggers.mlflow import _MLFLOW_AVAILABLE, MLFlowLogger

    if not _MLFLOW_AVAILABLE:
        raise ImportError(f"logger='mlflow' needs MLflow: pip install {_PIP[name]} (or mlflow; or "
                          "clinfuse[loggers])")
    import logging

    import mlflow  # noqa: F401  (it sets its loggers' levels when first imported)

    folder.mkdir(parents=True, exist_ok=True)
    # MLflow 3 refuses its plain-file store: a SQLite database, the artifacts in a folder beside it
    db = (folder / MLFLOW_DB).resolve()
    store = [logging.getLogger(n) for n in ("mlflow", "alembic")]
    levels = [lg.level for lg in store]
    for lg in store:  # its "Creating initial MLflow database tables..." lines are no news to the user
        lg.setLevel(logging.WARNING)
    try:
        return MLFlowLogger(experiment_name="clinfuse", tracking_uri=f"sqlite:///{db}",
                            artifact_location=(folder / "mlartifacts").resolve().as_uri())
    finally:
        for lg, level in zip(store, levels, strict=True):
            lg.setLevel(level)


def loggers_folders(loggers: Sequence[Any]) -> list[Path]:
    """The folders the named loggers of a fit write into (for copying them elsewhere)."""
    return [Path(lg.log_dir) for lg in loggers if getattr(lg, "log_dir", None)]


def epoch_metrics(row: dict[str, float], *, task: str, lr: float | None) -> dict[str, float]:
    """What a logger gets for one history row: epoch, train_loss, val_loss, the task metric, lr (NaNs dropped:
    an epoch without validation logs no val_loss)."""
    values = {"epoch": row.get("epoch"), "train_loss": row.get("train_loss"), "val_loss": row.get("val_loss"),
              TASK_METRIC[task]: row.get("val_metric"), "lr": lr}
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def log_epoch(module: Any) -> None:
    """Send the last history row of ``module`` (a ``FusionLightningModule``) to its trainer's loggers,
    with the epoch as the step (rank 0 only)."""
    trainer = module.trainer
    if not trainer.loggers or not trainer.is_global_zero:
        return
    lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else None
    row = module.history[-1]
    metrics = epoch_metrics(row, task=module.task, lr=lr)
    for lg in trainer.loggers:
        lg.log_metrics(metrics, step=int(row["epoch"]))


def resumed_history_callback() -> Any:
    """A callback that, when a fit resumes, writes the checkpoint's epochs into the CSV loggers again
    (their learning rate is not kept)."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    class ResumedHistory(pl.Callback):
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:  # after the checkpoint is restored
            if not trainer.is_global_zero:
                return
            for lg in trainer.loggers:
                if isinstance(lg, CSVLogger):
                    for row in pl_module.history:
                        lg.log_metrics(epoch_metrics(row, task=pl_module.task, lr=None),
                                       step=int(row["epoch"]))

    return ResumedHistory()
