"""The network's passes over a large bag: the token type folded into the feature-bag encoder or added in
place, and PersAM's instance group embedding applied to its scores; each gives the plain computation."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from clinfuse.datasets.testing import random_modality_batch
from clinfuse.encoders.images import FeatureBagEncoder
from clinfuse.fusion import TokenTypeEmbedding
from clinfuse.fusion.aggregators.persam import PersAM
from clinfuse.fusion.testing import random_token_set

from .test_network import network, random_batch

FEAT = {"kind": "features", "feature_dim": 12}


@pytest.mark.parametrize("train", [False, True])
def test_feature_bag_offset_is_the_plain_addition(train: bool) -> None:
    torch.manual_seed(0)
    enc = FeatureBagEncoder.from_schema(FEAT, d_model=8, dropout=0.3).train(train)
    enc.chunk_rows, enc.norm_rows = 3, 2  # several chunks and LayerNorm blocks, the last ones partial
    batch = random_modality_batch("images", FEAT, lengths=[7, 2, 0], present=[True, True, False], seed=5)
    offset = torch.randn(8)
    for grad in (False, True):
        with torch.set_grad_enabled(grad):
            torch.manual_seed(1)
            plain = enc(batch).values + offset
            torch.manual_seed(1)  # the same dropout draws
            folded = enc(batch, offset=offset).values
        torch.testing.assert_close(folded, plain, atol=1e-6, rtol=1e-6)
        assert torch.equal(folded[~batch.mask], offset.expand(int((~batch.mask).sum()), 8))  # padding too
    with pytest.raises(ValueError, match="offset must have shape"):
        enc(batch, offset=torch.zeros(3))


def test_typed_tokens_match_token_types_of_encode_and_leave_encode_alone() -> None:
    net, schema = network("persam")
    net.eval()
    batch = random_batch(schema, ("clinical", "genomics", "images", "events"), lengths=(5, 3, 9),
                         absent={"images": [1]}, seed=2)
    with torch.no_grad():
        encoded = net.encode(batch)
        before = {m: t.values.clone() for m, t in encoded.items()}
        plain = net.token_types(encoded)
        for m, t in encoded.items():  # token_types without inplace never writes into its input
            assert torch.equal(t.values, before[m]), m
        typed = net.typed_tokens(batch)
        for m in plain:
            torch.testing.assert_close(typed[m].values, plain[m].values, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(net(batch).outputs, net.fuse(plain)[0], atol=1e-6, rtol=1e-6)


def test_token_types_inplace_and_typed() -> None:
    emb = TokenTypeEmbedding(d_model=16, modalities=("clinical", "images"), patch_coords=True)
    tokens = random_token_set(("clinical", "images"), d_model=16, lengths=(4, 6), seed=0)
    plain = emb(tokens)
    own = {m: replace(t, values=t.values.clone()) for m, t in tokens.items()}
    inplace = emb(own, inplace=["images"])
    assert inplace["images"].values is own["images"].values  # written into the owned tensor
    shifted = {**tokens, "images": replace(tokens["images"],
                                           values=tokens["images"].values + emb.type_vector("images"))}
    typed = emb(shifted, typed=["images"])  # only the positional term is left to add
    for m in plain:
        torch.testing.assert_close(inplace[m].values, plain[m].values)
        torch.testing.assert_close(typed[m].values, plain[m].values)


@pytest.mark.parametrize("mods", [("images",), ("clinical", "images"), ("clinical", "genomics", "images")])
def test_persam_instance_group_embedding_applied_to_the_scores(mods) -> None:
    """The instance group embedding e enters the scores and the pooled bag as if added to every token."""
    torch.manual_seed(0)
    tokens = random_token_set(mods, d_model=16, lengths=(6, 2, 9), absent={"images": [1]}, seed=1)
    model = PersAM(d_model=16, modalities=list(mods), n_outputs=3, dropout=0.0).eval()
    with torch.no_grad():
        model.instance_gate.fill_(0.7)
        model.group_embed.normal_()
        out = model(tokens)
        e = model.group_embed[model.layout.instances].clone()
        model.group_embed[model.layout.instances] = 0.0
        inst = tokens["images"]
        moved = model({**tokens, "images": replace(inst, values=inst.values + e)})
    torch.testing.assert_close(out.pooled, moved.pooled, atol=1e-5, rtol=1e-5)
    recs, moved_recs = ({(r.kind, r.modality): r for r in o.records} for o in (out, moved))
    assert recs.keys() == moved_recs.keys()
    for key, r in recs.items():
        torch.testing.assert_close(r.value, moved_recs[key].value, atol=1e-5, rtol=1e-5, msg=str(key))


@pytest.mark.parametrize("gated", [True, False])
def test_gated_attention_pooling_without_autograd_is_the_same_computation(gated):
    """The inference shortcuts (in-place activations, no zeroing copy of a bag without padding) give the
    very values of the autograd path, with and without padding."""
    from clinfuse.fusion.aggregators.pooling import GatedAttentionPooling

    torch.manual_seed(0)
    pool = GatedAttentionPooling(d_model=8, hidden=6, gated=gated).eval()
    x = torch.randn(3, 11, 8)
    for mask in (torch.ones(3, 11, dtype=torch.bool), torch.arange(11) < torch.tensor([[11], [4], [1]])):
        with torch.enable_grad():
            expected = pool(x, mask)
        with torch.no_grad():
            got = pool(x, mask)
        for e, g in zip(expected, got, strict=True):
            assert torch.equal(e.detach(), g)
