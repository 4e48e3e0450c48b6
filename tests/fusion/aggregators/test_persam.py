"""PersAM aggregator: the attention identities, personalisation, group balancing, instance modalities,
survival bins, linear memory, the full-attention option and bad arguments."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from clinfuse.fusion import create_aggregator
from clinfuse.fusion.aggregators.persam import PersAM
from clinfuse.fusion.heads import CoxHead, DiscreteTimeHead
from clinfuse.fusion.records import normalise_nonnegative
from clinfuse.fusion.testing import random_token_set, random_tokens

D = 16
ALL = ("clinical", "genomics", "images", "events")


def _model(modalities=ALL, n_outputs=3, seed=0, **kw) -> PersAM:
    torch.manual_seed(seed)
    kw.setdefault("dropout", 0.0)
    model = create_aggregator("persam", d_model=D, modalities=list(modalities), n_outputs=n_outputs, **kw)
    # Random group gates so that group weights are not trivially uniform (they are zero-initialised).
    with torch.no_grad():
        for layer in model.encoder.layers if model.encoder is not None else []:
            layer.gate.weight.normal_(0, 0.3)
            layer.group_bias.normal_(0, 1.0)
    return model.eval()


def _records(out):
    return {r.kind: r for r in out.records}


def _replace(tokens, modality, **changes):
    out = dict(tokens)
    out[modality] = dataclasses.replace(tokens[modality], **changes)
    return out


def test_explanatory_is_normalised_product_of_class_wise_phi_psi():
    tokens = random_token_set(ALL, d_model=D, lengths=(9, 4, 1), absent={"clinical": [2]}, seed=1)
    model = _model()
    with torch.no_grad():
        recs = _records(model(tokens))
    assert recs.keys() >= {"class_wise", "exploratory", "explanatory", "phi", "patch", "feature", "modality"}
    a, psi, phi = recs["class_wise"].raw, recs["exploratory"].raw, recs["phi"].raw  # [B,C,N] [B,1,N] [B,C,1]
    assert a.shape == (3, 3, 9) and psi.shape == (3, 1, 9) and phi.shape == (3, 3, 1)
    mask = tokens["images"].mask[:, None, :]
    expected = normalise_nonnegative(a * phi * psi, mask)
    torch.testing.assert_close(recs["explanatory"].value, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(recs["explanatory"].raw, a * phi * psi)
    for kind in ("class_wise", "exploratory", "explanatory", "patch"):
        v = recs[kind].value
        assert torch.all(v[~mask.expand_as(v)] == 0), kind
        torch.testing.assert_close(v.sum(-1), torch.ones(v.shape[:2]))
    # raw scores are exp(score - max): in (0, 1] with max exactly 1 over real instances
    assert torch.all(a.amax(-1) == 1) and torch.all(psi.amax(-1) == 1)
    torch.testing.assert_close(recs["phi"].value.sum(1), torch.ones(3, 1))
    assert recs["phi"].normalised_over == "classes" and recs["phi"].names == [["clinical"]] * 3


@pytest.mark.parametrize("how", ["model_without_clinical", "sample_without_clinical"])
def test_without_clinical_psi_phi_uniform_and_explanatory_equals_class_wise(how):
    if how == "model_without_clinical":
        model = _model(("images", "events"), n_outputs=4)
        tokens = random_token_set(("images", "events"), d_model=D, lengths=(6, 3), seed=2)
        rows = [0, 1]
    else:
        model = _model(n_outputs=4)
        tokens = random_token_set(ALL, d_model=D, lengths=(6, 3), absent={"clinical": [1]}, seed=2)
        rows = [1]
    with torch.no_grad():
        out = model(tokens)
    recs = _records(out)
    n = tokens["images"].mask.sum(1)
    for b in rows:
        torch.testing.assert_close(recs["exploratory"].value[b, 0, : n[b]],
                                   torch.full((int(n[b]),), 1 / n[b]))
        torch.testing.assert_close(recs["phi"].value[b], torch.full((4, 1), 0.25))
        assert torch.all(recs["phi"].raw[b] == 1) and torch.all(recs["exploratory"].raw[b, 0, : n[b]] == 1)
        torch.testing.assert_close(recs["explanatory"].value[b], recs["class_wise"].value[b])
    assert ("feature" in model.attention_kinds) == (how != "model_without_clinical")


def test_clinical_tokens_personalise_exploratory_attention():
    model = _model(("clinical", "images"))
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(12, 12),
                              absent={"clinical": [1]}, seed=3)
    other = tokens["clinical"].values + 2.0 * torch.randn_like(tokens["clinical"].values)
    changed = _replace(tokens, "clinical", values=other)
    with torch.no_grad():
        before, after = _records(model(tokens)), _records(model(changed))
    # sample 0 has a clinical record: a different record -> a different place to look
    diff = (before["exploratory"].value[0] - after["exploratory"].value[0]).abs().max()
    assert diff > 1e-3
    # sample 1 has no clinical record: the (masked) clinical values must not matter at all
    torch.testing.assert_close(before["exploratory"].value[1], after["exploratory"].value[1], atol=0, rtol=0)
    torch.testing.assert_close(before["explanatory"].value[1], after["explanatory"].value[1], atol=0, rtol=0)


def test_many_instances_do_not_drown_the_clinical_group():
    model = _model(("clinical", "images"), n_layers=1)
    with torch.no_grad():
        model.class_route_gate.fill_(1.0)  # an open class route: the clinical group reaches the output
    small = random_token_set(("clinical", "images"), d_model=D, lengths=(50,), seed=4)
    extra = random_tokens("images", d_model=D, lengths=(5000,), seed=5)
    big_values = torch.cat([small["images"].values, extra.values], dim=1)
    big = _replace(small, "images", values=big_values, mask=torch.ones(1, 5050, dtype=torch.bool),
                   names=[[str(i) for i in range(5050)]])
    with torch.no_grad():
        share_small = _records(model(small))["modality"].value[0, 0, 0]  # order: clinical, images
        share_big = _records(model(big))["modality"].value[0, 0, 0]
    # Plain softmax over 20 + 5050 keys would leave clinical ~ 5 / 5055 = 0.001; the group mixing keeps it.
    assert share_small > 0.05
    assert share_big > 0.5 * share_small


@pytest.mark.parametrize("modalities, instance, kind", [
    (("clinical", "genomics"), None, "gene"),
    (("clinical", "events"), None, "event"),
    (("clinical", "genomics", "events"), "events", "event"),
])
def test_genomics_or_events_as_instances(modalities, instance, kind):
    model = _model(modalities, instance_modality=instance)
    expected = instance or modalities[1]
    assert model.instance_modality == expected
    tokens = random_token_set(modalities, d_model=D, lengths=(5, 2), absent={"clinical": [1]}, seed=6)
    with torch.no_grad():
        out = model(tokens)
    recs = _records(out)
    assert kind in recs and recs[kind].modality == expected
    assert recs["explanatory"].value.shape[-1] == tokens[expected].values.shape[1]
    assert torch.isfinite(out.pooled).all() and out.pooled.shape == (2, 3, D)


def test_survival_time_bins_and_cox_risk_token():
    bins = [f"bin{k}" for k in range(6)]
    model = _model(("clinical", "images"), n_outputs=6, class_names=bins)
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(8, 3), seed=7)
    out = model(tokens)
    assert out.pooled.shape == (2, 6, D)
    assert _records(out)["explanatory"].class_names == bins
    hazards = DiscreteTimeHead(d_model=D, n_bins=6)(out.pooled)
    survival = torch.cumprod(1 - torch.sigmoid(hazards), dim=1)
    risk = -survival.sum(-1)  # the documented risk: -sum_k S(t_k)
    assert risk.shape == (2,) and torch.isfinite(risk).all()
    cox = _model(("clinical", "images"), n_outputs=1)
    assert cox.class_names == ["risk"]
    assert CoxHead(d_model=D)(cox(tokens).pooled).shape == (2,)


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
@pytest.mark.parametrize("encode_instances", [False, True])
def test_fifty_thousand_instances_train_step_is_linear_in_memory(encode_instances):
    model = _model(("clinical", "images"), n_outputs=2, n_layers=1, n_heads=2, checkpoint_above=1000,
                   encode_instances=encode_instances, instance_gate_penalty=None).train()
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(1, 50_000), seed=8)
    out = model(tokens)  # a dense 50k x 50k score matrix would need 10 GB per head: this would not run
    out.pooled.sum().backward()
    assert torch.isfinite(out.pooled).all()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    # phi gates the evidence, so it is trained, not only exported
    assert model.q_phi.weight.grad is not None and model.q_phi.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("encode_instances", [False, True])
def test_checkpointing_changes_nothing_but_memory(encode_instances):
    tokens = random_token_set(("clinical", "images", "events"), d_model=D, lengths=(30, 7), seed=9)
    grads = []
    for ckpt in (None, 0):
        model = _model(("clinical", "images", "events"), checkpoint_above=ckpt,
                       encode_instances=encode_instances).train()
        with torch.no_grad():
            model.class_route_gate.fill_(0.5)  # open the encoder's route so its gradients are compared too
        out = model(tokens)
        out.pooled.square().sum().backward()
        grads.append((out.pooled.detach(), model.q_class.weight.grad.clone(), model.group_embed.grad.clone()))
    for x, y in zip(*grads):
        torch.testing.assert_close(x, y)


def test_full_patch_attention_is_per_sample_and_batch_independent():
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(6, 300), seed=10)
    on = _model(("clinical", "images"), full_patch_attention_below=50, encode_instances=True,
                instance_gate_penalty=None)
    off = _model(("clinical", "images"), encode_instances=True, instance_gate_penalty=None)
    with torch.no_grad():
        both = on(tokens).pooled
        alone = {m: dataclasses.replace(t, values=t.values[:1, :6], mask=t.mask[:1, :6], names=t.names[:1],
                                        present=t.present[:1]) for m, t in tokens.items()}
        alone["clinical"] = dataclasses.replace(tokens["clinical"], values=tokens["clinical"].values[:1],
                                                mask=tokens["clinical"].mask[:1],
                                                names=tokens["clinical"].names[:1],
                                                present=tokens["clinical"].present[:1])
        torch.testing.assert_close(on(alone).pooled[0], both[0], atol=1e-5, rtol=1e-5)
        # the small bag (6 < 50) uses instance-to-instance attention, the big one (300) does not
        assert (both[0] - off(tokens).pooled[0]).abs().max() > 1e-4
        torch.testing.assert_close(both[1], off(tokens).pooled[1], atol=1e-5, rtol=1e-5)
        perm = torch.randperm(6)
        permuted = {**alone,
                    "images": dataclasses.replace(alone["images"], values=alone["images"].values[:, perm])}
        torch.testing.assert_close(on(permuted).pooled, on(alone).pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs, error", [
    ({"instance_modality": "pixels"}, ValueError),
    ({"instance_modality": "clinical"}, ValueError),
    ({"instance_modality": "events", "modalities": ["clinical", "images"]}, ValueError),
    ({"modalities": ["clinical"]}, ValueError),
    ({"modalities": ["images", "scans"]}, ValueError),
    ({"modalities": "images"}, TypeError),
    ({"n_outputs": 0}, ValueError),
    ({"d_model": 18, "n_heads": 4}, ValueError),
    ({"class_names": ["a", "b"]}, ValueError),
    ({"n_latents": -1}, ValueError),
    ({"dropout": 1.5}, ValueError),
    ({"full_patch_attention_below": 10}, ValueError),  # acts inside the encoder: needs encode_instances
    ({"private_instances": False}, ValueError),
    ({"encode_instances": 1}, TypeError),
    ({"gate_class_route": "yes"}, TypeError),
    ({"modality_logits": 1}, TypeError),
    ({"center_evidence": 1}, TypeError),
    ({"instance_gate_penalty": -0.1}, ValueError),
    ({"instance_gate_penalty": "0.1"}, TypeError),
])
def test_bad_arguments_raise(kwargs, error):
    args = {"d_model": D, "modalities": ["clinical", "images"], "n_outputs": 3, **kwargs}
    with pytest.raises(error):
        create_aggregator("persam", **args)


def test_bad_tokens_raise_with_the_modality_named():
    model = _model(("clinical", "images"))
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(3,), seed=11)
    with pytest.raises(ValueError, match="events"):
        model({**tokens, "events": random_tokens("events", d_model=D, lengths=(3,))})
    with pytest.raises(ValueError, match="images"):
        model({**tokens, "images": random_tokens("images", d_model=D + 1, lengths=(3,))})


def test_by_default_the_bag_skips_the_encoder_and_the_class_route_opens_from_zero():
    """Default: the encoder sees an empty instance group, the scores read the encoders' instance tokens, and
    the class tokens start as constants (gate 0) that the gate's gradient then opens."""
    model = _model(("clinical", "images"), n_outputs=2).train()
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(4, 40), seed=12)
    seen = []
    hook = model.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0][0].shape[1]))
    out = model(tokens)
    hook.remove()
    assert seen == [0]  # the instance group given to the encoder is empty
    assert model.class_route_gate.item() == 0.0
    with torch.no_grad():  # gate 0: the encoder does not change the output yet
        for p in model.encoder.parameters():
            p.add_(torch.randn_like(p))
        torch.testing.assert_close(model.eval()(tokens).pooled, model(tokens).pooled)
    model.train()
    model(tokens).pooled.square().sum().backward()
    assert model.class_route_gate.grad is not None and model.class_route_gate.grad.abs() > 0
    # the encoded variant scores the encoder's outputs: its instance tokens differ from the inputs
    encoded = _model(("clinical", "images"), n_outputs=2, encode_instances=True,
                     instance_gate_penalty=None).eval()
    plain = _model(("clinical", "images"), n_outputs=2, instance_gate_penalty=None).eval()
    with torch.no_grad():
        assert (encoded(tokens).pooled - plain(tokens).pooled).abs().max() > 1e-4
    assert out.pooled.shape == (2, 2, D)  # two samples (bags of 4 and 40), two class tokens


def test_modality_weights_follow_the_class_route_gate():
    """With the gate closed the other modalities do not move the output, and their modality weight is ~0;
    opened, they get a share."""
    mods = ("clinical", "images", "events")
    model = _model(mods, n_outputs=2)
    tokens = random_token_set(mods, d_model=D, lengths=(6, 30), seed=13)
    noisy = _replace(tokens, "events", values=torch.randn_like(tokens["events"].values) * 5)
    with torch.no_grad():
        torch.testing.assert_close(model(noisy).pooled, model(tokens).pooled, atol=0, rtol=0)
        closed = _records(model(tokens))["modality"].value[:, 0]  # order: clinical, images, events
        model.class_route_gate.fill_(1.0)
        opened = _records(model(tokens))["modality"].value[:, 0]
        assert (model(noisy).pooled - model(tokens).pooled).abs().max() > 1e-4
    assert torch.allclose(closed[:, 1], torch.ones(2)) and closed[:, [0, 2]].max() < 1e-6
    assert (opened[:, [0, 2]] > 0.01).all()
    torch.testing.assert_close(opened.sum(1), torch.ones(2))


def test_modality_logits_are_exact_linear_terms_and_their_exports():
    """The modality logit terms: 0 at the start (token weights uniform), then output offsets equal to
    sum_k <r_c, u_k> over the present clinical tokens plus mean_j <r^events_c, z_j> over the present event
    tokens, exactly linear in the tokens, with feature / event raw = |each token's share|."""
    mods = ("clinical", "images", "events")
    model = _model(mods, n_outputs=2)
    assert model.attention_kinds >= {"feature", "event", "patch"}
    tokens = random_token_set(mods, d_model=D, lengths=(5, 12, 7),
                              absent={"clinical": [2], "events": [1]}, seed=14)
    clin, ev = tokens["clinical"], tokens["events"]
    with torch.no_grad():
        out = model(tokens)
        assert torch.all(out.offsets == 0) and out.offsets.shape == (3, 2)
        feature = _records(out)["feature"]
        real = clin.mask[:, None, :].expand_as(feature.value)
        torch.testing.assert_close(feature.value[real],
                                   (1.0 / clin.mask.sum(1))[:, None, None].expand_as(real)[real])
        for readout in model.readouts.values():
            readout.weight.normal_()
        r, q = model.readouts["clinical"].weight, model.readouts["events"].weight  # [C, d]
        out = model(tokens)
        share = torch.einsum("bkd,cd->bck", clin.values * clin.mask[..., None], r)  # [B, C, K]
        n_ev = ev.mask.sum(1, keepdim=True).clamp_min(1)
        ev_share = torch.einsum("bjd,cd->bcj", ev.values * (ev.mask / n_ev)[..., None], q)
        torch.testing.assert_close(out.offsets, share.sum(-1) + ev_share.sum(-1))
        recs = _records(out)
        assert recs["event"].modality == "events" and recs["event"].class_names == ["0", "1"]
        torch.testing.assert_close(recs["feature"].raw, share.abs() * clin.mask[:, None, :])
        torch.testing.assert_close(recs["event"].raw, ev_share.abs() * ev.mask[:, None, :])
        torch.testing.assert_close(recs["feature"].value.sum(-1)[[0, 1]], torch.ones(2, 2))
        torch.testing.assert_close(recs["event"].value.sum(-1)[[0, 2]], torch.ones(2, 2))
        for kind, tok in (("feature", clin), ("event", ev)):
            assert torch.all(recs[kind].value[~tok.mask[:, None, :].expand_as(recs[kind].value)] == 0), kind
        # linear: moving one clinical token by delta moves output c by exactly <r_c, delta>
        delta = torch.zeros_like(clin.values)
        delta[0, 1] = torch.randn(D)
        moved = model(_replace(tokens, "clinical", values=clin.values + delta)).offsets
        torch.testing.assert_close(moved - out.offsets, torch.einsum("bkd,cd->bc", delta, r))
        # without the terms: no offsets, no event kind, and the feature export describes the class route again
        route = _model(mods, n_outputs=2, modality_logits=False)
        out = route(tokens)
        assert out.offsets is None and route.readouts is None and "event" not in route.attention_kinds
        torch.testing.assert_close(_records(out)["feature"].value.sum(-1)[[0, 1]], torch.ones(2, 2))


def test_exported_shares_are_measured_against_the_training_mean_token():
    """After training-mode passes, a token equal to the running-mean (reference) token has share 0, the
    outputs do not depend on the reference, and a saved state dict restores it into a fresh model."""
    mods = ("clinical", "images", "events")
    model = _model(mods, n_outputs=2)
    tokens = random_token_set(mods, d_model=D, lengths=(5, 12, 7), seed=15)
    with torch.no_grad():
        for readout in model.readouts.values():
            readout.weight.normal_()
        before = model(tokens).offsets
        assert model.reference_clinical.shape == (0, D)  # nothing seen yet
        model.train()(tokens)
        model.eval()
        clin = tokens["clinical"]
        ref = model.reference_clinical
        assert ref.shape == (clin.values.shape[1], D) and model.reference_events.shape == (1, D)
        expected = (clin.values * clin.mask[..., None]).sum(0) / clin.mask.sum(0).clamp_min(1)[:, None]
        torch.testing.assert_close(ref, expected)  # first batch: its mean per variable
        out = model(tokens)
        torch.testing.assert_close(out.offsets, before)  # predictions never depend on the reference
        at_mean = _replace(tokens, "clinical", values=ref.expand_as(clin.values).clone())
        feature = _records(model(at_mean))["feature"]
        assert feature.raw.abs().max() < 1e-5  # every variable at its average: no share
        shares = torch.einsum("bkd,cd->bck", (clin.values - ref) * clin.mask[..., None],
                              model.readouts["clinical"].weight)
        torch.testing.assert_close(_records(out)["feature"].raw, shares.abs() * clin.mask[:, None, :])
        fresh = _model(mods, n_outputs=2, seed=3)
        fresh.load_state_dict(model.state_dict())
        torch.testing.assert_close(fresh.reference_clinical, ref)
        torch.testing.assert_close(_records(fresh(tokens))["feature"].raw, _records(out)["feature"].raw)


def test_ffn_mult_sets_the_instance_feed_forward_width():
    model = _model(("clinical", "images"), n_layers=1, n_heads=2, ffn_mult=2)
    assert model.encoder.layers[0].ffn_large[0].out_features == 2 * model.d_model
    assert PersAM.sample_figure == "persam"


def test_instance_gate_starts_closed_opens_on_gradient_and_is_penalised():
    """The instance evidence reaches the pooled vectors through a gate g that starts at 0 (the bag changes
    nothing at first), gets a gradient, and costs ``instance_gate_penalty * |g|`` in the training loss."""
    model = _model(("clinical", "images"), n_outputs=2, instance_gate_penalty=0.05).train()
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(4, 40), seed=21)
    other = dict(tokens, images=random_tokens("images", d_model=D, lengths=(4, 40), seed=99))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(tokens).pooled, model(other).pooled)  # g = 0
    model.train()
    model(tokens).pooled.square().sum().backward()
    assert model.instance_gate.grad is not None and model.instance_gate.grad.abs() > 0
    with torch.no_grad():
        model.instance_gate.fill_(-2.0)
    assert model.penalty_loss().item() == pytest.approx(0.1)
    model.eval()
    with torch.no_grad():
        assert (model(tokens).pooled - model(other).pooled).abs().max() > 1e-4  # open: the bag counts
    assert _model(("clinical", "images"), instance_gate_penalty=None).penalty_loss() is None


def test_centred_evidence_an_average_bag_adds_nothing_and_an_absent_one_exactly_nothing():
    """``center_evidence``: the running mean of the weighted bag is subtracted, so the same bag for every
    sample adds (after training on it) nothing; a sample without instances gets exactly 0, not -mean."""
    model = _model(("clinical", "images"), n_outputs=2, instance_gate_penalty=None).train()
    tokens = random_token_set(("clinical", "images"), d_model=D, lengths=(4, 4), seed=23)
    same = tokens["images"].values[:1].expand_as(tokens["images"].values)
    tokens["images"] = dataclasses.replace(tokens["images"], values=same.contiguous())
    clin = tokens["clinical"]
    tokens["clinical"] = dataclasses.replace(clin, values=clin.values[:1].expand_as(clin.values).contiguous())
    model(tokens)  # the first training batch sets the reference
    assert int(model.reference_evidence_batches) == 1
    model.eval()
    with torch.no_grad():
        state = model(tokens).extras["persam"]
        assert state.evidence.abs().max() < 1e-5
        absent = dict(tokens, images=dataclasses.replace(
            tokens["images"], mask=torch.zeros_like(tokens["images"].mask),
            present=torch.zeros_like(tokens["images"].present)))
        assert model(absent).extras["persam"].evidence.abs().max() == 0.0
    old = _model(("clinical", "images"), n_outputs=2, center_evidence=False)
    assert "reference_evidence" not in old.state_dict()
