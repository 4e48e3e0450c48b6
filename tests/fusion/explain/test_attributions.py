"""Integrated-gradients attributions (kind ``attribution``) of every modality, and their agreement with
attention and with the permutation explainer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.fusion.explain.agreement import attention_attribution_agreement, genes_to_sets, model_gene_sets
from clinfuse.fusion.explain.attributions import attributions
from clinfuse.fusion.explain.gradients import expand_batch, outputs_from_tokens
from clinfuse.fusion.explain.shap import attention_shap_agreement, shap_values

MODALITIES = ["clinical", "genomics", "events", "images"]


@pytest.fixture(scope="module")
def classifier_reports(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    return {m: attributions(model, test, modality=m, background=fitted_classifier.train, n_steps=32)
            for m in MODALITIES}


def _totals(report, sample, classes):
    frame = report.to_frame()
    rows = frame[frame["sample_id"] == sample]
    if classes == [None]:
        return np.array([rows["value"].sum()])
    return rows.groupby("target_class")["value"].sum().reindex(classes).to_numpy()


@pytest.mark.parametrize("modality", MODALITIES)
def test_complete_and_in_probability_units(fitted_classifier, classifier_reports, modality):
    model, test = fitted_classifier.model, fitted_classifier.test
    report = classifier_reports[modality]
    classes = [str(c) for c in model.classes_]
    frame = report.to_frame()
    assert set(frame["kind"]) == {"attribution"} and set(frame["modality"]) == {modality}
    expected = {s for s in test.sample_ids if test.has(s, modality)}
    assert set(frame["sample_id"]) == expected and set(report.skipped) == set(test.sample_ids) - expected
    proba = model.predict_proba(test)
    for sample in expected:  # completeness: sum = f(x) - f(x'), f(x) = the predicted probabilities
        assert np.allclose(report.outputs[sample], proba.loc[sample].to_numpy(), atol=1e-5)
        gap = _totals(report, sample, classes) - (report.outputs[sample] - report.base_values[sample])
        assert np.abs(gap).max() < 1e-3
    assert (frame["value"] != 0).any()


def test_completeness_improves_with_steps_and_holds_for_risk(fitted_survival):
    model, test = fitted_survival.model, fitted_survival.test
    gaps = {}
    for n_steps in (2, 48):
        report = attributions(model, test, modality="genomics", n_steps=n_steps)
        gaps[n_steps] = max(abs(_totals(report, s, [None]) - (report.outputs[s] - report.base_values[s]))[0]
                            for s in report.outputs)
    risk = model.predict_risk(test)
    assert all(np.isclose(report.outputs[s][0], risk[s], atol=1e-5) for s in report.outputs)
    assert gaps[48] < 1e-3 and gaps[48] < gaps[2]
    assert report.to_frame()["target_class"].isna().all()


def test_outputs_from_tokens_is_the_network_forward(fitted_classifier):
    from clinfuse.datasets.loading import make_loader

    model = fitted_classifier.model
    batch = next(iter(make_loader(fitted_classifier.test.subset(fitted_classifier.test.sample_ids[:1]),
                                  model.preprocessor_, batch_size=1)))
    net = model.network_.eval()
    with torch.no_grad():
        direct = net(batch).outputs
        tokens = net.encode(batch)
        again = outputs_from_tokens(net, tokens, batch)
        big = outputs_from_tokens(net, {m: t for m, t in tokens.items()}, expand_batch(batch, 1))
    assert torch.allclose(direct, again, atol=1e-6) and torch.allclose(direct, big, atol=1e-6)


@pytest.mark.parametrize("modality,columns", [("events", ["code", "time"]),
                                              ("images", ["slide_id", "position", "x", "y"])])
def test_tokens_get_one_signed_value_each_with_their_columns(fitted_classifier, classifier_reports,
                                                             modality, columns):
    report, test = classifier_reports[modality], fitted_classifier.test
    frame = report.to_frame()
    attention = fitted_classifier.model.explain(test).to_frame(kinds=["event" if modality == "events"
                                                                       else "patch"])
    for sample, rows in frame.groupby("sample_id"):
        att = attention[(attention["sample_id"] == sample) & (attention["modality"] == modality)]
        per_class = rows.groupby("target_class").size()
        assert per_class.eq(att.groupby("target_class", dropna=False)["token"].nunique().max()).all()
    assert frame[columns].notna().all().all()
    if modality == "images":
        assert (frame["position"] >= 0).all() and frame["position"].eq(frame["position"].round()).all()


def test_gene_attributions_map_to_the_model_gene_sets(fitted_classifier, classifier_reports):
    model = fitted_classifier.model
    sets = model_gene_sets(model)
    assert sets and sets == {s: list(g) for s, g in model.network_.encoders["genomics"].member_genes.items()}
    report = classifier_reports["genomics"]
    assert report.gene_sets == sets
    attention = model.explain(fitted_classifier.test)
    att_tokens = set(attention.to_frame(kinds=["gene"])["token"])
    assert att_tokens <= set(sets) and not att_tokens & set(report.to_frame()["token"])  # sets vs genes
    agreement = attention_shap_agreement(attention, report)
    assert agreement.attrs["tokens"] == "gene sets"
    assert set(agreement["sample_id"]) == set(report.outputs)
    assert agreement["n_tokens"].eq(len(att_tokens)).all()
    assert agreement["spearman"].dropna().between(-1, 1).all() and agreement["spearman"].notna().any()


def test_genes_to_sets_sums_absolute_values_per_set():
    genes = pd.Series([1.0, 2.0, 4.0], index=pd.MultiIndex.from_tuples(
        [("s1", "A"), ("s1", "B"), ("s1", "C")], names=["sample_id", "token"]))
    per_set = genes_to_sets(genes, {"P1": ["A", "B"], "P2": ["B", "C", "Z"], "P3": ["Z"]})
    assert per_set.to_dict() == {("s1", "P1"): 3.0, ("s1", "P2"): 6.0}


def test_no_overlap_is_an_error_that_says_why(fitted_classifier, classifier_reports):
    report = classifier_reports["genomics"]
    attention = fitted_classifier.model.explain(fitted_classifier.test)
    report.gene_sets, sets = None, report.gene_sets
    try:
        with pytest.raises(ValueError, match="share no genomics token.*gene_sets="):
            attention_attribution_agreement(attention, report)
    finally:
        report.gene_sets = sets
    with pytest.raises(ValueError, match="no 'event' rows for modality 'clinical'"):
        attention_attribution_agreement(attention, classifier_reports["clinical"], kind="event")


@pytest.mark.parametrize("modality", ["clinical", "events", "images"])
def test_agreement_over_tokens(fitted_classifier, classifier_reports, modality):
    agreement = attention_attribution_agreement(fitted_classifier.model.explain(fitted_classifier.test),
                                                classifier_reports[modality])
    assert agreement.attrs["tokens"] == "tokens"
    assert len(agreement) == len(classifier_reports[modality].outputs)
    assert (agreement["n_tokens"] > 0).all() and agreement["spearman"].notna().any()
    assert agreement.attrs["left_out"] == {"attention_only": [], "attribution_only": []}


def test_samples_on_one_side_only_are_named_not_dropped_silently(fitted_classifier, classifier_reports):
    attention = fitted_classifier.model.explain(fitted_classifier.test)
    attribution = classifier_reports["clinical"]
    kept = attention.sample_ids[1:]
    fewer = type(attention)(attention.frame[attention.frame["sample_id"].isin(kept)])
    with pytest.warns(UserWarning, match="1 sample\\(s\\) have attribution but no attention"):
        agreement = attention_attribution_agreement(fewer, attribution)
    assert agreement.attrs["left_out"]["attribution_only"] == [attention.sample_ids[0]]
    assert attention.sample_ids[0] not in set(agreement["sample_id"])


def test_methods_and_bad_requests(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    test = test.subset(test.sample_ids[:2])
    fast = model.shap_values(test, modality="clinical", method="integrated_gradients")
    assert fast.kinds == ["attribution"] and fast.method == "integrated_gradients"
    assert model.attributions(test, modality="events").kinds == ["attribution"]
    with pytest.raises(ValueError, match="method must be"):
        shap_values(model, test, method="gradient")
    with pytest.raises(ValueError, match="method='permutation' explains the inputs"):
        attributions(model, test, modality="images", method="permutation")
    with pytest.raises(ValueError, match="baseline for 'events' must be one of"):
        attributions(model, test, modality="events", baseline="background")
    with pytest.raises(ValueError, match="modality must be one of"):
        attributions(model, test, modality="slides")
    with pytest.raises(ValueError, match="n_steps must be an integer >= 2"):
        attributions(model, test, modality="genomics", n_steps=1)
    with pytest.raises(TypeError, match="keywords of method='permutation'"):
        attributions(model, test, modality="genomics", max_evals=10)


# ------------------------------------------------------------------------------ a planted linear signal
@pytest.fixture(scope="module")
def planted():
    from clinfuse.datasets import make_synthetic_cohort
    from clinfuse.fusion import FusionModel

    cohort, truth = make_synthetic_cohort(120, modalities=("clinical", "genomics"), n_genes=12, seed=5)
    model = FusionModel(d_model=8, n_heads=1, n_layers=1, batch_size=16, max_epochs=15, lr=5e-3,
                        early_stopping_patience=None, validation_fraction=0.0, verbose=False, seed=0,
                        encoder_kwargs={"genomics": {"use_gene_sets": False}}).fit(cohort)
    return model, cohort, truth


def _mean_abs(report, kind):
    frame = report.to_frame(kinds=[kind])
    rows = frame[frame["target_class"] == "1"]
    return rows.assign(a=rows["value"].abs()).groupby("token")["a"].mean()


@pytest.mark.slow  # a 15-epoch fit, then the permutation explainer (numba compiles on first use)
def test_planted_variable_ranks_top_and_agrees_with_permutation(planted):
    from scipy.stats import spearmanr

    model, cohort, truth = planted
    sub = cohort.subset(cohort.sample_ids[:24])
    for modality in ("clinical", "genomics"):
        ig = model.attributions(sub, modality=modality, background=cohort)
        perm = model.shap_values(sub, modality=modality, background=cohort, n_background=10)
        a, b = _mean_abs(ig, "attribution"), _mean_abs(perm, "shap")
        assert spearmanr(a, b.reindex(a.index)).statistic > 0.5
        if modality == "clinical":
            assert a.idxmax() == b.idxmax() == truth.signal_variables[0]
        x = ig.to_frame().set_index(["sample_id", "token", "target_class"])["value"]
        y = perm.to_frame().set_index(["sample_id", "token", "target_class"])["value"].reindex(x.index)
        big = x.abs() > x.abs().quantile(0.75)  # the attributions that matter mostly have the same sign
        assert (np.sign(x[big]) == np.sign(y[big])).mean() > 0.8  # 0.84 with the gated PersAM genes


def test_samples_sharing_a_forward_get_their_own_attributions(fitted_classifier, classifier_reports,
                                                                monkeypatch):
    import importlib

    # the package exports the function under the module's name: reach the module itself
    module = importlib.import_module("clinfuse.fusion.explain.attributions")
    monkeypatch.setattr(module, "TABULAR_BATCH", 1)  # one sample per forward: the same numbers
    for modality in ("clinical", "genomics"):
        alone = attributions(fitted_classifier.model, fitted_classifier.test, modality=modality,
                             background=fitted_classifier.train, n_steps=32).to_frame()
        shared = classifier_reports[modality].to_frame()
        assert np.allclose(alone["value"], shared["value"], atol=1e-6)
        assert alone["token"].tolist() == shared["token"].tolist()
