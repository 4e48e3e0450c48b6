"""Properties every registered encoder has, parametrised over the whole registry (timm style).

Each encoder is built with ``from_schema(random_schema(modality), d_model=...)`` for every modality it accepts
(for images, every image kind its ``from_schema`` accepts) and fed ``random_modality_batch`` batches. A new
encoder registered anywhere in ``clinfuse.encoders`` gets all of these checks for free.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from clinfuse.datasets.batch import MODALITIES, ModalityBatch
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.encoders import (
    ENCODERS,
    ModalityEncoder,
    Tokens,
    create_encoder,
    default_encoder,
    list_encoders,
)

D = 16
VARIABLE_LENGTH = ("images", "events")



def _schema(modality: str, kind: str | None) -> dict[str, Any]:
    return random_schema(modality, image_kind=kind or "features")


def _accepts(name: str, modality: str, kind: str | None) -> bool:
    try:
        ENCODERS.get(name).from_schema(_schema(modality, kind), d_model=D)
    except (ValueError, TypeError):
        return False
    return True


def _cases() -> list[Any]:
    cases = []
    for name in list_encoders():
        for modality in ENCODERS.modalities_of(name) or MODALITIES:
            kinds = ("features", "pixels") if modality == "images" else (None,)
            for kind in kinds:
                if _accepts(name, modality, kind):
                    case_id = "-".join(filter(None, (name, modality, kind)))
                    cases.append(pytest.param(name, modality, kind, id=case_id))
    return cases


CASES = _cases()


def _build(name: str, modality: str, kind: str | None, *, d_model: int = D, seed: int = 0, **kw: Any,
           ) -> ModalityEncoder:
    torch.manual_seed(seed)
    return ENCODERS.get(name).from_schema(_schema(modality, kind), d_model=d_model, **kw)


def _batch(modality: str, kind: str | None, *, present: list[bool] | None = None,
           lengths: list[int] | None = None, seed: int = 0) -> ModalityBatch:
    present = present if present is not None else [True, True, True, True]
    if lengths is None:
        lengths = [3, 1, 5, 2][: len(present)]
    return random_modality_batch(modality, _schema(modality, kind), present=present,
                                 lengths=lengths, seed=seed)


def _real_rows(tokens: Tokens, b: int) -> torch.Tensor:
    """The real tokens of sample ``b``, ``[n_b, d]``, in order."""
    return tokens.values[b][tokens.mask[b]]


def _select(mb: ModalityBatch, idx: list[int]) -> ModalityBatch:
    """The samples ``idx`` of a batch (tensors, names and per-sample meta lists)."""
    B = mb.batch_size
    tensors = {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == B else v)
               for k, v in mb.tensors.items()}
    meta = {k: ([v[i] for i in idx] if isinstance(v, list) and len(v) == B else v)
            for k, v in mb.meta.items()}
    return ModalityBatch(mb.modality, mb.mask[idx], mb.present[idx], tensors,
                         [mb.names[i] for i in idx], meta)


def _pad(mb: ModalityBatch, extra: int, *, seed: int = 0) -> ModalityBatch:
    """The same batch with ``extra`` more padding tokens per sample and random content in every padding slot.

    Float padding gets random values (its content is irrelevant by contract); integer and bool padding stay
    0 / False, the contract's padding codes (an embedding lookup on padding must stay in range).
    """
    B, T = mb.mask.shape
    g = torch.Generator().manual_seed(seed)
    mask = torch.cat([mb.mask, torch.zeros(B, extra, dtype=torch.bool)], dim=1)
    tensors = {}
    for k, v in mb.tensors.items():
        if v.dim() >= 2 and tuple(v.shape[:2]) == (B, T):
            fill = torch.zeros((B, extra, *v.shape[2:]), dtype=v.dtype)
            v = torch.cat([v, fill], dim=1)
            if v.dtype.is_floating_point:
                noise = torch.rand(v.shape, generator=g, dtype=v.dtype)
                pad_slots = (~mask).reshape(B, T + extra, *([1] * (v.dim() - 2)))
                v = torch.where(pad_slots, noise, v)
        tensors[k] = v
    meta = {k: ([list(row) + [""] * extra for row in v]
                if isinstance(v, list) and len(v) == B and all(isinstance(r, list) and len(r) == T for r in v)
                else v)
            for k, v in mb.meta.items()}
    return ModalityBatch(mb.modality, mask, mb.present, tensors,
                         [list(r) + [""] * extra for r in mb.names], meta)


def test_registry_has_every_documented_encoder() -> None:
    expected = {"feature_bag", "cnn", "vit", "feature_tokens", "mlp", "gene_transformer", "event_transformer"}
    assert expected <= set(list_encoders())
    assert any(n.startswith("tabular_") for n in list_encoders(modality="clinical"))


def test_every_encoder_has_a_case() -> None:
    covered = {c.values[0] for c in CASES}
    missing = set(list_encoders()) - covered
    assert not missing, f"encoders without a buildable random schema: {missing}"


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(ValueError, match="feature_bag") as info:
        create_encoder("nope")
    assert "nope" in str(info.value) and all(n in str(info.value) for n in list_encoders())


@pytest.mark.parametrize("modality", MODALITIES)
def test_default_encoder_is_registered_and_builds(modality: str) -> None:
    kinds = ("features", "pixels") if modality == "images" else (None,)
    for kind in kinds:
        name = default_encoder(modality, _schema(modality, kind))
        assert name in list_encoders(modality)
        tokens = _build(name, modality, kind).eval()(_batch(modality, kind))
        assert tokens.values.shape[-1] == D
    with pytest.raises(ValueError, match="modality"):
        default_encoder("audio", {})


@pytest.mark.parametrize(("name", "modality", "kind"), CASES)
def test_forward_backward_shapes_and_names(name: str, modality: str, kind: str | None) -> None:
    enc = _build(name, modality, kind).train()
    batch = _batch(modality, kind)
    tokens = enc(batch)
    assert isinstance(tokens, Tokens) and tokens.modality == modality
    B = batch.batch_size
    assert tokens.values.dim() == 3 and tokens.values.shape[0] == B and tokens.values.shape[-1] == D
    assert tokens.mask.dtype == torch.bool and tokens.mask.shape == tokens.values.shape[:2]
    assert torch.equal(tokens.present, batch.present)
    # names line up with the tokens: [B][T], non-empty exactly where the mask is True
    assert len(tokens.names) == B and all(len(row) == tokens.values.shape[1] for row in tokens.names)
    assert [[bool(n) for n in row] for row in tokens.names] == tokens.mask.tolist()
    assert (tokens.mask.any(dim=1) == tokens.present).all()
    (tokens.values ** 2).mean().backward()
    grads = [p.grad for p in enc.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


@pytest.mark.parametrize(("name", "modality", "kind"), CASES)
def test_output_width_follows_d_model(name: str, modality: str, kind: str | None) -> None:
    tokens = _build(name, modality, kind, d_model=8).eval()(_batch(modality, kind))
    assert tokens.values.shape[-1] == 8 and tokens.d_model == 8


@pytest.mark.parametrize(("name", "modality", "kind"), CASES)
def test_padding_and_other_samples_do_not_change_real_tokens(name: str, modality: str,
                                                             kind: str | None) -> None:
    enc = _build(name, modality, kind).eval()
    batch = _batch(modality, kind, present=[True, True, False, True])
    with torch.no_grad():
        ref = enc(batch)
        # an absent sample with random content, and samples dropped from the batch, change nobody else
        alone = enc(_select(batch, [0]))
        assert torch.allclose(_real_rows(alone, 0), _real_rows(ref, 0), atol=1e-5)
        assert alone.names[0][: int(alone.mask[0].sum())] == [n for n in ref.names[0] if n]
        if modality in VARIABLE_LENGTH:
            padded = enc(_pad(batch, 4, seed=1))
            for b in range(batch.batch_size):
                assert int(padded.mask[b].sum()) == int(ref.mask[b].sum())
                assert torch.allclose(_real_rows(padded, b), _real_rows(ref, b), atol=1e-5), f"sample {b}"
                assert [n for n in padded.names[b] if n] == [n for n in ref.names[b] if n]


@pytest.mark.parametrize(("name", "modality", "kind"), CASES)
@pytest.mark.parametrize("present", [[True, False, True], [False, False]], ids=["one-absent", "all-absent"])
def test_absent_samples_are_finite_without_nan_gradients(name: str, modality: str, kind: str | None,
                                                         present: list[bool]) -> None:
    enc = _build(name, modality, kind).train()
    batch = _batch(modality, kind, present=present)
    tokens = enc(batch)
    assert torch.isfinite(tokens.values).all()
    for b, p in enumerate(present):
        if not p:
            assert not tokens.mask[b].any() and not tokens.present[b]
            assert all(n == "" for n in tokens.names[b])
    # the loss touches every row, padding included, so a NaN anywhere would reach the gradients
    tokens.values.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in enc.parameters() if p.grad is not None)


@pytest.mark.parametrize(("name", "modality", "kind"), CASES)
def test_deterministic_for_a_fixed_seed(name: str, modality: str, kind: str | None) -> None:
    batch = _batch(modality, kind)
    a, b = _build(name, modality, kind, seed=3), _build(name, modality, kind, seed=3)
    with torch.no_grad():
        assert torch.equal(a.eval()(batch).values, b.eval()(batch).values)
        a.train(), b.train()
        torch.manual_seed(7)
        out_a = a(batch).values
        torch.manual_seed(7)
        assert torch.equal(out_a, b(batch).values)


def _mutated_schema(modality: str, kind: str | None, how: str) -> dict[str, Any]:
    s = _schema(modality, kind)
    if how == "dimension":
        if modality == "clinical":
            return {**s, "numeric": [*s["numeric"], "extra"]}
        if modality == "genomics":
            return {"genes": [*s["genes"], "EXTRA"], "gene_sets": None}
        if modality == "images":
            return ({**s, "feature_dim": s["feature_dim"] + 3} if kind == "features"
                    else {**s, "channels": s["channels"] + 1})
        raise AssertionError("events have no input dimension")
    # vocabulary: more categories / codes than the encoder's table knows
    if modality == "clinical":
        return {**s,
                "categorical": {k: [*v, *(f"new{i}" for i in range(6))] for k, v in s["categorical"].items()}}
    return {**s, "vocab": [*s["vocab"], *(f"NEW{i}" for i in range(30))]}


BAD_INPUT = [pytest.param(*c.values, how, id=f"{c.id}-{how}")
             for c in CASES for how in ("dimension", "vocabulary")
             if not (how == "dimension" and c.values[1] == "events")
             and not (how == "vocabulary" and c.values[1] not in ("clinical", "events"))]


@pytest.mark.parametrize(("name", "modality", "kind", "how"), BAD_INPUT)
def test_mismatched_batch_raises_clear_error(name: str, modality: str, kind: str | None, how: str) -> None:
    enc = _build(name, modality, kind).eval()
    bad = random_modality_batch(modality, _mutated_schema(modality, kind, how), lengths=[4] * 6,
                                present=[True] * 6, seed=5)
    with pytest.raises((ValueError, TypeError)) as info:
        enc(bad)
    assert len(str(info.value)) > 20


@pytest.mark.parametrize(("name", "modality", "kind"), CASES)
def test_bad_constructor_arguments(name: str, modality: str, kind: str | None) -> None:
    cls = ENCODERS.get(name)
    with pytest.raises((ValueError, TypeError)):
        cls.from_schema(_schema(modality, kind), d_model=0)
    with pytest.raises((ValueError, TypeError)):
        cls.from_schema(_schema(modality, kind), d_model="16")
    if "n_heads" in inspect.signature(cls.__init__).parameters:
        with pytest.raises(ValueError, match="divisible"):
            cls.from_schema(_schema(modality, kind), d_model=10, n_heads=4)
