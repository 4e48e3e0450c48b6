"""What ``fit`` does not spend: no attention records in training or validation, no second validation pass;
and the outputs are those of the network that builds them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clinfuse.datasets import Batch, make_synthetic_cohort
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.encoders import ENCODERS, default_encoder
from clinfuse.fusion import (
    ClassificationHead,
    FusionModel,
    FusionNetwork,
    create_aggregator,
    list_aggregators,
    training,
)
from clinfuse.fusion.aggregators import pooling
from clinfuse.fusion.aggregators.persam import model as persam_model

MODS = ("clinical", "images")
D = 16


def network(aggregator: str, *, mods, dropout: float):
    torch.manual_seed(0)
    schema = {m: random_schema(m) for m in mods}
    encoders = {m: ENCODERS.get(default_encoder(m, schema[m])).from_schema(schema[m], d_model=D)
                for m in mods}
    agg = create_aggregator(aggregator, d_model=D, modalities=list(mods), n_outputs=2, class_names=["0", "1"])
    net = FusionNetwork(encoders=encoders, aggregator=agg, head=ClassificationHead(d_model=D, n_classes=2),
                        d_model=D, modalities=mods, modality_dropout=dropout)
    return net, schema


def random_batch(schema: dict, mods, *, lengths, absent, seed: int) -> Batch:
    modalities = {m: random_modality_batch(m, schema[m], lengths=lengths, seed=seed + i,
                                           present=[b not in absent.get(m, ()) for b in range(len(lengths))])
                  for i, m in enumerate(mods)}
    ids = [f"s{b}" for b in range(len(lengths))]
    return Batch(sample_ids=ids, patient_ids=ids, modalities=modalities,
                 labels=torch.zeros(len(lengths), dtype=torch.long))


def small_cohort(task: str = "classification", n: int = 40):
    cohort, _ = make_synthetic_cohort(n, task=task, modalities=MODS, n_patches=(4, 12), feature_dim=8, seed=1)
    return cohort


def tiny(aggregator: str, **kw) -> FusionModel:
    return FusionModel(aggregator=aggregator, d_model=8, max_epochs=2, batch_size=8, verbose=False,
                       early_stopping_patience=None, **kw)


class Counter:
    """Wraps ``owner.name``, counting its calls."""

    def __init__(self, monkeypatch, owner, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def spy(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, spy)


@pytest.mark.parametrize("aggregator", ["persam", "abmil"])
def test_fit_builds_no_attention_records(monkeypatch, aggregator):
    """Training and validation steps build no records (the records' builders are never called); predicting
    still builds them (so the spies do see the calls)."""
    builders = [Counter(monkeypatch, persam_model, "persam_records"),
                Counter(monkeypatch, pooling, "token_record")]
    import clinfuse.fusion.aggregators.abmil as abmil_module

    builders.append(Counter(monkeypatch, abmil_module, "token_record"))
    cohort = small_cohort()
    model = tiny(aggregator).fit(cohort)
    assert sum(b.calls for b in builders) == 0, "fit built attention records"
    kinds = {r.kind for _, records, _ in model.iter_attention(cohort.subset(cohort.sample_ids[:4]))
             for r in records}
    assert sum(b.calls for b in builders) > 0 and kinds  # evaluation still builds them


def validation_forwards(monkeypatch) -> list[str]:
    """Patch FusionNetwork.forward to record the sample ids of every evaluation-mode forward."""
    seen: list[str] = []
    original = FusionNetwork.forward

    def spy(self, batch: Batch, **kwargs):
        if not self.training:
            seen.extend(batch.sample_ids)
        return original(self, batch, **kwargs)

    monkeypatch.setattr(FusionNetwork, "forward", spy)
    return seen


@pytest.mark.parametrize(("task", "head"), [("classification", "discrete"), ("survival", "discrete"),
                                           ("survival", "cox")])
def test_fit_runs_one_validation_pass_per_epoch_and_the_same_metrics(monkeypatch, task, head):
    """The validation samples go through the network once per epoch, never again after training, and the
    reported validation metrics are those of evaluating the fitted model on them."""
    seen = validation_forwards(monkeypatch)
    cohort = small_cohort(task)
    model = tiny("persam", task=task, survival_head=head).fit(cohort)
    n_val = len(model.validation_ids_)
    on_validation = sum(s in set(model.validation_ids_) for s in seen)  # (cox: the baseline reads train)
    assert on_validation == n_val * model.metrics_["epochs_run"], "a second validation pass after training"
    validation = cohort.subset(model.validation_ids_)
    monkeypatch.undo()
    again = model.evaluate(validation)
    for key, value in again.items():
        if key == "by_pattern" or not isinstance(value, int | float):
            continue
        np.testing.assert_allclose(model.metrics_["validation"][key], value, rtol=1e-5, atol=1e-6,
                                   err_msg=key)


def test_fit_without_known_validation_outputs_evaluates_the_validation_cohort(monkeypatch):
    """When training could not keep the best epoch's outputs (here: none is kept, as after a resume or with
    several processes), fit predicts the validation cohort once more, as before."""
    consider = training.FusionLightningModule.consider

    def without_outputs(self, val, metric, *, epoch, outputs=None):
        return consider(self, val, metric, epoch=epoch, outputs=None)

    monkeypatch.setattr(training.FusionLightningModule, "consider", without_outputs)
    seen = validation_forwards(monkeypatch)
    model = tiny("abmil").fit(small_cohort())
    n_val = len(model.validation_ids_)
    assert len(seen) == n_val * (model.metrics_["epochs_run"] + 1)
    assert model.metrics_["validation"]["n"] == n_val


@pytest.mark.parametrize("aggregator", sorted(set(list_aggregators()) - {"concat"}))
def test_outputs_without_records_are_the_outputs_with_them(aggregator):
    """``records=False`` changes nothing but the records, in evaluation and in training (same dropout)."""
    mods = ("clinical", "genomics", "images", "events")
    net, schema = network(aggregator, mods=mods, dropout=0.3)
    batch = random_batch(schema, mods, lengths=(5, 2, 9), absent={"images": [1]}, seed=2)
    for mode in (False, True):
        net.train(mode)
        torch.manual_seed(7)
        full = net(batch)
        torch.manual_seed(7)
        bare = net(batch, records=False)
        assert full.records and bare.records == []
        torch.testing.assert_close(bare.outputs, full.outputs, rtol=0, atol=0)
    assert net.aggregator.wants_records  # restored after the forward
