"""What a fit learns, as one value: training returns it, persistence writes and reads it, and the
estimator assigns it (``FusionModel._set_fitted``) as its ``*_`` attributes, in one place."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn


@dataclass
class FittedState:
    """The fitted attributes of a FusionModel (attribute = field name + ``_``).

    Attributes:
        preprocessor: the fitted ``Preprocessor``; schema: its ``schema_`` (sizes the network).
        network: the trained ``FusionNetwork`` (CPU, eval mode).
        network_config: the resolved configuration it was built from (``build.resolve_network_config``).
        classes: class labels (classification) or None; time_bins: the discrete-time bin edges or None.
        history: one dict per epoch (train_loss, val_loss, val_metric); best_epoch: the epoch kept.
        baseline_hazard: Breslow ``{"times", "cumhaz"}`` (Cox head) or None.
        follow_up: life table of the survival targets of the cohort given to ``fit`` (distinct times with
            their numbers of events and censorings, ``ipcw_metrics.follow_up``): the IPCW weights and the
            end of the evaluable follow-up of the metrics. None for classification and for survival models
            saved before it was kept (their metrics weigh by the evaluated samples).
        metrics: best epoch, best validation loss, epochs run, and the validation metrics.
        is_global_zero, world_size: the process's rank 0 flag and the number of training processes.
        training_ids, validation_ids, training_shapes: what the model was trained and validated on (a
            loaded model has None: its ``provenance`` keeps what was recorded when it was saved).
        provenance: the saved ``provenance.json`` of a loaded model; None after ``fit``.
        data_summary: what the model card says of the training and validation data
            (``model_card.data_summary``); a loaded model keeps it in ``provenance``.
    """

    preprocessor: Any
    schema: dict[str, Any]
    network: nn.Module
    network_config: dict[str, Any]
    classes: list[Any] | None = None
    time_bins: list[float] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    baseline_hazard: dict[str, list[float]] | None = None
    follow_up: dict[str, list[float]] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    is_global_zero: bool = True
    world_size: int = 1
    training_ids: list[str] | None = None
    validation_ids: list[str] | None = None
    training_shapes: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    data_summary: dict[str, Any] | None = None


@dataclass
class TrainingRun:
    """What ``fit_model`` returns: the fitted state and the cohorts it was trained and validated on.

    The estimator completes the state with what it measures by predicting (the Cox baseline hazard on
    ``train``, the metrics on ``validation``) and assigns it. ``predictions``: the best weights'
    predictions on ``validation`` (``FusionModel._outputs_to_predictions`` of the outputs of the epoch that
    chose them, validation order), which its metrics are computed from; None when unknown (a resumed fit
    whose best epoch came before the resume, several processes).
    """

    state: FittedState
    train: Any
    validation: Any | None
    predictions: dict[str, np.ndarray] | None = None
