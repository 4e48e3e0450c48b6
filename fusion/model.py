"""``FusionModel``: the scikit-learn style estimator over a ``FusionNetwork`` trained with pytorch-lightning.

Hyperparameters live in ``__init__`` only (keyword-only, stored unchanged, so ``get_params`` /
``set_params`` / ``sklearn.base.clone`` work); everything learned by :meth:`FusionModel.fit` is an attribute
ending in ``_``, assigned in one place (``_set_fitted``, from a ``FittedState``). Prediction runs in plain
PyTorch (no Trainer) in the calling process; metrics are computed from the predictions.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from ..datasets.batch import MODALITIES, TOKEN_KIND, Batch
from ..datasets.missingness import warn_data
from . import ipcw_metrics
from . import metrics as M
from .fitted import FittedState
from .hyperparameters import BATCH_SIZE, SURVIVAL_HEADS, TASKS  # noqa: F401  (re-exported: the config reads TASKS)
from .records import ATTENTION_KINDS, AttentionRecord
from .survival_curves import cox_survival_at, discrete_survival_at


class FusionModel(BaseEstimator):
    """Multimodal classifier or survival model: per-modality encoders, an aggregator and a task head.

    Args:
        task: "classification" or "survival".
        aggregator: registered aggregator name ("persam", "self_attention", ...; ``list_aggregators()``),
            or None: ``"persam"`` when the training cohort has an instance modality (images, genomics,
            events), else ``"hierarchical"`` (a clinical-only cohort); resolved at fit time, the name used
            is ``aggregator_``.
        encoders: modality -> registered encoder name; modalities not named get
            ``clinfuse.encoders.default_encoder``.
        d_model, n_heads, n_layers, dropout, ffn_mult: token width and the shared settings (attention
            heads, layers, dropout, feed-forward width as a multiple of d_model), each passed to every
            encoder, aggregator and head that has the concept; None leaves each component its own default.
        modality_dropout: probability of dropping a whole modality of a training sample (missing modalities
            at prediction time are then a trained case).
        wide_penalty: a linear ("wide") term on the preprocessed clinical and gene inputs (standardised
            values, missing flags, one weight per category) is added to the outputs, with this L2 penalty
            (``wide_penalty / 2 * ||w||^2`` in the training loss); None: no linear term.
        survival_head: "discrete" (discrete-time hazards over ``n_time_bins`` bins of the training event
            times; risk = -sum_k S(t_k)) or "cox" (one risk, Cox partial likelihood, Breslow baseline).
        max_epochs, batch_size, lr, weight_decay, warmup_epochs, gradient_clip, accumulate_grad_batches:
            AdamW with linear warm-up then cosine decay, clipping, accumulation (bags of very different sizes
            often train at batch size 1 with accumulation). ``batch_size=None``: 16, or
            ``ceil(n_train / 32)`` when that is larger (at most 32 steps an epoch on large cohorts).
        max_patches: patches sampled per bag during training (all patches are used to predict).
        early_stopping_patience: epochs without a better ``monitor`` value before stopping (None: never).
        monitor: the validation metric that picks the best weights and drives early stopping: "val_loss"
            (lower is better), "c_index" (survival) or "auc" (classification; higher is better); None
            (default): the task's own ranking metric, "c_index" for survival and "auc" for classification.
        checkpoint_dir: folder of checkpoints (last and best; :mod:`clinfuse.fusion.checkpoints`), which
            ``fit(..., resume=True)`` continues from; None writes nothing.
        logger, log_dir: Lightning logging of each epoch's train_loss, val_loss, metric and lr
            (:mod:`clinfuse.fusion.loggers`): None, a CSV log in ``log_dir`` when it is set, else none;
            "csv", "tensorboard", "mlflow" (or a list) in ``log_dir``, else ``checkpoint_dir/logs``; False;
            or Lightning Logger instances. callbacks: extra Lightning callbacks of the fit (a list).
        validation_fraction: share of the training samples held out (grouped, stratified) for early
            stopping when ``fit`` gets no ``validation`` cohort; 0 trains ``max_epochs`` without validation.
        class_weights: None, "balanced", or a mapping label -> weight for the cross-entropy.
        top_genes: genes kept by the preprocessor (most variable on the training samples).
        preprocessor_kwargs: further ``Preprocessor`` keywords (e.g. ``max_events``, ``gene_transform``).
        aggregator_kwargs, encoder_kwargs: extra keywords for the aggregator, and per modality for encoders.
        strategy, devices, accelerator: Lightning's, e.g. ``strategy="ddp", devices=2`` (worker processes:
            :mod:`~clinfuse.fusion.ddp_launch`); prediction uses ``accelerator`` too (``inference_device``).
        verbose: progress bar and Lightning's messages.
        seed: seeds weights, sampling, the inner split and modality dropout.
    """

    def __init__(self, *, task: str = "classification", aggregator: str | None = None,
                 encoders: dict[str, str] | None = None, d_model: int = 64, n_heads: int | None = 4,
                 n_layers: int | None = None, dropout: float | None = 0.1, ffn_mult: int | None = None,
                 modality_dropout: float = 0.1, wide_penalty: float | None = 0.1,
                 survival_head: str = "discrete",
                 n_time_bins: int = 4, max_epochs: int = 30, batch_size: int | None = None,
                 max_patches: int | None = 512,
                 lr: float = 1e-3, weight_decay: float = 1e-2, warmup_epochs: float = 1,
                 gradient_clip: float | None = 1.0, accumulate_grad_batches: int = 1,
                 early_stopping_patience: int | None = 5, monitor: str | None = None,
                 checkpoint_dir: str | Path | None = None, logger: Any = None,
                 log_dir: str | Path | None = None, callbacks: list | None = None,
                 validation_fraction: float = 0.2,
                 class_weights: str | dict | None = None, top_genes: int | None = 2000,
                 preprocessor_kwargs: dict[str, Any] | None = None,
                 aggregator_kwargs: dict[str, Any] | None = None,
                 encoder_kwargs: dict[str, dict[str, Any]] | None = None, strategy: Any = "auto",
                 devices: Any = 1,
                 accelerator: str = "cpu", verbose: bool = True, seed: int = 0) -> None:
        self.task = task
        self.aggregator = aggregator
        self.encoders = encoders
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.dropout = dropout
        self.ffn_mult = ffn_mult
        self.modality_dropout = modality_dropout
        self.wide_penalty = wide_penalty
        self.survival_head = survival_head
        self.n_time_bins = n_time_bins
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.max_patches = max_patches
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.gradient_clip = gradient_clip
        self.accumulate_grad_batches = accumulate_grad_batches
        self.early_stopping_patience = early_stopping_patience
        self.monitor = monitor
        self.checkpoint_dir = checkpoint_dir
        self.logger, self.log_dir, self.callbacks = logger, log_dir, callbacks
        self.validation_fraction = validation_fraction
        self.class_weights = class_weights
        self.top_genes = top_genes
        self.preprocessor_kwargs = preprocessor_kwargs
        self.aggregator_kwargs = aggregator_kwargs
        self.encoder_kwargs = encoder_kwargs
        self.strategy = strategy
        self.devices = devices
        self.accelerator = accelerator
        self.verbose = verbose
        self.seed = seed

    # ------------------------------------------------------------------------------------------ checks
    def _validate_params(self) -> None:
        from .hyperparameters import check_hyperparameters

        check_hyperparameters(self)

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet, call fit first "
                                 "(or FusionModel.load a saved one).")

    def _check_task(self, what: str, task: str) -> None:
        self._check_fitted()
        if self.task != task:
            alt = ("predict_proba / predict" if self.task == "classification"
                   else "predict_risk / predict_survival")
            raise ValueError(f"{what} is for {task} models; this model's task is {self.task!r} (use {alt})")

    def _check_cohort(self, cohort: Any) -> None:
        if not hasattr(cohort, "sample_ids") or not hasattr(cohort, "modalities"):
            raise TypeError(f"expected a clinfuse.datasets.Cohort, got {type(cohort).__name__}")
        if len(cohort) == 0:
            raise ValueError("the cohort has no samples")
        self.preprocessor_.check_compatible(cohort)
        warn_data(self.preprocessor_, cohort)  # used but unlike training: DataWarning, never silent

    # --------------------------------------------------------------------------------------------- fit
    def fit(self, cohort: Any, validation: Any | None = None, *, resume: bool = False) -> FusionModel:
        """Fit on ``cohort`` (all of it is training data).

        Without ``validation``, early stopping uses an inner grouped, stratified split of ``cohort``
        (``validation_fraction``); the preprocessor sees the training part only. Returns ``self``.

        ``resume=True`` continues from ``checkpoint_dir`` (same data and hyperparameters, else ValueError)
        to the weights an uninterrupted fit would have. The global RNGs are left as they were. SIGINT /
        SIGTERM raise :class:`~clinfuse.fusion.interrupts.TrainingInterrupted` (a KeyboardInterrupt).
        """
        from .persistence import data_shapes, data_summary
        from .training import fit_model

        run = fit_model(self, cohort, validation, resume=resume)
        summary = data_summary(run.train, run.validation, given=validation is not None)  # for the model card
        self._set_fitted(replace(run.state, training_shapes=data_shapes(run.train), data_summary=summary))
        # What is measured by predicting with the fitted network completes the state.
        if self.task == "survival" and self.survival_head == "cox":
            surv = run.train.survival.loc[run.train.sample_ids]
            baseline = M.breslow_baseline(self.predict_risk(run.train).to_numpy(float),
                                          surv["time"].to_numpy(float), surv["event"].to_numpy(int))
            self._set_fitted(replace(self._fitted_state(), baseline_hazard=baseline))
        if run.validation is not None:  # from the best epoch's outputs when fit kept them: no second pass
            metrics = {**self.metrics_, "validation": self.evaluate(run.validation, _arrays=run.predictions)}
            self._set_fitted(replace(self._fitted_state(), metrics=metrics))
        return self

    def _set_fitted(self, state: FittedState) -> None:
        """Assign every fitted attribute (``FittedState`` field + ``_``): the one place fit and load do."""
        for f in fields(state):
            setattr(self, f"{f.name}_", getattr(state, f.name))

    def _fitted_state(self) -> FittedState:
        self._check_fitted()
        return FittedState(**{f.name: getattr(self, f"{f.name}_") for f in fields(FittedState)})

    # --------------------------------------------------------------------------------------- inference
    @property
    def modalities_(self) -> list[str]:
        self._check_fitted()
        return [m for m in MODALITIES if m in self.schema_]

    @property
    def aggregator_(self) -> str:
        """The aggregator the fitted network uses (``aggregator``, or what None resolved to)."""
        self._check_fitted()
        return str(self.network_config_["aggregator"]["name"])

    def _network_for_inference(self) -> torch.nn.Module:
        net = self.network_.cpu()
        net.eval()
        return net

    def _outputs_to_predictions(self, outputs: torch.Tensor) -> dict[str, np.ndarray]:
        o = outputs.detach().float().cpu()
        if self.task == "classification":
            return {"proba": torch.softmax(o, dim=-1).numpy()}
        if self.survival_head == "cox":
            return {"risk": o.reshape(-1).numpy()}
        from .losses import hazards_to_survival, risk_from_survival

        surv = hazards_to_survival(o)
        return {"survival": surv.numpy(), "risk": risk_from_survival(surv).numpy()}

    def iter_attention(self, cohort: Any, *, batch_size: int | None = None
                       ) -> Iterator[tuple[Batch, list[AttentionRecord], dict[str, np.ndarray]]]:
        """Yield ``(batch, records, predictions)`` per batch of ``cohort``: the CPU batch, its detached
        attention records and the batch's predictions (``proba [B, C]``; or ``risk [B]`` and, for the
        discrete head, ``survival [B, K]`` at the bin ends). Bags are read from disk batch by batch."""
        from ..datasets.loading import make_loader
        from .inference_device import network_outputs

        self._check_fitted()
        self._check_cohort(cohort)
        size = int(batch_size or self.batch_size or BATCH_SIZE)
        # stream: the image encoder reads each bag in chunks, so no [N, D] copy of a bag is made
        loader = make_loader(cohort, self.preprocessor_, batch_size=size,
                             shuffle=False, train=False, stream=True)
        with torch.no_grad():  # on the model's accelerator (inference_device), outputs back on the CPU
            for batch, out in network_outputs(self, loader):
                yield batch, [r.detach() for r in out.records], self._outputs_to_predictions(out.outputs)

    def _predict_arrays(self, cohort: Any) -> tuple[list[str], dict[str, np.ndarray]]:
        ids: list[str] = []
        parts: dict[str, list[np.ndarray]] = {}
        for batch, _, preds in self.iter_attention(cohort):
            ids.extend(batch.sample_ids)
            for k, v in preds.items():
                parts.setdefault(k, []).append(v)
        arrays = {k: np.concatenate(v, axis=0) for k, v in parts.items()}
        order = pd.Index(ids).get_indexer([str(s) for s in cohort.sample_ids])
        assert (order >= 0).all(), "the loader lost samples"
        return [str(s) for s in cohort.sample_ids], {k: v[order] for k, v in arrays.items()}

    def predict_proba(self, cohort: Any) -> pd.DataFrame:
        """Class probabilities, DataFrame ``[samples x classes]`` (columns ``classes_``)."""
        self._check_task("predict_proba", "classification")
        ids, arrays = self._predict_arrays(cohort)
        return pd.DataFrame(arrays["proba"], index=pd.Index(ids, name="sample_id"),
                            columns=list(self.classes_))

    def predict(self, cohort: Any) -> pd.Series:
        """Most probable class label of each sample (Series indexed by sample id)."""
        proba = self.predict_proba(cohort)
        labels = np.asarray(self.classes_, dtype=object)[np.argmax(proba.to_numpy(), axis=1)]
        return pd.Series(labels, index=proba.index, name="prediction")

    def predict_risk(self, cohort: Any) -> pd.Series:
        """Risk score of each sample, higher = worse (discrete head: ``-sum_k S(t_k)``; Cox: the linear
        risk)."""
        self._check_task("predict_risk", "survival")
        ids, arrays = self._predict_arrays(cohort)
        return pd.Series(arrays["risk"], index=pd.Index(ids, name="sample_id"), name="risk")

    def predict_survival(self, cohort: Any, times: Sequence[float]) -> pd.DataFrame:
        """S(t) of each sample at ``times``, DataFrame ``[samples x times]``.

        Discrete head: the model gives S at the end of each time bin (the last bin ends at the largest
        training time); between bin ends the hazard is constant in each bin (log S linear in t, exact at
        the bin ends), and beyond the last bin end t_K the last bin's hazard rate continues:
        ``S(t) = S(t_K) * (S(t_K) / S(t_{K-1})) ** ((t - t_K) / (t_K - t_{K-1}))``, an extrapolation
        beyond the training follow-up, not an estimate from data there. Models saved with an open last
        bin (``time_bins_[-1] == inf``, fitted before this rule) keep their step rule: 1 before the first
        bin end, then the value at the last bin end <= t. Cox head: ``S(t) = exp(-H0(t) exp(risk))``
        with the Breslow baseline cumulative hazard H0 of the training samples (a step function of the
        training event times).
        """
        self._check_task("predict_survival", "survival")
        times = np.asarray(times, dtype=float).reshape(-1)
        if len(times) == 0 or not np.isfinite(times).all() or (times < 0).any():
            raise ValueError(f"times must be non-negative finite numbers, got {times.tolist()}")
        ids, arrays = self._predict_arrays(cohort)
        return self._survival_frame(ids, arrays, times)

    def _survival_frame(self, ids: list[str], arrays: dict[str, np.ndarray],
                        times: np.ndarray) -> pd.DataFrame:
        surv = (cox_survival_at(self.baseline_hazard_, arrays["risk"], times) if self.survival_head == "cox"
                else discrete_survival_at(self.time_bins_, arrays["survival"], times))
        return pd.DataFrame(surv, index=pd.Index(ids, name="sample_id"), columns=list(times))

    # ----------------------------------------------------------------------------------------- metrics
    def score(self, cohort: Any) -> float:
        """The primary metric as a float: AUC (macro one-vs-rest for > 2 classes) or Harrell's c-index."""
        self._check_fitted()
        self._require_targets(cohort, "score")
        if self.task == "classification":
            return M.roc_auc(cohort.labels.loc[cohort.sample_ids].tolist(), self.predict_proba(cohort))
        surv = cohort.survival.loc[cohort.sample_ids]
        return M.concordance_index(surv["time"], surv["event"], self.predict_risk(cohort))

    def _require_targets(self, cohort: Any, what: str) -> None:
        have = cohort.labels if self.task == "classification" else cohort.survival
        if have is None:
            need = "labels" if self.task == "classification" else "survival (time, event)"
            raise ValueError(f"{what} needs a cohort with {need}; this cohort has none")

    def evaluate(self, cohort: Any, *, times: Sequence[float] | None = None, n_groups: int | None = None,
                 _arrays: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """All metrics on ``cohort``, overall and per missingness pattern (``by_pattern``).

        Classification: ``auc``, ``balanced_accuracy``, ``n``. Survival: :func:`.metrics.survival_metrics`
        (IPCW weights from the follow-up of the cohort given to ``fit``) at ``times`` (default: the
        quartiles of the cohort's event times inside the evaluable follow-up, which ends before the last
        training time; others: ValueError naming them), the integrated Brier score over 20 times between
        the 10th and 90th percentile of its event times, ``n_groups`` calibration groups per time.
        """
        self._check_fitted()
        self._require_targets(cohort, "evaluate")
        if self.task == "classification" and (times is not None or n_groups is not None):
            raise ValueError("evaluate: times and n_groups are for survival models; this one classifies")
        ids = [str(s) for s in cohort.sample_ids]
        presence = cohort.presence().reindex(index=ids, columns=self.modalities_, fill_value=False)
        arrays = self._predict_arrays(cohort)[1] if _arrays is None else _arrays  # (fit: its validation's)
        index = pd.Index(ids, name="sample_id")
        if self.task == "classification":
            labels = pd.Series(cohort.labels.loc[ids].to_numpy(), index=index)
            proba = pd.DataFrame(arrays["proba"], index=index, columns=list(self.classes_))
            return M.evaluate_classification(labels, proba, presence)
        targets = cohort.survival.loc[ids].set_axis(index)
        train = self.follow_up_
        if train is None:
            warnings.warn("this model was saved without the follow-up of its training samples: the IPCW "
                          "weights of the survival metrics are estimated on the evaluated cohort instead; "
                          "refit it to weigh by the training censoring", UserWarning, stacklevel=2)
        times, grid = ipcw_metrics.evaluation_times(targets["time"].to_numpy(float),
                                                    targets["event"].to_numpy(int), train, times)
        curves = self._survival_frame(ids, arrays, np.union1d(times, grid))
        return M.evaluate_survival(targets, pd.Series(arrays["risk"], index=index), curves, presence,
                                   times=times, ibs_times=grid, train=train, n_groups=n_groups)

    # ----------------------------------------------------------------------------------------- explain
    @property
    def attention_kinds(self) -> list[str]:
        """Attention kinds the fitted aggregator exports for this model's modalities (``ATTENTION_KINDS``
        order)."""
        self._check_fitted()
        declared = set(getattr(self.network_.aggregator, "attention_kinds", ()))
        token_kinds = {TOKEN_KIND[m] for m in self.modalities_}
        return [k for k in ATTENTION_KINDS if k in declared
                and (k not in TOKEN_KIND.values() or k in token_kinds)]

    def explain(self, cohort: Any, out: str | Path | None = None, kinds: Sequence[str] | None = None, *,
                contributions: bool = False):
        """Per-sample attention as an ``AttentionReport``, streamed to ``out`` (a .parquet path) if given;
        ``contributions=True`` adds the exact modality contributions (:func:`.explain.build_report`)."""
        from .explain import build_report
        self._check_fitted()
        return build_report(self, cohort, out=out, kinds=kinds, contributions=contributions)

    def shap_values(self, cohort: Any, *, modality: str = "clinical", background: Any = None, **kwargs: Any):
        """Clinical or genomic SHAP values (kind ``shap``): :func:`.explain.shap.shap_values`."""
        from .explain.shap import shap_values
        return shap_values(self, cohort, modality=modality, background=background, **kwargs)

    def attributions(self, cohort: Any, *, modality: str, **kwargs: Any):
        """Integrated gradients of any modality (kind ``attribution``): :func:`.explain.attributions`."""
        from .explain.attributions import attributions

        return attributions(self, cohort, modality=modality, **kwargs)

    # ------------------------------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> Path:
        """Save to folder ``path`` atomically (see :mod:`clinfuse.fusion.persistence` for its files).
        In multi-process training only the rank-0 process writes; others return without writing."""
        from .persistence import save_model

        return save_model(path, class_name=type(self).__name__, params=self.get_params(),
                          state=self._fitted_state())

    @classmethod
    def load(cls, path: str | Path) -> FusionModel:
        """Load a folder written by :meth:`save` (weights read with ``torch.load(weights_only=True)``)."""
        from .persistence import load_model

        params, state = load_model(path, valid_params=set(cls().get_params()))
        model = cls(**params)
        model._set_fitted(state)
        return model
