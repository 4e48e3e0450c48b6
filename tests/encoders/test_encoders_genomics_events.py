"""Specific tests of gene_transformer, event_transformer and the shared masked attention block.

The registry-wide properties (forward/backward, padding, absent samples, determinism, names) are in
tests/encoders/test_encoders.py; here: gene vs gene-set tokens, member weights, 20,000 genes in bounded
memory, event time/segment/value/unknown-code handling, n_cut, chunked attention, and bad arguments.
"""

from __future__ import annotations

import resource

import pytest
import torch
from clinfuse.datasets.batch import ModalityBatch
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.encoders import create_encoder
from clinfuse.encoders.events import EventTransformer
from clinfuse.encoders.genomics import GeneTransformer
from clinfuse.encoders.layers import MaskedTransformer, masked_attention

D = 16


def _close(a: torch.Tensor, b: torch.Tensor, *, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """Plain allclose (torch.testing.assert_close's first call imports torch.distributed: ~10 s here)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=atol, rtol=rtol), f"max abs difference {(a - b).abs().max().item():.3g}"


def _genes(**kw) -> GeneTransformer:
    torch.manual_seed(0)
    return GeneTransformer.from_schema(random_schema("genomics"), d_model=D, n_heads=2, **kw).eval()


def _events(**kw) -> EventTransformer:
    torch.manual_seed(0)
    return EventTransformer.from_schema(random_schema("events"), d_model=D, n_heads=2, **kw).eval()


def _event_batch(lengths=(6, 0, 3), present=(True, False, True), seed=1):
    return random_modality_batch("events", random_schema("events"), lengths=list(lengths),
                                 present=list(present),
                                 seed=seed)


# ---------------------------------------------------------------- genomics


def test_gene_tokens_versus_set_tokens():
    schema = random_schema("genomics")
    batch = random_modality_batch("genomics", schema, present=[True, False], seed=3)
    sets = _genes()(batch)
    assert sets.values.shape == (2, 3, D)
    assert sets.names == [["setA", "setB", "setC"], ["", "", ""]]
    assert sets.mask.tolist() == [[True] * 3, [False] * 3]
    genes = _genes(use_gene_sets=False)(batch)
    assert genes.values.shape == (2, 12, D)
    assert genes.names[0] == schema["genes"] and genes.names[1] == [""] * 12
    assert "member_weights" not in genes.meta
    # a schema without sets defaults to gene tokens
    no_sets = GeneTransformer(genes=schema["genes"], d_model=D, n_heads=2)
    assert not no_sets.use_gene_sets and no_sets.token_names == schema["genes"]


def test_member_weights_sum_to_one_and_follow_values():
    schema = random_schema("genomics")
    batch = random_modality_batch("genomics", schema, present=[True, True, False], seed=4)
    batch.tensors["values"][0, 0] = 0.0  # G0 (in setA) contributes nothing for sample 0
    tokens = _genes()(batch)
    assert tokens.meta["member_genes"] == schema["gene_sets"]
    for name, genes in schema["gene_sets"].items():
        w = tokens.meta["member_weights"][name]
        assert w.shape == (3, len(genes)) and not w.requires_grad
        _close(w.sum(dim=1), torch.ones(3))
        assert bool((w >= 0).all())
    assert tokens.meta["member_weights"]["setA"][0, 0] == 0.0
    _close(tokens.meta["member_weights"]["setB"][2], torch.full((5,), 0.2))  # absent: uniform


def test_gene_sets_outside_schema_are_skipped_with_a_warning():
    with pytest.warns(UserWarning, match="no gene in the schema"):
        enc = GeneTransformer(genes=["a", "b", "c"], gene_sets={"s1": ["a", "x"], "s2": ["y"]},
                              d_model=D, n_heads=2)
    assert enc.set_names == ["s1"] and enc.skipped_gene_sets == ["s2"] and enc.member_genes == {"s1": ["a"]}


def test_set_tokens_backward_with_absent_sample_has_finite_grads():
    schema = random_schema("genomics")
    batch = random_modality_batch("genomics", schema, present=[False, True], seed=5)
    enc = _genes().train()
    enc(batch).values.pow(2).sum().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert enc.set_tokenizer.w1.grad.abs().sum() > 0


@pytest.mark.slow
def test_twenty_thousand_genes_run_in_bounded_memory():
    """Batch of 2 x 20,000 gene tokens, forward in eval mode. The growth of the process's peak RSS must stay
    far below the 6.4 GB one [B, H, T, T] float32 attention matrix would take (a loose bound: the high-water
    mark can only under-report growth by what the process had already used above its current size)."""
    G, B = 20_000, 2
    genes = [f"g{i}" for i in range(G)]
    torch.manual_seed(0)
    enc = GeneTransformer(genes=genes, d_model=8, n_heads=2, n_layers=1, dropout=0.0).eval()
    batch = ModalityBatch("genomics", torch.ones(B, G, dtype=torch.bool), torch.ones(B, dtype=torch.bool),
                          {"values": torch.randn(B, G)}, [list(genes)] * B)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        out = enc(batch)
    # ru_maxrss is in KiB on Linux
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert out.values.shape == (B, G, 8) and bool(torch.isfinite(out.values).all())
    assert grown_mb < 1500, f"20,000 genes grew peak RSS by {grown_mb:.0f} MB"


def test_gene_count_and_order_mismatch_raise():
    enc = _genes(use_gene_sets=False)
    schema = random_schema("genomics")
    wrong = random_modality_batch("genomics", {"genes": schema["genes"][:10], "gene_sets": None})
    with pytest.raises(ValueError, match=r"expected values \[B, 12\].*got \(3, 10\)"):
        enc(wrong)
    shuffled = random_modality_batch("genomics", {"genes": schema["genes"][::-1], "gene_sets": None})
    with pytest.raises(ValueError, match="not the schema's genes"):
        enc(shuffled)


def test_gene_max_tokens_guard():
    with pytest.raises(ValueError, match="exceed max_tokens=10"):
        batch = random_modality_batch("genomics", random_schema("genomics"))
        _genes(use_gene_sets=False, max_tokens=10)(batch)


# ---------------------------------------------------------------- events


def test_event_meta_and_n_cut_are_passed_through():
    batch = _event_batch()
    batch.tensors["n_cut"] = torch.tensor([4, 0, 1])
    batch.tensors["segments"][0, 3:] = 2
    tokens = _events()(batch)
    assert tokens.meta["n_cut"].tolist() == [4, 0, 1]
    assert tokens.meta["code"] == batch.meta["code"]
    _close(tokens.meta["times"], batch.tensors["times"])
    assert tokens.meta["segments"][0].tolist() == [0, 0, 0, 2, 2, 2]
    assert tokens.names == batch.names and tokens.mask.tolist() == batch.mask.tolist()


def test_time_segment_and_value_inputs_change_the_output():
    enc = _events()
    batch = _event_batch()
    base = enc(batch).values
    for key, change in [("times", lambda t: t * 3.0), ("segments", lambda s: s + 1),
                        ("values", lambda v: v + batch.tensors["has_value"].float())]:
        changed = _event_batch()
        changed.tensors[key] = change(changed.tensors[key])
        out = enc(changed).values
        assert not torch.allclose(out[0], base[0], atol=1e-4), key
        _close(out[1], base[1])  # the absent sample stays zero
    no_seg = _events(use_segments=False)
    changed = _event_batch()
    changed.tensors["segments"] += 1
    _close(no_seg(changed).values, no_seg(batch).values)


def test_unknown_codes_are_encoded_and_out_of_vocabulary_codes_raise():
    enc = _events()
    batch = _event_batch()
    batch.tensors["codes"][batch.mask] = 1  # every real event is an unknown code
    out = enc(batch)
    assert bool(torch.isfinite(out.values).all()) and out.mask.sum() == 9
    batch.tensors["codes"][2, 1] = 57
    with pytest.raises(ValueError, match=r"code 57 .*rows \[2\].*vocabulary of size 10"):
        enc(batch)
    batch.tensors["codes"][2, 1] = 3
    batch.tensors["times"][0, 2] = -1.0
    with pytest.raises(ValueError, match=r"rows \[0\] have negative"):
        enc(batch)


def test_event_padding_invariance_full_latent_and_chunked():
    for kw in ({}, {"attention": "latent", "n_latents": 4}, {"query_chunk_size": 2}):
        enc = _events(**kw)
        full = _event_batch(lengths=(6, 3), present=(True, True))
        alone = _event_batch(lengths=(6, 3), present=(True, True))
        # sample 1 alone, padded to its own length 3
        sub = type(full)("events", alone.mask[1:, :3], alone.present[1:],
                         {k: (v[1:, :3] if v.dim() == 2 else v[1:]) for k, v in alone.tensors.items()},
                         [alone.names[1][:3]], {"code": [alone.meta["code"][1][:3]]})
        _close(enc(full).values[1, :3], enc(sub).values[0], atol=1e-5, rtol=0.0)


def test_event_max_tokens_guard():
    with pytest.raises(ValueError, match="exceed max_tokens=4"):
        _events(max_tokens=4)(_event_batch())


# ---------------------------------------------------------------- attention block and bad arguments


def test_chunked_attention_matches_single_call_and_empty_rows_are_zero():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 37, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(3, 37, dtype=torch.bool)
    mask[1] = False
    mask[2, 20:] = False
    one = masked_attention(q, k, v, mask)
    grads_one = torch.autograd.grad(one.sum(), (q, k, v))
    chunked = masked_attention(q, k, v, mask, query_chunk_size=8)
    grads_chunked = torch.autograd.grad(chunked.sum(), (q, k, v))
    _close(chunked, one, atol=1e-6, rtol=1e-5)
    for a, b in zip(grads_chunked, grads_one):
        _close(a, b, atol=1e-6, rtol=1e-5)
        assert bool(torch.isfinite(a).all())
    assert one[1].abs().max() == 0.0


def test_state_dicts_written_before_the_shared_layers_still_load():
    """Keys of the self-attention aggregator's old block (``norm1 / attn.to_q / ff.3``) and of the encoders'
    old feed-forward (``ffn.2``) are renamed on load (``layers.LEGACY_NAMES``) and give the same outputs."""
    from clinfuse.encoders.layers import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(d_model=D, n_heads=4).eval()
    new = block.state_dict()
    rename = {"norm_attn.": "norm1.", "norm_ffn.": "norm2.", "attn.q_proj.": "attn.to_q.",
              "attn.kv_proj.": "attn.to_kv.", "attn.out_proj.": "attn.out.", "ffn.": "ff."}
    old = {}
    for key, value in new.items():
        for a, b in rename.items():
            if key.startswith(a):
                key = b + key[len(a):]
                break
        old[key] = value
    encoder_style = {k.replace("ffn.3.", "ffn.2."): v for k, v in new.items()}
    x, mask = torch.randn(2, 5, D), torch.tensor([[True] * 5, [True, True, False, False, False]])
    for state in (old, encoder_style):
        other = TransformerBlock(d_model=D, n_heads=4).eval()
        other.load_state_dict(state, strict=True)
        with torch.no_grad():
            _close(other(x, mask), block(x, mask), atol=0.0, rtol=0.0)


def test_transformer_zeroes_padding_rows():
    net = MaskedTransformer(d_model=D, n_heads=4, n_layers=1).eval()
    mask = torch.tensor([[True, True, False], [False, False, False]])
    out = net(torch.randn(2, 3, D), mask)
    assert out[0, 2].abs().max() == 0.0 and out[1].abs().max() == 0.0 and out[0, :2].abs().max() > 0


@pytest.mark.parametrize("name,modality", [("gene_transformer", "genomics"), ("event_transformer", "events")])
def test_bad_arguments_raise(name, modality):
    schema = random_schema(modality)
    with pytest.raises(ValueError, match="not divisible by n_heads=3"):
        create_encoder(name, **({"genes": schema["genes"]} if modality == "genomics" else {"vocab_size": 10}),
                       d_model=16, n_heads=3)
    with pytest.raises(ValueError, match="attention must be"):
        create_encoder(name, **({"genes": schema["genes"]} if modality == "genomics" else {"vocab_size": 10}),
                       d_model=16, n_heads=2, attention="linear")
    wrong = "events" if modality == "genomics" else "genomics"
    enc = create_encoder(name,
                         **({"genes": schema["genes"]} if modality == "genomics" else {"vocab_size": 10}),
                         d_model=16, n_heads=2)
    with pytest.raises(ValueError, match=f"encodes the '{modality}' modality"):
        enc(random_modality_batch(wrong, random_schema(wrong)))
    with pytest.raises(ValueError, match="vocab_size must be"):
        EventTransformer(vocab_size=-1, d_model=16, n_heads=2)


@pytest.mark.parametrize("kw", [{"use_gene_sets": False}, {"use_gene_sets": False, "attention": "latent"},
                                {"attention": "latent", "n_latents": 3}],
                         ids=["genes", "genes-latent", "sets-latent"])
def test_gene_modes_do_not_depend_on_other_samples(kw):
    enc = _genes(**kw)
    schema = random_schema("genomics")
    batch = random_modality_batch("genomics", schema, present=[True, False, True], seed=6)
    alone = random_modality_batch("genomics", schema, present=[True], batch_size=1, seed=0)
    alone.tensors["values"] = batch.tensors["values"][2:3].clone()
    with torch.no_grad():
        _close(enc(alone).values[0], enc(batch).values[2], atol=1e-5, rtol=0.0)


# ---------------------------------------------------------------- real cohorts (../shared/data, read-only)

def test_real_cohorts_encode(shared_path):
    from clinfuse.datasets import Preprocessor, load_gse7390, load_mimic3_demo, make_loader

    gse = load_gse7390(shared_path("gse7390_etc"))
    pre = Preprocessor().fit(gse)
    enc = GeneTransformer.from_schema(pre.schema_["genomics"], d_model=D, n_heads=2, n_layers=1).eval()
    seen = 0
    with torch.no_grad():
        for batch in make_loader(gse, pre, batch_size=100):
            tokens = enc(batch.modalities["genomics"])
            assert bool(torch.isfinite(tokens.values).all())
            assert tokens.values.shape[1] == len(pre.schema_["genomics"]["genes"])
            seen += len(batch)
    assert seen == len(gse) == 198

    mimic = load_mimic3_demo(shared_path("mimic3_demo"))
    pre = Preprocessor().fit(mimic)
    enc = EventTransformer.from_schema(pre.schema_["events"], d_model=D, n_heads=2, n_layers=1).eval()
    batch = next(iter(make_loader(mimic.subset(mimic.sample_ids[:6]), pre, batch_size=6)))
    with torch.no_grad():
        tokens = enc(batch.modalities["events"])
    events = batch.modalities["events"]
    assert bool(torch.isfinite(tokens.values).all()) and tokens.names == events.names
    assert torch.equal(tokens.meta["n_cut"], events.tensors["n_cut"]) and tokens.mask.sum() > 0


@pytest.mark.slow  # several seconds: CI runs it, the quick suite does not
def test_query_chunks_keep_memory_linear_even_on_the_math_kernel():
    """Forcing SDPA's math kernel (T x T weights): without chunks T=4,000 x 4 heads takes ~750 MB of peak RSS
    for forward+backward (measured 1.7 GB at T=6,000); with 1,024-query chunks recomputed in backward only
    one chunk's weights (~66 MB) exist at a time."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 4000, 4, generator=g, requires_grad=True) for _ in range(3))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with sdpa_kernel(SDPBackend.MATH):
        out = masked_attention(q, k, v, torch.ones(1, 4000, dtype=torch.bool), query_chunk_size=1024)
        out.sum().backward()
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert bool(torch.isfinite(q.grad).all()) and grown_mb < 300, f"grew {grown_mb:.0f} MB"
