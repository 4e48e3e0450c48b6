"""``tune``: Optuna search over a declared space, scored by inner cross-validation on the given cohort only.

A space maps a ``FusionModel`` keyword (or ``"aggregator_kwargs.<name>"`` for one aggregator keyword) to one
of ``("loguniform", low, high)``, ``("uniform", low, high)``, ``("int", low, high)`` or
``("categorical", [choices])``. ``DEFAULT_SPACES`` holds one per built-in aggregator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone

_COMMON: dict[str, tuple] = {
    "lr": ("loguniform", 1e-4, 3e-3),
    "weight_decay": ("loguniform", 1e-5, 1e-1),
    "dropout": ("uniform", 0.0, 0.4),
    "d_model": ("categorical", [32, 64, 128]),
    "max_epochs": ("int", 10, 50),
    "modality_dropout": ("uniform", 0.0, 0.3),
    "wide_penalty": ("loguniform", 1e-2, 1.0),  # ridge penalty of the linear term (default 0.1)
}

# n_heads choices divide every d_model choice, so any combination builds
DEFAULT_SPACES: dict[str, dict[str, tuple]] = {
    "persam": {**_COMMON, "n_layers": ("int", 1, 2), "n_heads": ("categorical", [2, 4])},
    "self_attention": {**_COMMON, "n_layers": ("int", 1, 3), "n_heads": ("categorical", [2, 4])},
    "cross_attention": {**_COMMON, "n_heads": ("categorical", [2, 4])},
    "abmil": {**_COMMON, "aggregator_kwargs.gated": ("categorical", [True, False])},
    "hierarchical": dict(_COMMON),
    "concat": dict(_COMMON),
}

_KINDS = ("loguniform", "uniform", "int", "categorical")
_PREFIX = "aggregator_kwargs."


@dataclass
class TuneResult:
    """What :func:`tune` returns.

    Attributes:
        best_params_: the best trial's values, keyed as in the space.
        best_score_: its mean inner-fold primary metric (AUC or c-index).
        trials_: one row per trial (Optuna's ``trials_dataframe``: ``number``, ``value``, ``params_<name>``,
            ``state``, ...).
        best_model_: a clone of the model with ``best_params_``, fitted on the whole cohort.
        space: the space searched.
    """

    best_params_: dict[str, Any]
    best_score_: float
    trials_: pd.DataFrame
    best_model_: Any
    space: dict[str, tuple] = field(default_factory=dict)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as err:
        raise ImportError("clinfuse.fusion.tune needs Optuna, which is an optional extra: "
                          "pip install 'clinfuse[tune]'") from err
    return optuna


def default_space(model: Any, modalities: Any = ()) -> dict[str, tuple]:
    """The declared space of the aggregator ``model`` uses on ``modalities`` (its ``aggregator``, or for
    None the one fit resolves it to); a copy. ValueError for an aggregator without one."""
    from .build import resolve_aggregator

    name = resolve_aggregator(getattr(model, "aggregator", None), list(modalities))
    if name not in DEFAULT_SPACES:
        raise ValueError(f"no default tuning space for aggregator {name!r} (spaces exist for "
                         f"{sorted(DEFAULT_SPACES)}); pass space={{param: spec, ...}}")
    return dict(DEFAULT_SPACES[name])


def check_space(space: Any, model: Any) -> dict[str, tuple]:
    """Validate ``space`` against the specs above and the model's keywords; returns it as a dict."""
    if not isinstance(space, dict) or not space:
        raise TypeError(f"space must be a non-empty dict param -> spec, got {space!r}")
    params = set(model.get_params(deep=False))
    for name, spec in space.items():
        if not isinstance(name, str) or not (name in params or (name.startswith(_PREFIX) and len(name) >
                                                                len(_PREFIX))):
            raise ValueError(f"space: {name!r} is neither a {type(model).__name__} keyword nor "
                             f"'{_PREFIX}<name>'")
        if not isinstance(spec, tuple | list) or not spec or spec[0] not in _KINDS:
            raise ValueError(f"space[{name!r}]: expected a tuple whose first item is one of {_KINDS}, "
                             f"got {spec!r}")
        if spec[0] == "categorical":
            if len(spec) != 2 or not isinstance(spec[1], list | tuple) or not spec[1]:
                raise ValueError(f"space[{name!r}]: expected ('categorical', [choices]), got {spec!r}")
        elif len(spec) != 3 or not all(isinstance(v, int | float) and not isinstance(v, bool)
                                       for v in spec[1:]) or not spec[1] <= spec[2]:
            raise ValueError(f"space[{name!r}]: expected ({spec[0]!r}, low, high) with low <= high, "
                             f"got {spec!r}")
        elif spec[0] == "loguniform" and spec[1] <= 0:
            raise ValueError(f"space[{name!r}]: loguniform needs low > 0, got {spec!r}")
    return dict(space)


def _suggest(trial: Any, name: str, spec: tuple) -> Any:
    kind = spec[0]
    if kind == "categorical":
        return trial.suggest_categorical(name, list(spec[1]))
    if kind == "int":
        return trial.suggest_int(name, int(spec[1]), int(spec[2]))
    return trial.suggest_float(name, float(spec[1]), float(spec[2]), log=kind == "loguniform")


def with_params(model: Any, params: dict[str, Any]) -> Any:
    """An unfitted clone of ``model`` with ``params`` set (``aggregator_kwargs.<k>`` merged into its dict)."""
    out = clone(model)
    plain = {k: v for k, v in params.items() if not k.startswith(_PREFIX)}
    agg = {k[len(_PREFIX):]: v for k, v in params.items() if k.startswith(_PREFIX)}
    if agg:
        plain["aggregator_kwargs"] = {**(out.get_params(deep=False).get("aggregator_kwargs") or {}), **agg}
    return out.set_params(**plain)


def primary_metric(model: Any) -> str:
    """The column of ``cross_validate``'s metrics that tuning maximises."""
    return "c_index" if getattr(model, "task", "classification") == "survival" else "auc"


def tune(model: Any, cohort: Any, *, n_trials: int = 20, folds: Any = 3, seed: int = 0,
         space: dict[str, tuple] | None = None) -> TuneResult:
    """Search ``space`` with Optuna's TPE sampler, scoring each trial by ``cross_validate`` on ``cohort``.

    Only ``cohort`` is seen: pass training data only (``cross_validate(..., tune=...)`` does this per outer
    fold), so the chosen parameters carry no information from any held-out sample.

    Args:
        model: a ``FusionModel`` (cloned, never modified); its other keywords stay fixed.
        cohort: the samples to tune and refit on.
        n_trials: trials (each one ``folds`` fits).
        folds: inner folds, anything ``make_splits`` takes; the same splits score every trial.
        seed: seeds the sampler and the inner fold assignment.
        space: param -> spec (see the module docstring); replaces the aggregator's default space.

    Returns:
        A :class:`TuneResult` whose ``best_model_`` is refitted on all of ``cohort``.
    """
    from ..datasets.splits import make_splits
    from .crossval import cross_validate

    optuna = _import_optuna()
    if not hasattr(model, "get_params") or not hasattr(model, "fit"):
        raise TypeError(f"model must be an estimator such as FusionModel, got {type(model).__name__}")
    if isinstance(n_trials, bool) or not isinstance(n_trials, int | np.integer) or n_trials < 1:
        raise ValueError(f"n_trials must be a positive int, got {n_trials!r}")
    space = check_space(default_space(model, cohort.modalities) if space is None else space, model)
    cohort.check_fittable()
    splits = make_splits(cohort, folds, seed=seed)  # fixed, so trials differ by their params only
    metric = primary_metric(model)

    def objective(trial: Any) -> float:
        candidate = with_params(model, {name: _suggest(trial, name, spec) for name, spec in space.items()})
        scores = cross_validate(candidate, cohort, folds=splits).metrics[metric].to_numpy(dtype=float)
        # a fold without both classes / without events has no metric; all-NaN fails the trial in Optuna
        return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=int(seed)))
    study.optimize(objective, n_trials=int(n_trials))
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise ValueError(f"tune: none of the {n_trials} trials gave a finite {metric} on the inner folds "
                         "(too few events or a single class per fold?)")
    best = dict(study.best_trial.params)
    return TuneResult(best_params_=best, best_score_=float(study.best_value),
                      trials_=study.trials_dataframe(), best_model_=with_params(model, best).fit(cohort),
                      space=space)
