"""The Lightning ``Trainer`` of a fit and the quieting of Lightning's advice-only messages."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl

_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")
_RANK_ZERO_LOGGERS = tuple(f"{name}.utilities.rank_zero" for name in _LIGHTNING_LOGGERS[:3])
# Lightning's info lines that are advice or hardware boilerplate, not about this fit: dropped even when
# verbose (the progress bar and the reason the fit stopped are kept)
_ADVICE = ("💡 Tip:", "GPU available:", "TPU available:", "HPU available:",
           "Loading `train_dataloader` to estimate number of stepping batches")


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(_ADVICE)


@contextlib.contextmanager
def quiet_lightning(verbose: bool) -> Iterator[None]:
    """Silence Lightning's advice: always its tips, hardware banners, the num_workers advice and its own
    deprecation warnings; every warning and info line when ``verbose=False``."""
    saved = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    drop = _DropAdvice()
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(drop)
    with warnings.catch_warnings():
        # a deprecation inside Lightning itself (its own pytree helper), nothing the user can act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*number of training batches.*logging interval.*")
        warnings.filterwarnings("ignore", message=r".*isn't currently supported.*deterministic.*")
        # checkpoint_dir holds run.json and logs/ beside the checkpoints: ours, nothing to warn about
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        if not verbose:
            warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)
            for name in _RANK_ZERO_LOGGERS:
                logging.getLogger(name).removeFilter(drop)


@contextlib.contextmanager
def fit_determinism() -> Iterator[None]:
    """Around a fit: ``Trainer(deterministic=True)`` switches torch's global deterministic mode on; the
    caller's mode is restored afterwards. That mode also fills every new tensor's memory (NaN) so that
    reads of unwritten memory show; the network reads none, so the fill (~2% of a step) changes nothing
    but the time, and it is off while fitting."""
    import torch

    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    was_filling = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = was_filling


def make_trainer(*, max_epochs: int, gradient_clip: float | None, accumulate_grad_batches: int,
                 early_stopping_patience: int | None, has_validation: bool, strategy: Any = "auto",
                 devices: Any = 1, accelerator: str = "cpu", verbose: bool = True, monitor: str = "val_loss",
                 checkpoint_dir: Any = None, loggers: list[Any] | None = None,
                 callbacks: list[Any] | None = None) -> pl.Trainer:
    """A Trainer that stops early on ``monitor``; it writes checkpoints (last, and best by ``monitor``)
    into ``checkpoint_dir`` only when that is given, and logs to ``loggers`` only (:mod:`.loggers`: each
    epoch's metrics, the epoch as the step), else nothing to disk. ``callbacks``: the user's, run after
    ours."""
    from pytorch_lightning.callbacks import EarlyStopping

    from . import checkpoints, ddp_launch
    from .loggers import resumed_history_callback

    user_callbacks, callbacks = list(callbacks or []), []
    if has_validation and early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=checkpoints.MONITORS[monitor],
                                       patience=int(early_stopping_patience), check_finite=False,
                                       verbose=False))
    if checkpoint_dir is not None:
        callbacks += checkpoints.callbacks(checkpoint_dir, monitor=monitor, has_validation=has_validation)
    if loggers:
        callbacks.append(resumed_history_callback())
    deterministic: Any = True if accelerator == "cpu" else "warn"
    if isinstance(strategy, str) and strategy.startswith("ddp") and ddp_launch.in_worker():
        strategy = ddp_launch.worker_strategy(strategy)  # a rank started by clinfuse: launch nothing
    elif strategy in ("ddp", "ddp_spawn"):
        # A sample without a modality leaves that encoder (and e.g. missing-value embeddings) out of the
        # loss for a batch: with missing modalities this is the normal case, so DDP must look for it.
        strategy = f"{strategy}_find_unused_parameters_true"
    return pl.Trainer(
        max_epochs=int(max_epochs), accelerator=accelerator, devices=devices, strategy=strategy,
        gradient_clip_val=gradient_clip or None, accumulate_grad_batches=int(accumulate_grad_batches),
        deterministic=deterministic, enable_checkpointing=checkpoint_dir is not None,
        logger=list(loggers) if loggers else False,
        enable_progress_bar=bool(verbose), enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1, callbacks=callbacks + user_callbacks, default_root_dir=checkpoint_dir,
        plugins=[checkpoints.AtomicCheckpointIO()] if checkpoint_dir is not None else None,
    )


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, floor: float = 0.01) -> float:
    """Learning-rate factor: linear warm-up over ``warmup_steps`` then cosine decay to ``floor``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
