"""Training through pytorch-lightning: the LightningModule around a ``FusionNetwork`` and the Trainer set-up.

What the estimator needs from Lightning is the loop, gradient clipping and accumulation, early stopping,
checkpoints (only with ``checkpoint_dir``: see :mod:`clinfuse.fusion.checkpoints`) and scale-out
strategies (DDP across processes), and its loggers (:mod:`clinfuse.fusion.loggers`: one record per epoch).
The best weights are kept in memory and restored when the fit ends (in every process; DDP ranks run in
:mod:`.ddp_launch`'s workers, rank 0 hands its state back). ``fit`` leaves the caller's random generators
as it found them; SIGINT / SIGTERM end it with :class:`~clinfuse.fusion.interrupts.TrainingInterrupted`.
"""

from __future__ import annotations

import math
import signal
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import nn

from ..datasets.batch import Batch
from . import ddp_launch, wide_start
from . import metrics as M
from .build import build_network, output_names, resolve_network_config
from .finite import check_fit_finite
from .fitted import FittedState, TrainingRun
from .hyperparameters import class_weight_tensor, resolve_batch_size
from .ipcw_metrics import follow_up as ipcw_follow_up
from .loggers import TASK_METRIC, log_epoch, make_loggers
from .rng import rng_state, set_rng_state
from .trainer import fit_determinism, make_trainer, quiet_lightning, warmup_cosine  # noqa: F401

WIDE_LR_SCALE = 10.0
"""The linear term's learning rate as a multiple of ``lr``: its weights start at 0 and must reach their
ridge solution within the few dozen optimiser steps a small cohort's fit takes."""


class FusionLightningModule(pl.LightningModule):
    """Loss, optimisation and validation bookkeeping around a ``FusionNetwork``.

    Args:
        network: ``forward(Batch) -> NetworkOutput`` with ``outputs`` classification logits ``[B, C]``,
            discrete-time hazard logits ``[B, K]`` or Cox risk ``[B]``.
        task: "classification" or "survival".
        survival_head: "discrete" or "cox" (survival only).
        bin_edges: time-bin edges of the discrete-time head (``make_time_bins`` on the training targets).
        class_weights: ``[C]`` class weights of the cross-entropy, or None.
        lr, weight_decay, warmup_epochs, max_epochs: AdamW with linear warm-up then cosine decay, stepped
            per optimiser step (``trainer.estimated_stepping_batches`` accounts for accumulation and DDP).
        monitor: the validation metric that picks the best weights ("val_loss", "c_index" or "auc"); each
            validation epoch logs "val_loss" and the task's metric ("auc" or "c_index").
    """

    def __init__(self, network: nn.Module, *, task: str, survival_head: str = "discrete",
                 bin_edges: torch.Tensor | None = None, class_weights: torch.Tensor | None = None,
                 lr: float = 1e-3, weight_decay: float = 1e-2, warmup_epochs: float = 1.0,
                 max_epochs: int = 30, monitor: str = "val_loss") -> None:
        super().__init__()
        self.network = network
        self.task, self.survival_head = task, survival_head
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.warmup_epochs, self.max_epochs = float(warmup_epochs), int(max_epochs)
        # Buffers follow the module to its device but are not part of the saved network weights.
        self.register_buffer("bin_edges", None if bin_edges is None else torch.as_tensor(bin_edges).float(),
                             persistent=False)
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(class_weights).float(), persistent=False)
        self.history: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch: int | None = None
        self.best_val_loss = math.inf
        self.monitor, self.best_score = monitor, math.nan
        self.checkpointed_epochs = 0  # epochs in the last checkpoint written
        self.train_loader: Any = None  # set by fit_model: its order and patch draws go into checkpoints
        self._val_outputs: list[tuple[torch.Tensor, ...]] = []
        self.best_val_outputs: torch.Tensor | None = None  # theirs, in validation order (None: unknown)
        self._train_losses: list[torch.Tensor] = []  # detached, on the device: read once per epoch

    def loss(self, outputs: torch.Tensor, *, labels: torch.Tensor | None = None,
             time: torch.Tensor | None = None, event: torch.Tensor | None = None) -> torch.Tensor:
        """The task loss of ``outputs`` (see the class docstring for their shapes)."""
        from .losses import classification_loss, cox_partial_nll, discrete_time_nll

        if self.task == "classification":
            return classification_loss(outputs, labels, class_weights=self.class_weights)
        if self.survival_head == "cox":
            return cox_partial_nll(outputs.reshape(-1), time, event)
        return discrete_time_nll(outputs, time, event, self.bin_edges)

    def _batch_loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.loss(outputs, labels=batch.labels, time=batch.time, event=batch.event)

    # ----------------------------------------------------------------------------------------- steps
    def forward(self, batch: Batch):
        return self.network(batch)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device) if isinstance(batch, Batch) else super().transfer_batch_to_device(
            batch, device, dataloader_idx)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        out = self.network(batch, records=False)  # the loss reads no attention records
        loss = self._batch_loss(out.outputs, batch)
        self._train_losses.append(loss.detach())  # float() here would wait for the device every step
        wide = getattr(self.network, "wide", None)
        # the penalties (the linear term's ridge, the aggregator's own) are part of the training objective
        # only (val_loss is the task's)
        if wide is not None:
            loss = loss + wide.penalty_loss()
        penalty = getattr(self.network.aggregator, "penalty_loss", None)
        extra = penalty() if callable(penalty) else None
        return loss if extra is None else loss + extra

    def _mean_train_loss(self) -> float:
        losses = torch.stack(self._train_losses).tolist() if self._train_losses else []
        return float(np.mean(losses)) if losses else float("nan")

    def on_train_epoch_start(self) -> None:
        self._train_losses = []
        # New patch draws each epoch, reproducibly (CohortDataset seeds sampling by epoch).
        loader = self.trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(int(self.current_epoch))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        o = self.network(batch, records=False).outputs.detach().float()  # validation reads no records
        if self.task == "classification":
            self._val_outputs.append((o, batch.labels.detach()))
        else:
            self._val_outputs.append((o, batch.time.detach().float(), batch.event.detach().float()))

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        parts = [torch.cat(col) for col in zip(*self._val_outputs)]
        self._val_outputs = []
        if self.trainer.world_size > 1:  # every process sees every validation sample (equal shards)
            parts = [self.all_gather(p).flatten(0, 1) for p in parts]
        val, metric = self.score_outputs(parts)
        # for the monitoring callbacks; the loggers get one record per epoch from log_epoch
        self.log("val_loss", val, prog_bar=True, sync_dist=False, logger=False)
        self.log(TASK_METRIC[self.task], float(metric), sync_dist=False, logger=False)
        train = self._mean_train_loss()
        self.history.append({"epoch": int(self.current_epoch), "train_loss": train, "val_loss": val,
                             "val_metric": float(metric)})
        log_epoch(self)
        self.consider(val, metric, epoch=int(self.current_epoch),  # (gathered shards interleave)
                      outputs=parts[0] if self.trainer.world_size == 1 else None)

    def score_outputs(self, parts: list[torch.Tensor]) -> tuple[float, float]:
        """``(val_loss, metric)`` of the validation outputs and targets gathered by ``validation_step``."""
        with torch.no_grad():
            if self.task == "classification":
                val_loss = self.loss(parts[0], labels=parts[1])
                proba = torch.softmax(parts[0], dim=-1).cpu().numpy()
                y = parts[1].cpu().numpy()
                metric = M.roc_auc(y, proba, classes=list(range(proba.shape[1])))
            else:
                val_loss = self.loss(parts[0], time=parts[1], event=parts[2])
                risk = self.risk_from_outputs(parts[0]).cpu().numpy()
                metric = M.concordance_index(parts[1].cpu().numpy(), parts[2].cpu().numpy(), risk)
        return float(val_loss), float(metric)

    def consider(self, val: float, metric: float, *, epoch: int, outputs: torch.Tensor | None = None) -> None:
        """Keep the current weights (and their validation ``outputs``) if their ``monitor`` is the best."""
        score = val if self.monitor == "val_loss" else float(metric)
        better = score < self.best_score if self.monitor == "val_loss" else score > self.best_score
        if math.isfinite(score) and (better or not math.isfinite(self.best_score)):
            self.best_score, self.best_val_loss, self.best_epoch = score, val, int(epoch)
            self.best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            self.best_val_outputs = None if outputs is None else outputs.detach().cpu()

    def on_train_epoch_end(self) -> None:
        # Without validation data the history still records the training curve.
        if not self.trainer.val_dataloaders:
            train = self._mean_train_loss()
            self.history.append({"epoch": int(self.current_epoch), "train_loss": train,
                                 "val_loss": float("nan"), "val_metric": float("nan")})
            log_epoch(self)

    def on_fit_end(self) -> None:
        if self.best_state is not None:
            self.network.load_state_dict(self.best_state)

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Saved after an epoch's validation; what the next epoch draws from must resume exactly.
        self.checkpointed_epochs = len(self.history)
        checkpoint["clinfuse"] = {
            "history": list(self.history), "best_state": self.best_state, "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss, "best_score": self.best_score, "rng": rng_state(),
            "loader_generator": (None if getattr(self.train_loader, "generator", None) is None
                                 else self.train_loader.generator.get_state()),
            "sampling": (self.train_loader.dataset.sampling_state()
                         if hasattr(getattr(self.train_loader, "dataset", None), "sampling_state") else {}),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["clinfuse"]
        self.history = list(state["history"])
        self.checkpointed_epochs = len(self.history)
        self.best_state, self.best_epoch = state["best_state"], state["best_epoch"]
        self.best_val_loss, self.best_score = float(state["best_val_loss"]), float(state["best_score"])
        set_rng_state(state["rng"])
        if state["loader_generator"] is not None and self.train_loader is not None:
            self.train_loader.generator.set_state(state["loader_generator"])
        if state["sampling"] and self.train_loader is not None:
            self.train_loader.dataset.load_sampling_state(state["sampling"])

    def risk_from_outputs(self, outputs: torch.Tensor) -> torch.Tensor:
        """Risk ``[B]`` (higher = worse) from the head's outputs."""
        if self.survival_head == "cox":
            return outputs.reshape(-1)
        from .losses import hazards_to_survival, risk_from_survival

        return risk_from_survival(hazards_to_survival(outputs))

    def configure_optimizers(self):
        decay, no_decay, wide = [], [], []
        for name, p in self.network.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("wide."):  # kept small by its own L2 penalty in the loss, not by decay
                wide.append(p)
                continue
            # Biases, norms and embeddings-as-vectors are not decayed (the usual AdamW convention).
            (no_decay if p.ndim < 2 else decay).append(p)
        groups = [{"params": decay, "weight_decay": self.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0},
                  {"params": wide, "weight_decay": 0.0, "lr": self.lr * WIDE_LR_SCALE}]
        # foreach: one multi-tensor update per group instead of a loop over every parameter tensor
        opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=self.lr, foreach=True)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = round(total * self.warmup_epochs / max(self.max_epochs, 1))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, warmup_steps=warmup, total_steps=total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


# ------------------------------------------------------------------------------------------------- fit
def _split(model: Any, cohort: Any, validation: Any | None) -> tuple[Any, Any | None]:
    """The training and validation cohorts: as given, else an inner grouped, stratified split."""
    from ..datasets.splits import train_validation_split

    if validation is not None:
        if getattr(validation, "task", None) != model.task:
            raise ValueError(f"validation must be a cohort with {model.task} targets")
        return cohort, validation
    if float(model.validation_fraction) > 0:
        train_ids, val_ids = train_validation_split(cohort, fraction=float(model.validation_fraction),
                                                    seed=int(model.seed))
        return cohort.subset(train_ids), cohort.subset(val_ids)
    return cohort, None


def fit_model(model: Any, cohort: Any, validation: Any | None = None, *, resume: bool = False) -> TrainingRun:
    """``FusionModel.fit``: split, preprocess, build the network, train with Lightning, keep the best weights.

    Reads the estimator's hyperparameters only; nothing is assigned to it. ``resume=True`` continues from
    ``checkpoint_dir``'s last checkpoint. The caller's random generators are left as they were; SIGINT and
    SIGTERM raise :class:`~clinfuse.fusion.interrupts.TrainingInterrupted` (a ``KeyboardInterrupt``).
    """
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from .checkpoints import last_checkpoint
    from .interrupts import Interrupted, TrainingInterrupted, raise_on_signals
    from .rng import preserved_rng

    model._validate_params()
    if not hasattr(cohort, "check_fittable"):
        raise TypeError(f"fit expects a clinfuse.datasets.Cohort, got {type(cohort).__name__}")
    cohort.check_fittable()
    if cohort.task != model.task:
        raise ValueError(f"the cohort has {cohort.task} targets but the model's task is {model.task!r}; "
                         f"use FusionModel(task={cohort.task!r})")
    if resume and model.checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint folder: set FusionModel(checkpoint_dir=...) to the "
                         "folder of the run to continue")
    if n := ddp_launch.world_size(model):  # DDP over several devices: in clinfuse worker processes
        return ddp_launch.fit_in_workers(model, cohort, validation, resume=resume, n=n)
    started: list[FusionLightningModule] = []
    with preserved_rng(), raise_on_signals() as received:
        try:
            return _train(model, cohort, validation, resume=resume, started=started)
        except (Interrupted, SystemExit) as exc:
            # Lightning ends a fit hit by KeyboardInterrupt with sys.exit(1), and by SIGTERM (when it
            # handled the signal itself) with SIGTERMException, a SystemExit without a code.
            signum = received.signum or (signal.SIGTERM if isinstance(exc, SIGTERMException) else None)
            if signum is None:
                raise
            module = started[0] if started else None
            checkpoint = last_checkpoint(model.checkpoint_dir) if module is not None else None
            done = (module.checkpointed_epochs if checkpoint is not None
                    else len(module.history) if module is not None else 0)
            raise TrainingInterrupted(signum, checkpoint=checkpoint, epochs_done=done) from None


def _train(model: Any, cohort: Any, validation: Any | None, *, resume: bool,
           started: list[FusionLightningModule]) -> TrainingRun:
    from ..datasets.loading import make_loader
    from ..datasets.missingness import warn_data
    from ..datasets.preprocess import Preprocessor
    from . import checkpoints
    from .losses import make_time_bins
    from .persistence import data_shapes

    with quiet_lightning(model.verbose):
        pl.seed_everything(int(model.seed), workers=True, verbose=False)
    train, validation = _split(model, cohort, validation)

    pre = Preprocessor(top_genes=model.top_genes, **(model.preprocessor_kwargs or {})).fit(train)
    schema = pre.schema_
    classes = bin_edges = class_weights = follow_up = None
    if model.task == "classification":
        classes = list(schema["task"]["classes"])
        class_weights = class_weight_tensor(model.class_weights, classes,
                                             train.labels.loc[train.sample_ids].tolist())
    else:
        surv = train.survival.loc[train.sample_ids]
        # the IPCW weights of the metrics: every sample given to fit (its inner validation split too)
        given = cohort.survival.loc[cohort.sample_ids]
        follow_up = ipcw_follow_up(given["time"].to_numpy(float), given["event"].to_numpy(int))
        if model.survival_head == "discrete":
            bin_edges = torch.as_tensor(make_time_bins(torch.as_tensor(surv["time"].to_numpy(float)),
                                                       torch.as_tensor(surv["event"].to_numpy(float)),
                                                       int(model.n_time_bins))).float()
    time_bins = None if bin_edges is None else bin_edges.tolist()
    names = output_names(model.task, model.survival_head, classes=classes, time_bins=time_bins)
    config = resolve_network_config(schema, model.get_params(), n_outputs=len(names), class_names=names)
    ckpt_path = None
    if model.checkpoint_dir is not None:
        identity = checkpoints.run_identity(
            params=model.get_params(), preprocessor=pre, network_config=config,
            train_ids=list(train.sample_ids), shapes=data_shapes(train),
            validation_ids=None if validation is None else list(validation.sample_ids))
        ckpt_path = checkpoints.prepare(model.checkpoint_dir, identity, resume=resume)
    monitor = checkpoints.resolve_monitor(model.task, model.monitor)
    module = FusionLightningModule(build_network(schema, config), task=model.task,
                                   survival_head=model.survival_head, bin_edges=bin_edges,
                                   class_weights=class_weights, lr=model.lr, weight_decay=model.weight_decay,
                                   warmup_epochs=model.warmup_epochs, max_epochs=model.max_epochs,
                                   monitor=monitor)
    started.append(module)
    seed = int(model.seed)
    batch_size = resolve_batch_size(model.batch_size, len(train))
    module.train_loader = train_loader = make_loader(train, pre, batch_size=batch_size,
                                                     shuffle=True, train=True, max_patches=model.max_patches,
                                                     seed=seed)
    # validation runs without autograd: its bags stream (the image encoder reads and projects them in
    # chunks), so a batch of whole bags is never padded into one [B, N, D] copy
    val_loader = (None if validation is None
                  else make_loader(validation, pre, batch_size=batch_size, stream=True))
    # a resumed fit takes its weights from the checkpoint; switched off, no loader is built for it
    if ckpt_path is None and wide_start.WIDE_FIRST_ITERATIONS > 0:
        # the linear term reads no bags: streamed, they are not read at all
        wide_loader = make_loader(train, pre, batch_size=batch_size, stream=True)
        fitted = wide_start.fit_wide_first(module, wide_loader)
        if fitted is not None and val_loader is not None:
            wide_start.consider_linear_model(module, val_loader)
    with quiet_lightning(model.verbose), fit_determinism():
        trainer = make_trainer(max_epochs=model.max_epochs, gradient_clip=model.gradient_clip,
                               accumulate_grad_batches=model.accumulate_grad_batches,
                               early_stopping_patience=model.early_stopping_patience,
                               has_validation=val_loader is not None, strategy=model.strategy,
                               devices=model.devices, accelerator=model.accelerator,
                               verbose=model.verbose, monitor=monitor,
                               checkpoint_dir=model.checkpoint_dir, callbacks=model.callbacks,
                               loggers=make_loggers(model.logger, log_dir=model.log_dir, resume=resume,
                                                    checkpoint_dir=model.checkpoint_dir))
        trainer.fit(module, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)

    check_fit_finite(module.history, module.network, validated=val_loader is not None)
    best_val = module.best_val_loss if math.isfinite(module.best_val_loss) else None
    state = FittedState(
        preprocessor=pre, schema=schema, network=module.network.cpu().eval(), network_config=config,
        classes=classes, time_bins=time_bins, history=list(module.history), best_epoch=module.best_epoch,
        follow_up=follow_up, is_global_zero=bool(trainer.is_global_zero), world_size=int(trainer.world_size),
        metrics={"best_epoch": module.best_epoch, "best_val_loss": best_val,
                 "epochs_run": len(module.history)},
        training_ids=[str(s) for s in train.sample_ids],
        validation_ids=None if validation is None else [str(s) for s in validation.sample_ids])
    predictions = None
    if validation is not None and module.best_val_outputs is not None:  # the metrics' predictions
        warn_data(pre, validation)  # the data warnings of a prediction pass over it
        predictions = model._outputs_to_predictions(module.best_val_outputs)
    return TrainingRun(state=state, train=train, validation=validation, predictions=predictions)
