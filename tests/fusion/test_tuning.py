"""tune: Optuna search scored by inner CV on the given cohort only; nested inside cross_validate per outer
training fold; seeded; optional dependency with a clear message."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from clinfuse.fusion import FusionModel, TuneResult, cross_validate, tune
from clinfuse.fusion import tuning as T

FAST = {"aggregator": "concat", "d_model": 16, "n_heads": 2, "max_epochs": 1, "batch_size": 8,
        "verbose": False}
SPACE = {"lr": ("loguniform", 1e-4, 1e-2), "dropout": ("uniform", 0.0, 0.3), "max_epochs": ("int", 1, 2),
         "d_model": ("categorical", [8, 16])}


@pytest.fixture(scope="module")
def cohort():
    from clinfuse.datasets import make_synthetic_cohort

    return make_synthetic_cohort(40, modalities=("clinical", "genomics"), n_genes=12, seed=2)[0]


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_tune_returns_best_params_in_the_space_a_trials_table_and_a_fitted_model(cohort):
    model = FusionModel(**FAST)
    result = tune(model, cohort, n_trials=2, folds=2, seed=0, space=SPACE)
    assert isinstance(result, TuneResult) and set(result.best_params_) == set(SPACE)
    assert 1e-4 <= result.best_params_["lr"] <= 1e-2 and 0 <= result.best_params_["dropout"] <= 0.3
    assert result.best_params_["max_epochs"] in (1, 2) and result.best_params_["d_model"] in (8, 16)
    assert len(result.trials_) == 2
    assert {"value", "params_lr", "params_d_model"} <= set(result.trials_.columns)
    assert result.best_score_ == pytest.approx(result.trials_["value"].max())
    best = result.best_model_
    assert best.d_model == result.best_params_["d_model"] and best.lr == result.best_params_["lr"]
    proba = best.predict_proba(cohort)
    assert proba.shape == (len(cohort), 2) and np.isfinite(proba.to_numpy()).all()
    assert not hasattr(model, "network_") and model.lr == 1e-3  # the given model is left as it was


@pytest.mark.slow  # several seconds: CI runs it, the quick suite does not
def test_tune_is_reproducible_with_a_seed(cohort):
    a = tune(FusionModel(**FAST), cohort, n_trials=2, folds=2, seed=4, space=SPACE)
    b = tune(FusionModel(**FAST), cohort, n_trials=2, folds=2, seed=4, space=SPACE)
    assert a.best_params_ == b.best_params_
    cols = ["value"] + [c for c in a.trials_.columns if c.startswith("params_")]
    assert a.trials_[cols].equals(b.trials_[cols])


@pytest.mark.slow  # several seconds: CI runs it, the quick suite does not
def test_nested_cross_validate_tunes_on_outer_training_folds_only(cohort, monkeypatch):
    seen: list[set[str]] = []
    original = T.tune

    def spy(model, sub, **kw):
        seen.append(set(sub.sample_ids))
        return original(model, sub, **kw)

    monkeypatch.setattr(T, "tune", spy)
    cv = cross_validate(FusionModel(**FAST), cohort, folds=2, seed=1,
                        tune=dict(n_trials=2, folds=2, space=SPACE))
    assert len(seen) == 2 and len(cv.tuned) == 2 and len(cv.metrics) == 2
    for (train, test), ids in zip(cv.splits, seen):
        assert ids == set(train) and not ids & set(test)  # the tuner never saw the outer test fold
    for res in cv.tuned:
        assert len(res.trials_) == 2 and set(res.best_params_) == set(SPACE)
    assert sorted(cv.oof["sample_id"]) == sorted(cohort.sample_ids)


def test_default_space_per_aggregator_and_aggregator_kwargs_keys():
    space = T.default_space(FusionModel(aggregator="abmil"))
    assert {"lr", "weight_decay", "dropout", "d_model", "max_epochs", "aggregator_kwargs.gated"} <= set(space)
    assert {"n_layers", "n_heads"} <= set(T.default_space(FusionModel(), ("clinical", "images")))  # persam
    m = T.with_params(FusionModel(aggregator="abmil", aggregator_kwargs={"hidden": 8}),
                      {"aggregator_kwargs.gated": False, "lr": 0.01})
    assert m.aggregator_kwargs == {"hidden": 8, "gated": False} and m.lr == 0.01
    for name in T.DEFAULT_SPACES:
        T.check_space(T.DEFAULT_SPACES[name], FusionModel(aggregator=name))


def test_bad_spaces_and_arguments_are_refused_by_name(cohort):
    model = FusionModel(**FAST)
    with pytest.raises(ValueError, match="'learning_rate'"):
        tune(model, cohort, n_trials=1, folds=2, space={"learning_rate": ("loguniform", 1e-4, 1e-2)})
    with pytest.raises(ValueError, match=r"space\['lr'\]"):
        tune(model, cohort, n_trials=1, folds=2, space={"lr": ("loguniform", 0, 1e-2)})
    with pytest.raises(ValueError, match=r"space\['d_model'\]"):
        tune(model, cohort, n_trials=1, folds=2, space={"d_model": ("choice", [8, 16])})
    with pytest.raises(ValueError, match="n_trials"):
        tune(model, cohort, n_trials=0, folds=2, space=SPACE)
    with pytest.raises(ValueError, match="no default tuning space"):
        T.default_space(FusionModel(aggregator="my_own"))
    with pytest.raises(ValueError, match="'trials'"):
        cross_validate(model, cohort, folds=2, tune=dict(trials=2))
    with pytest.raises(TypeError, match="tune must be a dict"):
        cross_validate(model, cohort, folds=2, tune=2)


def test_missing_optuna_names_the_extra(cohort, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    with pytest.raises(ImportError, match=r"clinfuse\[tune\]"):
        tune(FusionModel(**FAST), cohort, n_trials=1, folds=2, space=SPACE)


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_cli_tune_writes_best_params_trials_and_the_model(cohort, tmp_path, capsys):
    import json

    import pandas as pd
    import yaml
    from clinfuse.fusion.cli import main
    from clinfuse.fusion.config import write_cohort_files

    spec = write_cohort_files(cohort, tmp_path)  # run.yaml's paths are relative to it
    space = {k: list(v) for k, v in SPACE.items()}
    run = {"task": "classification", "data": spec, "model": FAST,
           "tune": {"n_trials": 3, "folds": 2, "seed": 1, "space": space}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    out = tmp_path / "tuned"
    assert main(["tune", "--config", str(tmp_path / "run.yaml"), "--out", str(out), "--n-trials", "2"]) == 0
    best = json.loads((out / "best_params.json").read_text())
    assert set(best["best_params"]) == set(SPACE) and best["metric"] == "auc"
    assert len(pd.read_csv(out / "trials.csv")) == 2  # --n-trials overrides run.yaml's 3
    model = FusionModel.load(out / "model")
    assert model.d_model == best["best_params"]["d_model"]
    run["tune"]["trails"] = 2
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert main(["tune", "--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "o2")]) == 2
    assert "trails" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_the_default_aggregator_gets_the_space_of_the_one_fit_uses():
    from clinfuse.fusion.tuning import DEFAULT_SPACES, default_space

    model = FusionModel()  # aggregator=None
    assert default_space(model, ("clinical", "images")) == DEFAULT_SPACES["persam"]
    assert default_space(model, ("clinical",)) == DEFAULT_SPACES["hierarchical"]
