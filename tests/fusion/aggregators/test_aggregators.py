"""Invariants every registered aggregator must satisfy (parametrised over the whole AGGREGATORS registry).

Padding gets exactly zero weight, exported vectors sum to 1 over real tokens, absent modalities get modality
weight 0, predictions stay finite with any modality absent, patch permutation equivariance / invariance,
batch independence in eval, bag sizes 1..50,000 in one batch, bad arguments, declared == produced kinds.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from clinfuse.datasets.batch import TOKEN_KIND
from clinfuse.encoders.tokens import Tokens
from clinfuse.fusion import create_aggregator, list_aggregators
from clinfuse.fusion.testing import random_token_set

MODS = ("clinical", "genomics", "images", "events")
CLASSES = ["a", "b", "c"]
NAMES = list_aggregators()
D = 16



def build(name: str, *, d_model: int = D, modalities=MODS, seed: int = 0):
    torch.manual_seed(seed)
    return create_aggregator(name, d_model=d_model, modalities=list(modalities), n_outputs=len(CLASSES),
                             class_names=CLASSES).eval()


def select(tokens: dict[str, Tokens], rows: list[int], *, trim: bool = False) -> dict[str, Tokens]:
    """The samples ``rows`` of a token set (optionally trimmed to their longest real length)."""
    out = {}
    for m, t in tokens.items():
        idx = torch.tensor(rows)
        mask = t.mask[idx]
        T = t.mask.shape[1]
        if trim:
            T = max(int(mask.sum(dim=1).max()), 1) if m in ("images", "events") else T
        meta = {k: (v[idx][:, :T] if isinstance(v, torch.Tensor) else v) for k, v in t.meta.items()}
        out[m] = Tokens(values=t.values[idx][:, :T], mask=mask[:, :T], names=[t.names[r][:T] for r in rows],
                        modality=m, present=t.present[idx], meta=meta)
    return out


def check_record_invariants(records, *, tol: float = 1e-5) -> None:
    for r in records:
        assert torch.isfinite(r.value).all() and torch.isfinite(r.raw).all(), (r.kind, r.modality)
        if r.normalised_over == "classes":
            sums = r.value.sum(dim=1)
            assert torch.allclose(sums, torch.ones_like(sums), atol=tol)
            continue
        pad = ~r.mask.unsqueeze(1).expand_as(r.value)
        assert (r.value[pad] == 0).all(), f"{r.kind}/{r.modality}: padding got weight"
        sums = r.value.sum(dim=-1)  # [B, C]
        has = r.mask.any(dim=1, keepdim=True).expand_as(sums)
        assert torch.allclose(sums[has], torch.ones_like(sums[has]), atol=tol), \
            f"{r.kind}/{r.modality}: {sums}"
        assert (sums[~has] == 0).all(), f"{r.kind}/{r.modality}: a sample without tokens got weight"
        assert (r.value >= 0).all()
        assert len(r.names) == r.value.shape[0] and all(len(n) == r.value.shape[2] for n in r.names)


def pooled_of(out) -> torch.Tensor:
    return out.pooled.reshape(out.pooled.shape[0], -1)


@pytest.mark.parametrize("name", NAMES)
def test_padding_zero_sums_to_one_and_declared_kinds(name):
    agg = build(name)
    tokens = random_token_set(MODS, d_model=D, lengths=(7, 3, 1, 12), absent={"genomics": [1], "images": [2]})
    with torch.no_grad():
        out = agg(tokens)
    assert out.pooled.shape[0] == 4 and out.pooled.shape[-1] == D and out.pooled.dim() in (2, 3)
    assert torch.isfinite(out.pooled).all()
    check_record_invariants(out.records)
    assert {r.kind for r in out.records} == set(agg.attention_kinds), name
    for r in out.records:
        if r.kind in TOKEN_KIND.values():
            assert r.kind == TOKEN_KIND[r.modality]
    # token names of the exported records are the tokens' own names
    for r in out.records:
        if r.modality in tokens and r.kind in ("patch", "event", "gene", "feature"):
            assert r.names == tokens[r.modality].names


@pytest.mark.parametrize("name", NAMES)
def test_absent_modality_gets_zero_modality_weight(name):
    agg = build(name)
    tokens = random_token_set(MODS, d_model=D, lengths=(5, 4, 6), absent={"images": [0], "clinical": [1, 2]})
    with torch.no_grad():
        out = agg(tokens)
    mod = [r for r in out.records if r.kind == "modality"]
    if "modality" not in agg.attention_kinds:
        assert not mod
        return
    (r,) = mod
    col = {m: i for i, m in enumerate(MODS)}
    assert r.value[0, :, col["images"]].eq(0).all()
    assert r.value[1:, :, col["clinical"]].eq(0).all()
    assert (r.value[0, :, col["clinical"]] > 0).all()


ABSENT_PATTERNS = [{m: [0, 1, 2]} for m in MODS] + [{o: [0, 1, 2] for o in MODS if o != m} for m in MODS]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("pattern", range(len(ABSENT_PATTERNS)))
def test_finite_with_any_modality_absent(name, pattern):
    agg = build(name).train()
    tokens = random_token_set(MODS, d_model=D, lengths=(4, 2, 9), absent=ABSENT_PATTERNS[pattern])
    for t in tokens.values():
        t.values.requires_grad_(True)
    out = agg(tokens)
    assert torch.isfinite(out.pooled).all()
    check_record_invariants(out.records)
    out.pooled.square().mean().backward()
    for p in agg.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", NAMES)
def test_sample_without_any_modality_is_finite(name):
    agg = build(name)
    tokens = random_token_set(MODS, d_model=D, lengths=(4, 3), absent={m: [1] for m in MODS})
    with torch.no_grad():
        out = agg(tokens)
    assert torch.isfinite(out.pooled).all()
    check_record_invariants(out.records)


def permute_images(tokens: dict[str, Tokens], b: int, perm: torch.Tensor) -> dict[str, Tokens]:
    t = tokens["images"]
    n = len(perm)
    idx = torch.arange(t.mask.shape[1])
    idx[:n] = perm
    values, mask = t.values.clone(), t.mask.clone()
    values[b] = t.values[b, idx]
    mask[b] = t.mask[b, idx]
    names = [list(row) for row in t.names]
    names[b] = [t.names[b][i] for i in idx.tolist()]
    meta = {}
    for k, v in t.meta.items():
        if isinstance(v, torch.Tensor) and v.dim() >= 2 and v.shape[1] == t.mask.shape[1]:
            v = v.clone()
            v[b] = v[b, idx]
        meta[k] = v
    return {**tokens, "images": replace(t, values=values, mask=mask, names=names, meta=meta)}


@pytest.mark.parametrize("name", NAMES)
def test_patch_permutation_permutes_attention_and_keeps_output(name):
    agg = build(name)
    tokens = random_token_set(MODS, d_model=D, lengths=(9, 5, 12), seed=3)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    permuted = permute_images(tokens, 0, perm)
    with torch.no_grad():
        a, b = agg(tokens), agg(permuted)
    torch.testing.assert_close(pooled_of(a), pooled_of(b), atol=1e-5, rtol=1e-5)
    ra = {(r.kind, r.modality): r for r in a.records}
    rb = {(r.kind, r.modality): r for r in b.records}
    assert ra.keys() == rb.keys()
    for key, r in ra.items():
        if r.modality != "images":
            torch.testing.assert_close(r.value, rb[key].value, atol=1e-5, rtol=1e-5)
            continue
        torch.testing.assert_close(rb[key].value[0, :, :9], r.value[0, :, perm], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rb[key].value[1:], r.value[1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_do_not_depend_on_batch_mates(name):
    agg = build(name)
    tokens = random_token_set(MODS, d_model=D, lengths=(6, 40, 3, 300), absent={"genomics": [2]}, seed=5)
    with torch.no_grad():
        together = agg(tokens)
        for b in (0, 2):
            alone = agg(select(tokens, [b], trim=True))
            torch.testing.assert_close(pooled_of(alone)[0], pooled_of(together)[b], atol=1e-5, rtol=1e-4)
            by_key = {(r.kind, r.modality): r for r in together.records}
            for r in alone.records:
                full = by_key[(r.kind, r.modality)]
                T = r.value.shape[2]
                torch.testing.assert_close(r.value[0], full.value[b, :, :T], atol=1e-5, rtol=1e-4)
                assert full.value[b, :, T:].eq(0).all()


@pytest.mark.parametrize("name", NAMES)
def test_bag_sizes_one_to_fifty_thousand_in_one_batch(name):
    agg = build(name, d_model=8)
    tokens = random_token_set(("clinical", "images"), d_model=8, lengths=(1, 50_000, 17), seed=2)
    with torch.no_grad():
        out = agg(tokens)
    assert torch.isfinite(out.pooled).all()
    check_record_invariants(out.records, tol=1e-4)
    patch = [r for r in out.records if r.modality == "images"]
    for r in patch:
        assert r.value.shape[-1] == 50_000
        assert (r.value[0, :, 0] == 1).all()  # a bag of one: all weight on its only patch


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_raise(name):
    with pytest.raises(ValueError):
        create_aggregator(name, d_model=0, modalities=list(MODS), n_outputs=2, class_names=["a", "b"])
    with pytest.raises(ValueError):
        create_aggregator(name, d_model=D, modalities=list(MODS), n_outputs=0, class_names=[])
    with pytest.raises((TypeError, ValueError)):
        create_aggregator(name, d_model=D, modalities="images", n_outputs=2, class_names=["a", "b"])
    agg = build(name, modalities=("clinical", "images"))
    wrong_width = random_token_set(("clinical", "images"), d_model=D + 4, lengths=(3, 2))
    with pytest.raises(ValueError, match="width|d_model|dim"):
        agg(wrong_width)
    unknown = random_token_set(("clinical", "images", "events"), d_model=D, lengths=(3, 2))
    with pytest.raises(ValueError, match="events"):
        agg(unknown)


def test_unknown_aggregator_name_lists_registered():
    with pytest.raises(ValueError, match="self_attention"):
        create_aggregator("nope", d_model=D, modalities=list(MODS), n_outputs=2)


def test_baselines_declare_no_modality_weights():
    assert "modality" not in build("abmil").attention_kinds
    assert build("abmil").attention_kinds == {"patch"}
    assert build("concat").attention_kinds == frozenset()
    assert build("abmil", modalities=("clinical", "genomics")).attention_kinds == {"gene"}


@pytest.mark.parametrize("name", NAMES)
def test_padding_and_absent_content_never_leak(name):
    agg = build(name)
    tokens = random_token_set(MODS, d_model=D, lengths=(6, 2, 4),
                              absent={"genomics": [1], "clinical": [2]}, seed=7)
    noisy = {}
    for m, t in tokens.items():
        values = torch.where(t.mask.unsqueeze(-1), t.values, torch.full_like(t.values, 1e4))
        noisy[m] = replace(t, values=values)
    with torch.no_grad():
        a, b = agg(tokens), agg(noisy)
    torch.testing.assert_close(pooled_of(a), pooled_of(b), atol=1e-5, rtol=1e-5)
    for ra, rb in zip(a.records, b.records):
        torch.testing.assert_close(ra.value, rb.value, atol=1e-6, rtol=1e-5)


# --------------------------------------------------------------------------------------- specific aggregators


def test_self_attention_summarises_large_bags_and_still_weighs_every_patch():
    agg = create_aggregator("self_attention", d_model=D, modalities=list(MODS), n_outputs=2,
                            max_patch_tokens=4).eval()
    tokens = random_token_set(MODS, d_model=D, lengths=(3, 30), seed=1)
    with torch.no_grad():
        out = agg(tokens)
    (patch,) = [r for r in out.records if r.kind == "patch"]
    assert patch.meta["summarised"].tolist() == [False, True]
    assert (patch.value[1, 0, :30] > 0).all()  # rolled out through the summary: every patch keeps a weight
    check_record_invariants(out.records)
    with pytest.raises(ValueError, match="max_patch_tokens"):
        create_aggregator("self_attention", d_model=D, modalities=list(MODS), n_outputs=2, max_patch_tokens=0)
    with pytest.raises(ValueError, match="n_heads"):
        create_aggregator("self_attention", d_model=D, modalities=list(MODS), n_outputs=2, n_heads=3)


def test_cross_attention_pairs_maps_and_both_ways():
    agg = build("cross_attention")
    assert agg.pairs == [("genomics", "images")]
    tokens = random_token_set(MODS, d_model=D, lengths=(5, 8), absent={"genomics": [1]}, seed=2)
    with torch.no_grad():
        out = agg(tokens)
    (rec,) = out.records
    qk = rec.meta["query_key_map"]  # [B, Q, T]: learned query + 12 gene queries
    assert qk.shape == (2, 13, 8)
    real_q = torch.tensor([[n != "" for n in row] for row in rec.meta["query_names"]])
    assert real_q.sum(dim=1).tolist() == [13, 1]  # sample 1 lacks genomics: only the learned query attends
    mean = qk.sum(dim=1) / real_q.sum(dim=1, keepdim=True)
    torch.testing.assert_close(rec.value[:, 0], mean, atol=1e-6, rtol=1e-5)

    both = create_aggregator("cross_attention", d_model=D, modalities=list(MODS), n_outputs=2,
                             pairs=[("clinical", "images")], both_ways=True).eval()
    assert both.attention_kinds == {"patch", "feature"}
    with torch.no_grad():
        assert {r.kind for r in both(tokens).records} == {"patch", "feature"}
    assert build("cross_attention", modalities=("clinical", "genomics")).pairs == [("clinical", "genomics")]
    for bad in ([("images", "images")], [("clinical", "xray")], []):
        with pytest.raises(ValueError, match="pair"):
            create_aggregator("cross_attention", d_model=D, modalities=list(MODS), n_outputs=2, pairs=bad)
    with pytest.raises(ValueError, match="two modalities"):
        create_aggregator("cross_attention", d_model=D, modalities=["images"], n_outputs=2)


def test_cross_attention_summarises_long_query_sets():
    agg = create_aggregator("cross_attention", d_model=D, modalities=["events", "images"], n_outputs=2,
                            max_query_tokens=5).eval()
    tokens = random_token_set(("events", "images"), d_model=D, lengths=(3, 40), seed=4)
    with torch.no_grad():
        out = agg(tokens)
    names = out.records[0].meta["query_names"]
    assert names[0][:4] == ["learned", "E0", "E1", "E2"]
    assert any(n.startswith("summary") for n in names[1])
    check_record_invariants(out.records)


def test_hierarchical_modality_weights_and_token_weights():
    agg = build("hierarchical")
    tokens = random_token_set(MODS, d_model=D, lengths=(5, 8, 2), absent={"events": [0], "images": [0, 1]})
    with torch.no_grad():
        out = agg(tokens)
    (mod,) = [r for r in out.records if r.kind == "modality"]
    assert mod.value.shape == (3, 1, 4) and mod.names[0] == ["clinical", "genomics", "", ""]
    assert {r.kind for r in out.records} == {"modality", "feature", "gene", "patch", "event"}


def test_abmil_instance_modality_choice_and_errors():
    agg = build("abmil", modalities=("clinical", "events"))
    assert agg.instance_modality == "events" and agg.attention_kinds == {"event"}
    ev = create_aggregator("abmil", d_model=D, modalities=list(MODS), n_outputs=2, instance_modality="events")
    assert ev.attention_kinds == {"event"}
    with pytest.raises(ValueError, match="instance_modality"):
        create_aggregator("abmil", d_model=D, modalities=["clinical", "images"], n_outputs=2,
                          instance_modality="genomics")


def test_concat_uses_a_learned_missing_vector_not_zeros():
    agg = build("concat")
    tokens = random_token_set(MODS, d_model=D, lengths=(4, 4), absent={"images": [1]})
    img = tokens["images"]
    values, mask = img.values.clone(), img.mask.clone()
    values[1], mask[1] = 0.0, True  # sample 1: a real bag of zero vectors instead of an absent bag
    zeros = {**tokens, "images": replace(img, values=values, mask=mask)}
    with torch.no_grad():
        absent, zero = agg(tokens).pooled, agg(zeros).pooled
    torch.testing.assert_close(absent[0], zero[0])
    assert not torch.allclose(absent[1], zero[1])
