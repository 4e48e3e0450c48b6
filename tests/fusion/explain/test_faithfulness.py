"""Faithfulness of the explanations on the synthetic cohort's planted ground truth (issue 6).

One PersAM model (library defaults, a small-batch recipe) is trained once per module on a 400-patient
synthetic cohort (clinical + images, fixed seed) and checked on its 120 held-out patients against what the
generator planted (``datasets/synthetic.py``):

* planted patches: explanatory attention ranks the evidence patches (``truth.relevant_patches``) above the
  others; the per-patient AUROC, *median over held-out patients* with both kinds of patch, is >= 0.9;
* planted clinical variables: ``biomarker_level`` is among the top 3 clinical variables by ``feature``
  attention and by |SHAP| for a majority of the held-out patients who carry its signal (clinical record
  present and the biomarker at least one sd away from its mean, so that it moves the outcome); it reaches
  the prediction through PersAM's clinical logit term (one of its modality logit terms), which the
  ``feature`` kind describes; the rule variable ``marker_status`` is in the top 3 by |SHAP| for a majority
  of those with an image bag;
* deletion: removing a patient's top 10% patches by attention moves the predicted probability on
  average at least 2x more than removing a random 10% (mean over 5 random draws per patient);
* personalisation: for the same image bag, the exploratory attention mass on type-A patches is larger
  with ``marker_status = "positive"`` than with ``"negative"`` for a majority of patients.

The metrics are :mod:`clinfuse.fusion.explain.faithfulness`, with the recipe (``MODEL_PARAMS``,
``COHORT_PARAMS``) that the benchmark shares. The issue's thresholds are asserted unchanged. The measured
figures are printed (``pytest -s``); ``benchmarks/bench_faithfulness.py`` runs the same checks over cohort
sizes and seeds, for persam, the earlier encoded persam and abmil.
Training recipe: batch 4 (more optimiser steps than the default 16, which the attention needs to learn the
rule), up to 30 epochs with patience 10; about 30 s of CPU. 400 patients, not 200: with 140 training
patients the rule is learned on most seeds but not all (``benchmarks/bench_faithfulness.py`` reports both
sizes over five seeds).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from clinfuse.datasets import make_synthetic_cohort, train_validation_split
from clinfuse.fusion import FusionModel
from clinfuse.fusion.explain.faithfulness import (
    COHORT_PARAMS,
    MODEL_PARAMS,
    deletion_effects,
    planted_patch_auroc,
    signal_carriers,
    top3_share,
    type_a_mass,
)
from clinfuse.fusion.explain.shap import shap_values

SEED = 0
SIGNAL = "biomarker_level"


# ----------------------------------------------------------------------------------------------- fixture
def fit_on_planted_cohort(seed: int = SEED, *, kinds: list[str] | None = None,
                          **overrides) -> SimpleNamespace:
    """The synthetic cohort of ``seed``, a model (``MODEL_PARAMS`` with ``overrides``) fitted on 70% of it
    and the report of its attention (``kinds``, default all) on the held-out 30%."""
    cohort, truth = make_synthetic_cohort(**{**COHORT_PARAMS, "seed": seed})
    train_ids, test_ids = train_validation_split(cohort, fraction=0.3, seed=seed)
    model = FusionModel(**{**MODEL_PARAMS, "seed": seed, **overrides}).fit(cohort.subset(train_ids))
    test = cohort.subset(test_ids)
    report = model.explain(test, kinds=kinds).to_frame()
    return SimpleNamespace(cohort=cohort, truth=truth, model=model, test=test, report=report)


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return fit_on_planted_cohort()


# ----------------------------------------------------------------------------------------------- checks
pytestmark = pytest.mark.slow  # every check reads the 400-patient training


def test_model_learns_the_outcome(trained):
    auc = trained.model.score(trained.test)
    print(f"held-out AUC {auc:.3f}")
    assert auc > 0.7  # a sanity floor: attention of a model that learned nothing would mean nothing


def test_explanatory_attention_ranks_planted_patches(trained):
    """Explanatory attention averaged over the classes (the ``patch`` kind); that of the predicted class
    (what justifies the prediction) is printed too."""
    aurocs = planted_patch_auroc(trained.report, trained.truth, kind="explanatory")
    predicted = planted_patch_auroc(trained.report, trained.truth, kind="explanatory",
                                    target=trained.model.predict(trained.test))
    median = float(np.median(list(aurocs.values())))
    print(f"planted-patch AUROC (explanatory, class-averaged, median over {len(aurocs)} held-out patients) "
          f"{median:.3f}; of the predicted class {np.median(list(predicted.values())):.3f}")
    assert len(aurocs) >= 30
    assert median >= 0.9


def test_planted_clinical_variable_is_top3_by_attention(trained):
    t = trained
    assert t.truth.signal_variables == [SIGNAL]
    carriers = signal_carriers(t.cohort, list(t.test.sample_ids), variable=SIGNAL)
    assert len(carriers) >= 10
    feature = t.report[(t.report["kind"] == "feature") & (t.report["modality"] == "clinical")]
    share_att = top3_share(feature, carriers, variable=SIGNAL)
    gate = t.model.network_.aggregator.class_route_gate.item()
    print(f"{SIGNAL} in top 3 by attention for {share_att:.2f} of {len(carriers)} signal carriers "
          f"(class-route gate {gate:.4f})")
    assert share_att > 0.5


@pytest.fixture(scope="module")
def carrier_shap(trained):
    """|SHAP| over the clinical variables for the first 12 held-out signal carriers (one explainer run)."""
    carriers = signal_carriers(trained.cohort, list(trained.test.sample_ids), variable=SIGNAL)[:12]
    assert len(carriers) >= 10
    frame = shap_values(trained.model, trained.test.subset(carriers), modality="clinical",
                        background=trained.test, n_background=10).to_frame()
    return carriers, frame


def test_planted_clinical_variable_is_top3_by_shap(carrier_shap):
    carriers, frame = carrier_shap
    share_shap = top3_share(frame, carriers, variable=SIGNAL)
    print(f"{SIGNAL} in top 3 by |SHAP| for {share_shap:.2f} of {len(carriers)} signal carriers")
    assert share_shap > 0.5


def test_rule_variable_is_top3_by_shap(trained, carrier_shap):
    """The other planted clinical variable: ``marker_status`` decides which patches are evidence, so a model
    that learned the rule depends on it for every patient with an image bag."""
    carriers, frame = carrier_shap
    with_images = [s for s in carriers if trained.test.has(s, "images")]
    assert len(with_images) >= 8
    share = top3_share(frame, with_images, variable=trained.truth.rule_variable)
    print(f"{trained.truth.rule_variable} in top 3 by |SHAP| for {share:.2f} of {len(with_images)} patients")
    assert share > 0.5


def test_deleting_top_attention_patches_moves_the_prediction_more_than_random(trained):
    d_top, d_rand = deletion_effects(trained.model, trained.test, trained.report, kind="explanatory")
    print(f"deletion of 10% patches: top-attention mean |dP| {d_top:.4f}, random {d_rand:.4f}")
    assert d_top >= 2.0 * d_rand
    assert d_top > 0.01  # a real effect, not two rounding errors


def test_flipping_the_marker_moves_exploratory_attention(trained):
    t = trained
    samples = [s for s in t.test.sample_ids if t.test.has(s, "clinical") and t.test.has(s, "images")
               and (t.truth.patch_type[s] == 1).any()]
    pos = type_a_mass(t.model, t.test, t.truth, samples, "positive", kind="exploratory")
    neg = type_a_mass(t.model, t.test, t.truth, samples, "negative", kind="exploratory")
    moved = float((pos > neg).mean())
    print(f"exploratory mass on type-A patches: positive {pos.mean():.3f}, negative {neg.mean():.3f}; "
          f"higher when positive for {moved:.2f} of {len(samples)} patients")
    assert moved > 0.5
    assert pos.mean() > neg.mean()


def test_attention_that_finds_the_planted_patches_is_not_flagged_uniform(trained):
    """The spread flag (``explain.spread``) on attention that does carry the planted evidence: few held-out
    patients are flagged, while the same network freshly initialised is flagged for nearly all."""
    from clinfuse.fusion.explain.spread import attention_spread, untrained_copy, untrained_null

    null = untrained_null(trained.model, trained.test, seed=1000)
    rows = attention_spread(trained.report, null=null).query("kind == 'explanatory'")
    fresh = attention_spread(untrained_copy(trained.model, seed=1).explain(trained.test), null=null)
    fresh = fresh.query("kind == 'explanatory'")
    print(f"explanatory flagged uniform: trained {rows['uniform'].mean():.3f} (median N_eff/N "
          f"{rows['ratio'].median():.3f}), untrained {fresh['uniform'].mean():.3f}")
    assert rows["uniform"].astype(bool).mean() <= 0.2 and rows["ratio"].median() < 0.8
    assert fresh["uniform"].astype(bool).mean() >= 0.8
