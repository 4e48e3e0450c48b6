"""The Lightning ``Trainer`` of a fit and the quieting of Lightning's advice-only messages."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl

_LIGHTNING_LOGGERS = ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning")


@contextlib.contextmanager
def quiet_lightning(verbose: bool) -> Iterator[None]:
    """Silence Lightning's info logs and its advice-only warnings (always the num_workers advice; all
    of them, and the info lines, when ``verbose=False``)."""
    saved = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    for name in _LIGHTNING_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*number of training batches.*logging interval.*")
        warnings.filterwarnings("ignore", message=r".*isn't currently supported.*deterministic.*")
        if not verbose:
            warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
        try:
            yield
        finally:
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)



def make_trainer(*, max_epochs: int, gradient_clip: float | None, accumulate_grad_batches: int,
                 early_stopping_patience: int | None, has_validation: bool, strategy: Any = "auto",
                 devices: Any = 1, accelerator: str = "cpu", verbose: bool = True, monitor: str = "val_loss",
                 checkpoint_dir: Any = None) -> pl.Trainer:
    """A Trainer with no logger that stops early on ``monitor``; it writes checkpoints (last, and best by
    ``monitor``) into ``checkpoint_dir`` only when that is given, else nothing to disk."""
    from pytorch_lightning.callbacks import EarlyStopping

    from . import checkpoints

    callbacks: list[Any] = []
    if has_validation and early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode=checkpoints.MONITORS[monitor],
                                       patience=int(early_stopping_patience), check_finite=False,
                                       verbose=False))
    if checkpoint_dir is not None:
        callbacks += checkpoints.callbacks(checkpoint_dir, monitor=monitor, has_validation=has_validation)
    deterministic: Any = True if accelerator == "cpu" else "warn"
    if strategy in ("ddp", "ddp_spawn"):
        # A sample without a modality leaves that encoder (and e.g. missing-value embeddings) out of the
        # loss for a batch: with missing modalities this is the normal case, so DDP must look for it.
        strategy = f"{strategy}_find_unused_parameters_true"
    return pl.Trainer(
        max_epochs=int(max_epochs), accelerator=accelerator, devices=devices, strategy=strategy,
        gradient_clip_val=gradient_clip or None, accumulate_grad_batches=int(accumulate_grad_batches),
        deterministic=deterministic, enable_checkpointing=checkpoint_dir is not None, logger=False,
        enable_progress_bar=bool(verbose), enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1, callbacks=callbacks, default_root_dir=checkpoint_dir,
        plugins=[checkpoints.AtomicCheckpointIO()] if checkpoint_dir is not None else None,
    )
