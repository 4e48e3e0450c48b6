"""FusionModel: scikit-learn habits, predictions, metrics, attention, save/load and schema checks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.datasets import Cohort, Preprocessor
from clinfuse.datasets.output_folders import write_manifest
from clinfuse.fusion import FusionModel
from clinfuse.fusion import metrics as M
from sklearn.base import clone
from sklearn.exceptions import NotFittedError


# ------------------------------------------------------------------------------------ estimator habits
def test_params_round_trip_and_clone():
    model = FusionModel(task="survival", aggregator="concat", d_model=32, encoders={"clinical": "mlp"})
    params = model.get_params()
    assert params["d_model"] == 32 and params["encoders"] == {"clinical": "mlp"}
    twin = clone(model)
    assert twin.get_params() == params and twin is not model
    assert model.set_params(lr=0.1) is model and model.lr == 0.1
    with pytest.raises(ValueError):
        model.set_params(not_a_param=1)
    with pytest.raises(TypeError):
        FusionModel("classification")  # keyword-only


def test_unfitted_model_says_call_fit_first(fitted_classifier):
    model = FusionModel()
    for call in (lambda: model.predict_proba(fitted_classifier.test), lambda: model.save("x"),
                 lambda: model.attention_kinds):
        with pytest.raises(NotFittedError, match="call fit first"):
            call()
    assert issubclass(NotFittedError, ValueError)


@pytest.mark.parametrize("kw, match", [
    ({"task": "regression"}, "task must be one of"),
    ({"aggregator": "nope"}, "registered"),
    ({"d_model": 30, "n_heads": 4}, "divisible"),
    ({"dropout": 1.5}, "dropout"),
    ({"encoders": {"pixels": "cnn"}}, "unknown modality"),
])
def test_bad_hyperparameters_fail_at_fit_with_a_clear_message(small_cohort, kw, match):
    with pytest.raises(ValueError, match=match):
        FusionModel(verbose=False, **kw).fit(small_cohort)


def test_task_mismatch_is_a_clear_error(small_cohort):
    with pytest.raises(ValueError, match="task='classification'"):
        FusionModel(task="survival", verbose=False).fit(small_cohort)


# ----------------------------------------------------------------------------------- classification
def test_fitted_attributes_and_training_history(fitted_classifier):
    model = fitted_classifier.model
    for attr in ("preprocessor_", "network_", "classes_", "history_", "schema_", "metrics_"):
        assert hasattr(model, attr)
    assert model.classes_ == [0, 1]
    assert set(model.schema_) >= {"clinical", "genomics", "images", "events"}
    # one entry per epoch run; training ends when the epochs or the early-stopping patience run out
    n_epochs = len(model.history_)
    assert [h["epoch"] for h in model.history_] == list(range(n_epochs))
    assert n_epochs == model.metrics_["epochs_run"]
    assert n_epochs == min(model.max_epochs, model.best_epoch_ + 1 + model.early_stopping_patience)
    # the best epoch by the default monitor (a classifier's validation AUC; the first of ties) is kept
    aucs = [h["val_metric"] for h in model.history_]
    assert model.best_epoch_ == int(np.argmax(aucs))
    # Early stopping used an inner split of the training samples only, and preprocessing saw only the rest.
    train_ids = set(fitted_classifier.train.sample_ids)
    assert set(model.validation_ids_) < train_ids and set(model.training_ids_) < train_ids
    assert not set(model.validation_ids_) & set(model.training_ids_)
    ref = Preprocessor(top_genes=model.top_genes).fit(fitted_classifier.train.subset(model.training_ids_))
    assert ref.to_dict() == model.preprocessor_.to_dict()


def test_predict_proba_predict_score_evaluate(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    proba = model.predict_proba(test)
    assert list(proba.index) == list(test.sample_ids) and list(proba.columns) == [0, 1]
    assert np.allclose(proba.sum(axis=1), 1.0)
    pred = model.predict(test)
    assert set(pred) <= {0, 1} and (pred == proba.idxmax(axis=1)).all()
    y = test.labels.loc[test.sample_ids]
    assert model.score(test) == pytest.approx(M.roc_auc(y.tolist(), proba))
    ev = model.evaluate(test)
    assert ev["auc"] == pytest.approx(model.score(test)) and 0 <= ev["balanced_accuracy"] <= 1
    patterns = M.pattern_names(test.presence()[model.modalities_])
    assert set(ev["by_pattern"]) == set(patterns)
    assert sum(v["n"] for v in ev["by_pattern"].values()) == len(test)
    full = ev["by_pattern"].get("clinical+genomics+images+events")
    assert full is not None and full["n"] == int((patterns == "clinical+genomics+images+events").sum())


def test_wrong_task_calls_are_clear(fitted_classifier, fitted_survival):
    with pytest.raises(ValueError, match="survival models.*predict_proba"):
        fitted_classifier.model.predict_risk(fitted_classifier.test)
    with pytest.raises(ValueError, match="classification models"):
        fitted_survival.model.predict_proba(fitted_survival.test)


def test_attention_and_explain(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    kinds = model.attention_kinds
    assert {"modality", "patch", "explanatory", "exploratory", "class_wise"} <= set(kinds)
    seen = []
    for batch, records, preds in model.iter_attention(test, batch_size=5):
        assert preds["proba"].shape == (len(batch), 2)
        assert all(r.kind in kinds for r in records)
        seen += batch.sample_ids
    assert seen == list(test.sample_ids)
    report = model.explain(test, kinds=["patch", "explanatory"])
    frame = report.to_frame()
    assert set(frame["kind"]) <= {"patch", "explanatory"} and set(frame["sample_id"]) <= set(test.sample_ids)


# ----------------------------------------------------------------------------------------- survival
def test_survival_predictions(fitted_survival):
    model, test = fitted_survival.model, fitted_survival.test
    risk = model.predict_risk(test)
    assert list(risk.index) == list(test.sample_ids) and np.isfinite(risk).all()
    edges = model.time_bins_
    assert len(edges) == 4 and edges[0] == 0 and np.isfinite(edges[-1])
    times = [0.0, edges[1] * 0.5, edges[1], edges[2], edges[2] * 10]
    surv = model.predict_survival(test, times)
    assert surv.shape == (len(test), 5)
    assert np.allclose(surv[0.0], 1.0)  # before the first bin end
    assert (np.diff(surv.to_numpy(), axis=1) <= 1e-7).all() and ((surv >= 0) & (surv <= 1)).all().all()
    # At a bin end, S equals the model's S for that bin; risk = -sum_k S_k.
    s_bins = np.concatenate([p["survival"] for _, _, p in model.iter_attention(test)])
    assert np.allclose(surv[edges[1]], s_bins[:, 0], atol=1e-6)
    assert np.allclose(risk, -s_bins.sum(1), atol=1e-5)
    ev = model.evaluate(test)
    assert 0 <= ev["c_index"] <= 1 and 0 < ev["integrated_brier_score"] < 1
    assert ev["c_index"] == pytest.approx(model.score(test))
    assert "by_pattern" in ev
    with pytest.raises(ValueError, match="times"):
        model.predict_survival(test, [-1.0])


def test_survival_evaluation_reports_auc_brier_and_calibration_at_chosen_times(fitted_survival, tmp_path):
    model, train, test = fitted_survival.model, fitted_survival.train, fitted_survival.test
    given = train.survival.loc[train.sample_ids]
    # the IPCW weights come from the follow-up of every sample given to fit, kept (and saved) with the model
    assert model.follow_up_["time"] == sorted(set(given["time"].tolist()))
    assert sum(model.follow_up_["n_events"]) == int(given["event"].sum())
    assert FusionModel.load(model.save(tmp_path / "m")).follow_up_ == model.follow_up_
    t = test.survival.loc[test.sample_ids]
    times = [float(np.quantile(t["time"], 0.3)), float(np.quantile(t["time"], 0.6))]
    ev = model.evaluate(test, times=times)
    keys = [f"{name}@{x:g}" for name in ("auc", "brier", "calibration_error") for x in times]
    assert set(keys) | {"c_index", "mean_auc", "integrated_brier_score", "n_after_follow_up"} <= set(ev)
    from sksurv.metrics import brier_score
    from sksurv.util import Surv

    surv = model.predict_survival(test, times).to_numpy()
    _, want = brier_score(Surv.from_arrays(given["event"] == 1, given["time"]),
                          Surv.from_arrays(t["event"] == 1, np.minimum(t["time"], given["time"].max())),
                          surv, times)
    assert [ev[k] for k in keys[2:4]] == pytest.approx(want.tolist())
    default = model.evaluate(test)  # the event quartiles inside the follow-up
    assert sum(k.startswith("auc@") for k in default) >= 2
    with pytest.raises(ValueError, match=r"times \[100000\.0\] lie outside"):
        model.evaluate(test, times=[times[0], 1e5])


def test_classifier_evaluation_refuses_survival_times(fitted_classifier):
    with pytest.raises(ValueError, match="times and n_groups are for survival models"):
        fitted_classifier.model.evaluate(fitted_classifier.test, times=[1.0])


def test_survival_curve_covers_the_follow_up_and_falls_beyond_the_last_bin(fitted_survival):
    model, train, test = fitted_survival.model, fitted_survival.train, fitted_survival.test
    edges = np.asarray(model.time_bins_, dtype=float)
    t_max = train.survival["time"].max()
    # the last bin ends at the largest (inner-training) time, not at an event quantile
    assert np.isfinite(edges[-1]) and edges[-2] < edges[-1] <= t_max * (1 + 1e-6)
    s_bins = np.concatenate([p["survival"] for _, _, p in model.iter_attention(test)])
    surv = model.predict_survival(test, list(edges[1:]))
    np.testing.assert_allclose(surv.to_numpy(), s_bins, atol=1e-6)  # exact at every bin end
    beyond = [edges[-1] * f for f in (1.5, 2.0, 4.0)]
    curve = model.predict_survival(test, [edges[-1], *beyond]).to_numpy()
    assert (np.diff(curve, axis=1) < 0).all()  # no plateau after the last bin end
    # the last bin's constant hazard rate continues: log S is linear in t beyond t_K
    rate = (np.log(s_bins[:, -2]) - np.log(s_bins[:, -1])) / (edges[-1] - edges[-2])
    want = s_bins[:, -1:] * np.exp(-rate[:, None] * (np.asarray(beyond) - edges[-1]))
    np.testing.assert_allclose(curve[:, 1:], want, rtol=1e-5)
    # between bin ends: log-linear (piecewise-constant hazard), strictly between the two ends
    mid = model.predict_survival(test, [(edges[1] + edges[2]) / 2])[(edges[1] + edges[2]) / 2]
    np.testing.assert_allclose(mid, np.sqrt(s_bins[:, 0] * s_bins[:, 1]), rtol=1e-5)


def test_discrete_survival_rule_of_an_open_last_bin_stays_the_step_rule():
    from clinfuse.fusion.survival_curves import discrete_survival_at, survival_rule

    s = np.array([[0.9, 0.6, 0.3]])
    old = [0.0, 10.0, 20.0, np.inf]
    assert survival_rule(old) == "step" and survival_rule([0.0, 10.0, 20.0, 30.0]) != "step"
    np.testing.assert_allclose(discrete_survival_at(old, s, np.array([5.0, 10.0, 15.0, 500.0])),
                               [[1.0, 0.9, 0.9, 0.6]])
    new = discrete_survival_at([0.0, 10.0, 20.0, 30.0], s, np.array([0.0, 5.0, 30.0, 40.0]))
    np.testing.assert_allclose(new, [[1.0, np.sqrt(0.9), 0.3, 0.15]])
    zero = discrete_survival_at([0.0, 10.0, 20.0], np.array([[0.0, 0.0]]), np.array([5.0, 10.0, 25.0]))
    np.testing.assert_array_equal(zero, [[0.0, 0.0, 0.0]])


@pytest.mark.parametrize("aggregator", ["concat", "persam"])  # persam adds its clinical term to the risk
def test_cox_head_uses_breslow_baseline_and_survives_save_load(small_cohort, tmp_path, aggregator):
    from clinfuse.datasets import make_synthetic_cohort

    cohort, _ = make_synthetic_cohort(30, task="survival", modalities=("clinical", "genomics"),
                                      n_genes=12, seed=4)
    model = FusionModel(task="survival", survival_head="cox", aggregator=aggregator, d_model=16, n_heads=2,
                        max_epochs=2, validation_fraction=0.0, verbose=False).fit(cohort)
    risk = model.predict_risk(cohort)
    surv = model.predict_survival(cohort, [1.0, 50.0, 500.0])
    order = np.argsort(risk.to_numpy())
    assert (np.diff(surv[500.0].to_numpy()[order]) <= 1e-9).all()  # higher risk, lower survival
    assert model.baseline_hazard_["times"] == sorted(model.baseline_hazard_["times"])
    # the Breslow baseline is part of the saved model: the loaded one gives the same S(t)
    loaded = FusionModel.load(model.save(tmp_path / "cox"))
    assert loaded.survival_head == "cox" and loaded.baseline_hazard_ == model.baseline_hazard_
    pd.testing.assert_series_equal(loaded.predict_risk(cohort), risk)
    pd.testing.assert_frame_equal(loaded.predict_survival(cohort, [1.0, 50.0, 500.0]), surv)


# ---------------------------------------------------------------------------------------- save / load
def test_save_load_round_trip(fitted_classifier, tmp_path):
    model, test = fitted_classifier.model, fitted_classifier.test
    path = model.save(tmp_path / "run1")
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "preprocessor.json", "schema.json", "weights.pt", "metrics.json",
            "provenance.json"} <= names
    prov = json.loads((path / "provenance.json").read_text())
    assert prov["versions"]["torch"] and len(prov["training_data"]["sha256"]) == 64
    loaded = FusionModel.load(path)
    assert loaded.get_params() == model.get_params()
    pd.testing.assert_frame_equal(loaded.predict_proba(test), model.predict_proba(test))
    model.save(path)  # saving again replaces a clinfuse folder
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_load_builds_the_saved_network_configuration(small_cohort, tmp_path):
    """The folder stores the resolved network (format 4) and load builds exactly that: a PersAM without its
    modality logit terms loads as such, and the same folder claiming today's default no longer fits its
    weights. (Formats 1 and 2, which left such defaults unsaved, are refused: tests/fusion/test_build.py.)"""
    earlier = {"modality_logits": False}
    model = FusionModel(aggregator="persam", aggregator_kwargs=earlier, d_model=16, n_heads=2, max_epochs=1,
                        validation_fraction=0.0, verbose=False, seed=0).fit(small_cohort)
    path = model.save(tmp_path / "m")
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 4
    assert config["network"]["aggregator"]["kwargs"]["modality_logits"] is False
    loaded = FusionModel.load(path)
    assert loaded.aggregator_kwargs == earlier
    pd.testing.assert_frame_equal(loaded.predict_proba(small_cohort), model.predict_proba(small_cohort))
    config["network"]["aggregator"]["kwargs"]["modality_logits"] = True
    (path / "config.json").write_text(json.dumps(config))
    write_manifest(path)  # an edit the manifest lists: load goes on to build it (else: "not match manifest")
    with pytest.raises(ValueError, match="does not fit the saved configuration"):
        FusionModel.load(path)


def test_survival_save_load_keeps_bins(fitted_survival, tmp_path):
    model, test = fitted_survival.model, fitted_survival.test
    loaded = FusionModel.load(model.save(tmp_path / "s"))
    assert loaded.time_bins_ == model.time_bins_
    pd.testing.assert_frame_equal(loaded.predict_survival(test, [5, 50]),
                                  model.predict_survival(test, [5, 50]))


def test_load_refuses_pickled_objects_and_foreign_folders(fitted_classifier, tmp_path):
    path = fitted_classifier.model.save(tmp_path / "m")
    torch.save({"weights": torch.zeros(2), "evil": {1, 2}}, path / "weights.pt")
    write_manifest(path)  # the manifest lists the pickle: the weights reader itself must refuse it
    with pytest.raises(ValueError, match="refusing"):
        FusionModel.load(path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    with pytest.raises(ValueError, match="not written by clinfuse"):
        fitted_classifier.model.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_predicting_on_data_that_does_not_fit_the_schema_names_the_difference(fitted_classifier):
    test = fitted_classifier.test
    bags = {s: np.zeros((2, 5), dtype=np.float32) for s in test.clinical.index}
    bad = Cohort(clinical=test.clinical, images=bags, labels=test.labels.loc[test.clinical.index])
    with pytest.raises(ValueError, match="feature dim 5"):
        fitted_classifier.model.predict_proba(bad)
    # a dropped clinical column is the trained missing case: predicted, with a warning naming it
    clinical = test.clinical.drop(columns=[test.clinical.columns[0]])
    with pytest.warns(UserWarning, match=f"'{test.clinical.columns[0]}' seen at fit time are absent"):
        fitted_classifier.model.predict_proba(Cohort(clinical=clinical))


# -------------------------------------------------------------------------------------- determinism
def test_fit_is_deterministic_and_quiet(small_cohort, capfd):
    kw = {"d_model": 16, "n_heads": 2, "max_epochs": 2, "batch_size": 8, "verbose": False, "seed": 7}
    a = FusionModel(aggregator="self_attention", **kw).fit(small_cohort).predict_proba(small_cohort)
    b = FusionModel(aggregator="self_attention", **kw).fit(small_cohort).predict_proba(small_cohort)
    pd.testing.assert_frame_equal(a, b)
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert not torch.are_deterministic_algorithms_enabled()  # the global torch setting is restored
    other_seed = FusionModel(aggregator="self_attention", **{**kw, "seed": 8}).fit(small_cohort)
    c = other_seed.predict_proba(small_cohort)
    assert not np.allclose(a.to_numpy(), c.to_numpy())


def test_a_verbose_fit_prints_progress_but_no_lightning_advice(small_cohort, capfd, caplog):
    """verbose=True keeps the progress bar and why the fit stopped, never Lightning's tips, hardware
    banners or its own deprecation warnings."""
    import logging

    with caplog.at_level(logging.INFO):
        FusionModel(aggregator="concat", d_model=8, n_heads=2, max_epochs=2, batch_size=8, verbose=True,
                    seed=0).fit(small_cohort)
    out, err = capfd.readouterr()
    printed = out + err + caplog.text
    assert "Epoch 1/1" in printed  # the progress bar
    for advice in ("Tip:", "litlogger", "GPU available", "TPU available", "deprecated",
                   "to estimate number of stepping batches"):
        assert advice not in printed, printed


def test_explicit_validation_and_class_weights(small_cohort):
    ids = list(small_cohort.sample_ids)
    train, val = small_cohort.subset(ids[:22]), small_cohort.subset(ids[22:])
    model = FusionModel(aggregator="concat", d_model=16, n_heads=2, max_epochs=1, verbose=False, batch_size=4,
                        accumulate_grad_batches=2, gradient_clip=None, class_weights="balanced")
    model.fit(train, validation=val)
    assert model.validation_ids_ == ids[22:] and model.training_ids_ == ids[:22]
    assert "validation" in model.metrics_
    with pytest.raises(ValueError, match="every class"):
        FusionModel(aggregator="concat", max_epochs=1, verbose=False, class_weights={0: 1.0}).fit(train)


def test_saved_folder_and_files_get_umask_permissions(fitted_classifier, tmp_path):
    import os
    import stat

    umask = os.umask(0)
    os.umask(umask)
    path = fitted_classifier.model.save(tmp_path / "perm")
    assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((path / "config.json").stat().st_mode) == 0o666 & ~umask


def test_multiclass_with_string_labels():
    rng = np.random.default_rng(0)
    n = 45
    labels = pd.Series(np.array(["a", "b", "c"])[np.arange(n) % 3], index=[f"p{i}" for i in range(n)])
    clinical = pd.DataFrame({"x": rng.normal(size=n) + (labels == "b") * 2.0, "y": rng.normal(size=n)},
                            index=labels.index)
    cohort = Cohort(clinical=clinical, labels=labels)
    model = FusionModel(aggregator="concat", d_model=16, n_heads=2, max_epochs=2, verbose=False).fit(cohort)
    proba = model.predict_proba(cohort)
    assert list(proba.columns) == ["a", "b", "c"] and set(model.predict(cohort)) <= {"a", "b", "c"}
    ev = model.evaluate(cohort)
    assert ev["auc"] == pytest.approx(M.roc_auc(labels.tolist(), proba))
    assert set(ev["by_pattern"]) == {"clinical"}
