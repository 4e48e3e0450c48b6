"""The checkpoint folder of a fit (``FusionModel(checkpoint_dir=...)``) and what resuming needs.

The folder holds::

    last.ckpt   Lightning checkpoint of the last finished epoch: weights, optimiser, LR schedule, loop and
                early-stopping state, and the LightningModule's own state (history, best weights, RNG and
                data-order state), so a resumed fit ends with the same weights as an uninterrupted one
    best.ckpt   the epoch with the best monitored validation metric (only with validation data)
    run.json    what the checkpoints were made from (hyperparameters, training / validation ids, data
                shapes, fitted preprocessor, network configuration); a resume with anything different is
                refused

Checkpoints are written to a temporary file, fsynced and renamed onto place: a kill leaves the previous
checkpoint, never a truncated one. Files in the folder other than these three are never touched.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from ..datasets.atomic import atomic_path
from ..datasets.statistics import to_jsonable
from .persistence import read_json, write_json

LAST, BEST, RUN = "last.ckpt", "best.ckpt", "run.json"
MONITORS = {"val_loss": "min", "c_index": "max", "auc": "max"}  # metric -> the better direction
MONITOR_TASK = {"c_index": "survival", "auc": "classification"}
# monitor=None: the task's own ranking metric. On the few validation samples of a small cohort the loss and
# the ranking disagree, and the ranking is what is reported. Chosen on data other than the reported folds:
# synthetic classic-MIL cohorts (benchmarks/bench_mil_synthetic.py) for classification, inner folds of
# training data and an unreported cohort for survival (benchmarks/bench_survival_defaults.py).
DEFAULT_MONITOR = {"classification": "auc", "survival": "c_index"}


def resolve_monitor(task: str, monitor: str | None) -> str:
    """The metric ``monitor`` means for ``task``: itself, or ``DEFAULT_MONITOR[task]`` when None."""
    return DEFAULT_MONITOR.get(task, "val_loss") if monitor is None else monitor

# Hyperparameters that change nothing a checkpoint holds.
_FREE_PARAMS = ("verbose", "checkpoint_dir", "logger", "log_dir", "callbacks")


def check_params(*, task: str, monitor: Any, checkpoint_dir: Any) -> None:
    """``FusionModel``'s ``monitor`` and ``checkpoint_dir`` (ValueError / TypeError naming the field)."""
    if monitor is not None and monitor not in MONITORS:
        raise ValueError(f"monitor must be one of {list(MONITORS)} or None, got {monitor!r}")
    if MONITOR_TASK.get(monitor, task) != task:
        raise ValueError(f"monitor={monitor!r} is a {MONITOR_TASK[monitor]} metric; this model's task is "
                         f"{task!r}")
    if checkpoint_dir is not None and not isinstance(checkpoint_dir, str | os.PathLike):
        raise TypeError(f"checkpoint_dir must be a path or None, got {type(checkpoint_dir).__name__}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint into a temporary file next to it, fsyncs it, then renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(Path(path).parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_identity(*, params: dict[str, Any], preprocessor: Any, network_config: dict[str, Any],
                 train_ids: list[str], validation_ids: list[str] | None, shapes: dict[str, Any]) -> dict:
    """The JSON-able description of a fit that a checkpoint may be resumed into."""
    kept = {k: v for k, v in params.items() if k not in _FREE_PARAMS}
    pre = json.dumps(to_jsonable(preprocessor.to_dict()), sort_keys=True)
    return json.loads(json.dumps(to_jsonable({
        "params": {k: (v if _jsonable(v) else repr(v)) for k, v in kept.items()},
        "training_ids": [str(s) for s in train_ids],
        "validation_ids": None if validation_ids is None else [str(s) for s in validation_ids],
        "data_shapes": shapes,
        "preprocessor_sha256": hashlib.sha256(pre.encode("utf-8")).hexdigest(),
        "network": network_config,
    })))


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(to_jsonable(v))
        return True
    except (TypeError, ValueError):
        return False


def _differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if key == "params" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"hyperparameter {k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} now"
                    for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif key in ("training_ids", "validation_ids"):
            same = len(a or []) == len(b or [])
            out.append(f"{key.replace('_', ' ')}: {len(a or [])} in the checkpoint, {len(b or [])} now"
                       + (" (same count, different samples or order)" if same else ""))
        elif key == "preprocessor_sha256":
            out.append("the fitted preprocessor differs (the training data's values changed)")
        else:
            out.append(f"{key.replace('_', ' ')} differs")
    return out


def prepare(folder: str | Path, identity: dict[str, Any], *, resume: bool) -> Path | None:
    """Get ``folder`` ready for a fit; returns the checkpoint to resume from (None for a fresh fit).

    A fresh fit removes the previous run's checkpoints and writes ``run.json``. ``resume=True`` needs a
    ``last.ckpt`` and a ``run.json`` equal to ``identity`` (``ValueError`` listing what differs).
    """
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"checkpoint_dir {folder} exists and is not a folder")
    if resume:
        if not (folder / LAST).is_file() or not (folder / RUN).is_file():
            raise FileNotFoundError(f"nothing to resume: {folder} has no {LAST} and {RUN} (the run stopped "
                                    "before its first epoch finished, or never used this folder); fit "
                                    "without resume")
        diffs = _differences(read_json(folder / RUN), identity)
        if diffs:
            raise ValueError(f"cannot resume from {folder}: the checkpoint was made from a different fit: "
                             + "; ".join(diffs))
        return folder / LAST
    folder.mkdir(parents=True, exist_ok=True)
    for name in (LAST, BEST, RUN):
        (folder / name).unlink(missing_ok=True)
    write_json(folder / RUN, identity)
    return None


def callbacks(folder: str | Path, *, monitor: str, has_validation: bool) -> list[Any]:
    """ModelCheckpoints writing ``best.ckpt`` by ``monitor`` (with validation data), then ``last.ckpt``
    every epoch (so that it holds the best-checkpoint bookkeeping of the same epoch)."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    # Both save at the end of each training epoch, after validation and early stopping have updated.
    # (save_last=True would write last.ckpt only in epochs that improve on the best.)
    common = {"dirpath": str(Path(folder).expanduser()), "save_top_k": 1, "enable_version_counter": False,
              "save_on_train_epoch_end": True, "verbose": False}
    best = [ModelCheckpoint(filename=BEST[:-5], monitor=monitor, mode=MONITORS[monitor], **common)]
    return (best if has_validation else []) + [ModelCheckpoint(filename=LAST[:-5], monitor=None, **common)]


def last_checkpoint(folder: str | Path | None) -> Path | None:
    if folder is None:
        return None
    path = Path(folder).expanduser() / LAST
    return path if path.is_file() else None
