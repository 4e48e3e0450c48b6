"""FusionNetwork (real encoders), token-type embeddings, modality dropout, and training beyond chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from clinfuse.datasets import Batch, Preprocessor, make_loader, make_synthetic_cohort
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.encoders import ENCODERS, default_encoder
from clinfuse.fusion import (
    ClassificationHead,
    CoxHead,
    DiscreteTimeHead,
    FusionNetwork,
    TokenTypeEmbedding,
    classification_loss,
    create_aggregator,
    discrete_time_nll,
    hazards_to_survival,
    list_aggregators,
    make_time_bins,
    risk_from_survival,
)
from clinfuse.fusion.testing import random_token_set

MODS = ("clinical", "genomics", "images", "events")
D = 16



def encoders_for(schema: dict, mods) -> dict:
    return {m: ENCODERS.get(default_encoder(m, schema[m])).from_schema(schema[m], d_model=D) for m in mods}


def random_batch(schema: dict, mods, *, lengths=(5, 2, 9), absent=None, seed: int = 0) -> Batch:
    absent = absent or {}
    modalities = {}
    for i, m in enumerate(mods):
        present = [b not in absent.get(m, ()) for b in range(len(lengths))]
        modalities[m] = random_modality_batch(m, schema[m], lengths=lengths, present=present, seed=seed + i)
    B = len(lengths)
    ids = [f"s{b}" for b in range(B)]
    return Batch(sample_ids=ids, patient_ids=ids, modalities=modalities,
                 labels=torch.zeros(B, dtype=torch.long))


def network(aggregator: str = "hierarchical", head=None, *, mods=MODS, n_outputs: int = 2,
            dropout: float = 0.0):
    torch.manual_seed(0)
    schema = {m: random_schema(m) for m in mods}
    agg = create_aggregator(aggregator, d_model=D, modalities=list(mods), n_outputs=n_outputs,
                            class_names=[str(i) for i in range(n_outputs)])
    head = head or ClassificationHead(d_model=D, n_classes=n_outputs)
    net = FusionNetwork(encoders=encoders_for(schema, mods), aggregator=agg, head=head, d_model=D,
                        modalities=mods,
                        modality_dropout=dropout)
    return net, schema


@pytest.mark.parametrize("name", list_aggregators())
def test_forward_with_real_encoders_every_aggregator(name):
    net, schema = network(name, n_outputs=3)
    batch = random_batch(schema, MODS, absent={"images": [1], "genomics": [0, 2]})
    out = net.eval()(batch)
    assert out.outputs.shape == (3, 3) and torch.isfinite(out.outputs).all()
    assert {r.kind for r in out.records} == set(net.aggregator.attention_kinds)
    net.train()(batch).outputs.sum().backward()


@pytest.mark.parametrize("head, shape", [
    (lambda: DiscreteTimeHead(d_model=D, n_bins=4), (3, 4)),
    (lambda: CoxHead(d_model=D), (3,)),
])
def test_survival_heads_output_shapes(head, shape):
    n_out = shape[1] if len(shape) == 2 else 1
    net, schema = network("self_attention", head=head(), n_outputs=n_out)
    out = net.eval()(random_batch(schema, MODS))
    assert out.outputs.shape == shape and torch.isfinite(out.outputs).all()


def test_modality_dropout_never_drops_every_modality_and_leaves_eval_alone():
    net, _ = network("hierarchical", dropout=0.8)
    tokens = random_token_set(MODS, d_model=D, lengths=[3] * 200, absent={"images": list(range(0, 200, 4))})
    before = torch.stack([tokens[m].mask.any(dim=1) for m in MODS], dim=1)
    net.train()
    torch.manual_seed(1)
    dropped = net.drop_modalities(tokens)
    after = torch.stack([dropped[m].mask.any(dim=1) for m in MODS], dim=1)
    assert after.any(dim=1).all(), "a sample lost every modality"
    assert not (after & ~before).any(), "dropout made an absent modality present"
    rate = 1 - after.sum().item() / before.sum().item()
    assert 0.55 < rate < 0.8  # about p, a little less because one modality per sample is always kept
    for m in MODS:
        assert torch.equal(dropped[m].present, tokens[m].present & after[:, MODS.index(m)])
    net.eval()
    assert all(torch.equal(net.drop_modalities(tokens)[m].mask, tokens[m].mask) for m in MODS)


def test_eval_output_is_deterministic_and_unaffected_by_dropout_rate():
    net, schema = network("self_attention", dropout=0.5)
    batch = random_batch(schema, MODS)
    net.eval()
    a = net(batch).outputs
    net.modality_dropout = 0.0
    torch.testing.assert_close(net(batch).outputs, a)


def test_network_bad_arguments():
    schema = {m: random_schema(m) for m in ("clinical", "images")}
    encs = encoders_for(schema, ("clinical", "images"))
    agg = create_aggregator("abmil", d_model=D, modalities=["clinical", "images"], n_outputs=2)
    head = ClassificationHead(d_model=D, n_classes=2)
    with pytest.raises(ValueError, match="missing \\['images'\\]"):
        FusionNetwork(encoders={"clinical": encs["clinical"]}, aggregator=agg, head=head, d_model=D,
                      modalities=("clinical", "images"))
    with pytest.raises(ValueError, match="modality_dropout"):
        FusionNetwork(encoders=encs, aggregator=agg, head=head, d_model=D, modalities=("clinical", "images"),
                      modality_dropout=1.0)
    with pytest.raises(ValueError, match="unknown modalities"):
        FusionNetwork(encoders=encs, aggregator=agg, head=head, d_model=D, modalities=("clinical", "xray"))
    net = FusionNetwork(encoders=encs, aggregator=agg, head=head, d_model=D,
                        modalities=("clinical", "images"))
    batch = random_batch(schema, ("clinical",))
    with pytest.raises(ValueError, match="lacks modalities \\['images'\\]"):
        net(batch)
    with pytest.raises(TypeError, match="Batch"):
        net({"clinical": None})


def test_token_type_embedding_adds_one_vector_per_modality():
    torch.manual_seed(0)
    emb = TokenTypeEmbedding(d_model=D, modalities=MODS)
    tokens = random_token_set(MODS, d_model=D, lengths=(4, 2))
    out = emb(tokens)
    for i, m in enumerate(MODS):
        diff = out[m].values - tokens[m].values
        torch.testing.assert_close(diff, emb.type_embedding[i].expand_as(diff))
        assert out[m].mask is tokens[m].mask and out[m].names is tokens[m].names
    assert not torch.allclose(emb.type_embedding[0], emb.type_embedding[1])
    with pytest.raises(ValueError, match="unknown modalities"):
        TokenTypeEmbedding(d_model=D, modalities=("clinical", "xray"))
    with pytest.raises(ValueError, match="'genomics'"):
        TokenTypeEmbedding(d_model=D, modalities=("clinical",))(tokens)
    with pytest.raises(ValueError, match="divisible by 4"):
        TokenTypeEmbedding(d_model=10, modalities=MODS, patch_coords=True)


def test_token_type_optional_segment_and_coordinate_terms():
    torch.manual_seed(0)
    emb = TokenTypeEmbedding(d_model=D, modalities=MODS, event_segments=True, patch_coords=True)
    tokens = random_token_set(MODS, d_model=D, lengths=(4, 2))
    tokens["events"].meta["segments"] = torch.tensor([[0, 0, 1, 9], [0, 1, 0, 0]])
    tokens["images"].meta["coords"][0, 0] = float("nan")
    out = emb(tokens)
    ev = out["events"].values - tokens["events"].values - emb.type_embedding[3]
    torch.testing.assert_close(ev[0, 2], emb.segment_embedding.weight[1])
    torch.testing.assert_close(ev[0, 3], emb.segment_embedding.weight[7])  # clipped to the last segment
    im = out["images"].values - tokens["images"].values - emb.type_embedding[2]
    assert im[0, 0].abs().max() < 1e-6  # unknown coordinates add nothing
    assert im[0, 1].abs().max() > 1e-2
    # the encoders' one 2-D sin-cos encoding, coordinates in units of coord_scale
    from clinfuse.encoders.common import sincos_2d

    want = sincos_2d(tokens["images"].meta["coords"], D, scale=1 / emb.coord_scale)
    torch.testing.assert_close(im, want, atol=1e-6, rtol=0)


def test_default_explain_returns_the_records_and_training_skips_it():
    """``Aggregator.explain`` defaults to the aggregator's own records; the network calls it outside
    training only."""
    net, schema = network("abmil", mods=("clinical", "images"))
    batch = random_batch(schema, ("clinical", "images"), lengths=(3, 5), seed=1)
    calls = []
    original = type(net.aggregator).explain

    def spy(self, output, head):
        calls.append(head)
        return original(self, output, head)

    net.aggregator.explain = spy.__get__(net.aggregator)
    net.eval()
    with torch.no_grad():
        out = net(batch)
    assert calls == [net.head] and [r.kind for r in out.records] == ["patch"]
    net.train()
    net(batch)
    assert len(calls) == 1
    assert type(net.aggregator).sample_figure == "patches"


# --------------------------------------------------------------------------- training on the synthetic cohort


def synthetic(task: str):
    mods = ("clinical", "images")
    cohort, _ = make_synthetic_cohort(240, task=task, modalities=mods, n_patches=(8, 24),
                                      feature_dim=16, seed=0)
    ids = cohort.sample_ids
    train, test = cohort.subset(ids[:160]), cohort.subset(ids[160:])
    pre = Preprocessor().fit(train)
    return mods, train, test, pre


def fit(net, loader, loss_fn, *, epochs: int) -> None:
    torch.manual_seed(0)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    net.train()
    for _ in range(epochs):
        for batch in loader:
            loss = loss_fn(net(batch).outputs, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()


@pytest.mark.parametrize("name", ["hierarchical", "self_attention"])
def test_trains_better_than_chance_on_synthetic_classification(name):
    from sklearn.metrics import roc_auc_score

    mods, train, test, pre = synthetic("classification")
    torch.manual_seed(0)
    agg = create_aggregator(name, d_model=D, modalities=list(mods), n_outputs=2, class_names=["0", "1"])
    net = FusionNetwork(encoders=encoders_for(pre.schema_, mods), aggregator=agg,
                        head=ClassificationHead(d_model=D, n_classes=2), d_model=D, modalities=mods,
                        modality_dropout=0.1)
    loader = make_loader(train, pre, batch_size=16, shuffle=True, train=True, seed=0)
    fit(net, loader, lambda out, b: classification_loss(out, b.labels), epochs=4)
    probs, labels = [], []
    with torch.no_grad():
        for batch in make_loader(test, pre, batch_size=40):
            probs.append(torch.softmax(net(batch).outputs, dim=-1)[:, 1])
            labels.append(batch.labels)
    auc = roc_auc_score(torch.cat(labels).numpy(), torch.cat(probs).numpy())
    assert auc > 0.65, f"{name}: held-out AUC {auc:.3f}"


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_discrete_time_survival_trains_better_than_chance():
    from lifelines.utils import concordance_index

    mods, train, test, pre = synthetic("survival")
    surv = train.survival
    edges = make_time_bins(surv["time"].to_numpy(), surv["event"].to_numpy(), 4)
    torch.manual_seed(0)
    agg = create_aggregator("hierarchical", d_model=D, modalities=list(mods), n_outputs=4,
                            class_names=[f"bin{k}" for k in range(4)])
    net = FusionNetwork(encoders=encoders_for(pre.schema_, mods), aggregator=agg,
                        head=DiscreteTimeHead(d_model=D, n_bins=4), d_model=D, modalities=mods)
    loader = make_loader(train, pre, batch_size=16, shuffle=True, train=True, seed=0)
    # the survival signal is noisier (exponential times, 30% censored): a few more epochs than classification
    fit(net, loader, lambda out, b: discrete_time_nll(out, b.time, b.event, edges), epochs=9)
    risks, times, events = [], [], []
    with torch.no_grad():
        for batch in make_loader(test, pre, batch_size=40):
            risks.append(risk_from_survival(hazards_to_survival(net(batch).outputs)))
            times.append(batch.time)
            events.append(batch.event)
    t, e, r = (torch.cat(x).numpy() for x in (times, events, risks))
    cindex = concordance_index(t, -r, e)  # lifelines: higher score = longer survival
    assert cindex > 0.6, f"held-out c-index {cindex:.3f}"
    assert np.isfinite(r).all()


def test_persam_modality_weights_are_measured_on_the_outputs():
    """In evaluation, PersAM's modality record is rebuilt from the head's exact split of the scores: the
    instance evidence, the class route (by group weights) and each modality's logit term, in logits."""
    net, schema = network("persam", mods=MODS)
    net.eval()
    batch = random_batch(schema, MODS, lengths=(5, 3, 9), absent={"images": [1], "events": [2]}, seed=3)
    with torch.no_grad():
        net.aggregator.instance_gate.fill_(1.0)  # open the instance gate (it starts closed)
        closed = {r.kind: r for r in net(batch).records}["modality"]
        # terms and class-route gate at 0 (untrained): only the image evidence reaches the outputs
        names = closed.names[0]
        i_img, i_ev = names.index("images"), names.index("events")
        torch.testing.assert_close(closed.value[[0, 2], 0, i_img], torch.ones(2))
        torch.testing.assert_close(closed.value.sum(-1), torch.ones(3, 1))
        assert closed.value[1, 0, i_img] == 0  # no bag: no image weight
        net.aggregator.readouts["events"].weight.normal_(0, 5.0)
        out = net(batch)
        opened = {r.kind: r for r in out.records}["modality"]
        assert sum(r.kind == "modality" for r in out.records) == 1
        agg = net.aggregator(net.drop_modalities(net.token_types(net.encode(batch))))
        ev_share = {r.kind: r for r in agg.records}["event"]
        assert (opened.value[[0, 1], 0, i_ev] > 0.05).all() and opened.value[2, 0, i_ev] == 0  # events absent
        torch.testing.assert_close(opened.value.sum(-1), torch.ones(3, 1))
        # the events' raw weight is the class mean of |its logit term| (no class route: the gate is 0)
        term = agg.offsets  # only the events term is non-zero
        torch.testing.assert_close(opened.raw[:, 0, i_ev], term.abs().mean(1))
        assert ev_share.raw.shape[1] == 2
    net.train()  # training skips the split: the aggregator's own record is kept
    assert sum(r.kind == "modality" for r in net(batch).records) == 1
