"""Specific behaviour of the image (feature_bag, cnn, vit) and clinical (feature_tokens, mlp, tabular_*)
encoders.

The registry-wide properties (padding, absent samples, determinism, names, bad input) are in test_encoders.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from clinfuse.datasets.batch import ModalityBatch
from clinfuse.datasets.testing import random_modality_batch, random_schema
from clinfuse.encoders import create_encoder
from clinfuse.encoders.clinical import ClinicalMLPEncoder, FeatureTokensEncoder
from clinfuse.encoders.common import sincos_2d
from clinfuse.encoders.images import FeatureBagEncoder
from clinfuse.encoders.pixels import CNNEncoder, ViTEncoder
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

CLIN = random_schema("clinical")
FEAT = random_schema("images", image_kind="features")
PIX = random_schema("images", image_kind="pixels")



def _pixel_batch(images: torch.Tensor, counts: list[int]) -> ModalityBatch:
    """Bags of ``counts[b]`` consecutive images from ``images [M, C, H, W]`` -> an images ModalityBatch."""
    B, N = len(counts), max(max(counts), 1)
    pixels = torch.zeros(B, N, *images.shape[1:])
    mask = torch.zeros(B, N, dtype=torch.bool)
    start = 0
    for b, n in enumerate(counts):
        pixels[b, :n] = images[start:start + n]
        mask[b, :n] = True
        start += n
    names = [[str(i) if m else "" for i, m in enumerate(row)] for row in mask.tolist()]
    tensors = {"pixels": pixels, "coords": torch.full((B, N, 2), float("nan")),
               "position": torch.arange(N).expand(B, N).masked_fill(~mask, 0)}
    slide = [["s" if m else "" for m in row] for row in mask.tolist()]
    return ModalityBatch("images", mask, mask.any(dim=1), tensors, names, {"slide_id": slide})


# ------------------------------------------------------------------------------------------------ feature_bag


@pytest.mark.parametrize(("kwargs", "act"), [({}, lambda z: z), ({"activation": "relu"}, F.relu),
                                             ({"activation": "gelu"}, F.gelu)])
def test_feature_bag_is_linear_activation_layernorm_and_zero_on_padding(kwargs, act) -> None:
    # the default embedding stays linear (activation=None); relu / gelu make it nonlinear
    enc = FeatureBagEncoder.from_schema(FEAT, d_model=8, **kwargs).eval()
    batch = random_modality_batch("images", FEAT, lengths=[4, 2], seed=1)
    out = enc(batch)
    x = batch.tensors["features"]
    expected = F.layer_norm(act(x @ enc.proj.weight.T + enc.proj.bias), (8,), enc.norm.weight, enc.norm.bias)
    assert torch.allclose(out.values[batch.mask], expected[batch.mask], atol=1e-5)
    assert (out.values[~batch.mask] == 0).all()
    assert torch.equal(out.meta["position"], batch.tensors["position"])
    assert out.meta["slide_id"] == batch.meta["slide_id"]


def test_feature_bag_positional_term_follows_coords_and_skips_nan() -> None:
    torch.manual_seed(0)
    plain = FeatureBagEncoder.from_schema(FEAT, d_model=16).eval()
    pos = FeatureBagEncoder.from_schema(FEAT, d_model=16, positional=True).eval()
    pos.load_state_dict(plain.state_dict())
    batch = random_modality_batch("images", FEAT, lengths=[3], seed=2)
    batch.tensors["coords"][0, 1] = float("nan")
    a, b = plain(batch).values[0], pos(batch).values[0]
    assert torch.allclose(a[1], b[1]), "a patch with NaN coords must get no positional term"
    assert not torch.allclose(a[0], b[0]) and not torch.allclose(a[2], b[2])
    assert torch.isfinite(b).all()


@pytest.mark.parametrize(("positional", "activation"),
                         [(False, "relu"), (True, "relu"), (False, "gelu"), (False, None)])
def test_feature_bag_chunked_inference_matches_autograd_path(positional: bool, activation) -> None:
    torch.manual_seed(0)
    enc = FeatureBagEncoder.from_schema(FEAT, d_model=8, positional=positional, activation=activation).eval()
    enc.chunk_rows = 3  # several chunks, the last one partial
    batch = random_modality_batch("images", FEAT, lengths=[7, 2, 4], seed=5)
    batch.tensors["coords"][1, 0] = float("nan")
    with_grad = enc(batch)
    assert with_grad.values.requires_grad
    with torch.no_grad():
        no_grad = enc(batch)
    assert torch.allclose(with_grad.values, no_grad.values, atol=1e-5)
    # frozen weights but features that need gradients still take the autograd path
    enc.requires_grad_(False)
    feats = batch.tensors["features"].clone().requires_grad_(True)
    batch.tensors["features"] = feats
    enc(batch).values.sum().backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def test_sincos_2d() -> None:
    coords = torch.tensor([[0.0, 0.0], [256.0, 512.0], [float("nan"), 3.0]])
    pe = sincos_2d(coords, 10, scale=1 / 256)
    assert pe.shape == (3, 10) and torch.isfinite(pe).all()
    assert (pe[2] == 0).all() and (pe[:, 8:] == 0).all()  # unknown position; 10 // 4 * 4 = 8 channels used
    assert torch.allclose(pe[0, :2], torch.zeros(2)) and torch.allclose(pe[0, 2:4], torch.ones(2))
    assert not torch.allclose(pe[0], pe[1])


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=4), extra=st.integers(1, 5),
       positional=st.booleans())
def test_feature_bag_padding_invariance_property(lengths: list[int], extra: int, positional: bool) -> None:
    torch.manual_seed(0)
    enc = FeatureBagEncoder.from_schema(FEAT, d_model=8, positional=positional).eval()
    batch = random_modality_batch("images", FEAT, lengths=lengths, seed=3)
    longer = random_modality_batch("images", FEAT, lengths=[*lengths[:-1], max(lengths) + extra], seed=3)
    # the same real rows inside a wider padded tensor, with random content in the padding
    B, T = batch.mask.shape
    feats = torch.randn(B, T + extra, FEAT["feature_dim"])
    coords = torch.randn(B, T + extra, 2) * 1000
    feats[:, :T][batch.mask] = batch.tensors["features"][batch.mask]
    coords[:, :T][batch.mask] = batch.tensors["coords"][batch.mask]
    mask = F.pad(batch.mask, (0, extra), value=False)
    padded = ModalityBatch("images", mask, batch.present, {"features": feats, "coords": coords,
                           "position": F.pad(batch.tensors["position"], (0, extra))},
                           [r + [""] * extra for r in batch.names])
    with torch.no_grad():
        a, b = enc(batch), enc(padded)
    assert torch.allclose(a.values[batch.mask], b.values[mask], atol=1e-5)
    assert longer.mask.shape[1] >= T  # the factory itself pads to the longest bag


def test_feature_bag_names_an_unknown_activation() -> None:
    with pytest.raises(ValueError, match=r"feature_bag: activation must be one of \['gelu', 'relu'\]"):
        FeatureBagEncoder.from_schema(FEAT, d_model=8, activation="tanh")


def test_image_encoders_reject_the_other_image_kind() -> None:
    with pytest.raises(ValueError, match="vit"):
        FeatureBagEncoder.from_schema(PIX, d_model=8)
    for cls in (CNNEncoder, ViTEncoder):
        with pytest.raises(ValueError, match="feature_bag"):
            cls.from_schema(FEAT, d_model=8)
    with pytest.raises(ValueError, match="pixels"):
        FeatureBagEncoder.from_schema(FEAT, d_model=8)(random_modality_batch("images", PIX, lengths=[2]))


# -------------------------------------------------------------------------------------------------- vit / cnn


def test_vit_single_image_gives_subpatch_tokens_and_bags_give_image_tokens() -> None:
    torch.manual_seed(0)
    enc = ViTEncoder.from_schema(PIX, d_model=16, patch_size=4).eval()
    images = torch.rand(6, 3, 16, 16)
    batch = _pixel_batch(images, [1, 3, 0, 2])
    out = enc(batch)
    assert out.values.shape == (4, 16, 16)
    assert out.mask.sum(dim=1).tolist() == [16, 3, 0, 2]
    assert out.names[0][:5] == ["0:0_0", "0:0_1", "0:0_2", "0:0_3", "0:1_0"]
    assert out.names[1][:3] == ["0", "1", "2"]
    assert out.meta["subpatch"][0, :16].all() and not out.meta["subpatch"][1].any()
    assert out.meta["coords"][0, 5].tolist() == [4.0, 4.0]  # row 1, col 1 -> top-left pixel (x=4, y=4)
    assert out.meta["position"][0, :16].tolist() == list(range(16)) and out.meta["grid"] == (4, 4)
    assert out.meta["slide_id"][1][:3] == ["s", "s", "s"] and out.meta["slide_id"][2] == [""] * 16
    # the image tokens are the CLS outputs, the same as for that image encoded on its own
    cls_alone = enc.encode_images(images[1:2])[:, 0]
    assert torch.allclose(out.values[1, 0], cls_alone[0], atol=1e-5)
    assert torch.allclose(enc.encode_images(images[0:1])[0, 1:], out.values[0, :16], atol=1e-5)


def test_vit_token_modes_and_uneven_image_size() -> None:
    schema = {"kind": "pixels", "channels": 1, "height": 30, "width": 26}
    images = torch.rand(3, 1, 30, 26)
    as_images = ViTEncoder.from_schema(schema, d_model=8, patch_size=7, tokens="images").eval()
    assert as_images.grid == (5, 4)  # borders zero-padded, no pixel dropped
    assert as_images(_pixel_batch(images, [1, 2])).mask.sum(dim=1).tolist() == [1, 2]
    as_patches = ViTEncoder.from_schema(schema, d_model=8, patch_size=7, tokens="patches").eval()
    out = as_patches(_pixel_batch(images, [1, 2]))
    assert out.mask.sum(dim=1).tolist() == [20, 40] and out.names[1][20] == "1:0_0"
    with pytest.raises(ValueError, match="image_size"):
        as_patches(_pixel_batch(torch.rand(2, 1, 28, 28), [2]))
    with pytest.raises(ValueError, match="tokens"):
        ViTEncoder.from_schema(schema, d_model=8, tokens="pixels")


@pytest.mark.parametrize("cls", [CNNEncoder, ViTEncoder])
def test_weights_file_initialises_and_mismatch_is_clear(cls: type, tmp_path: Path) -> None:
    torch.manual_seed(0)
    src = cls.from_schema(PIX, d_model=8).eval()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    torch.manual_seed(1)
    dst = cls.from_schema(PIX, d_model=8, weights_path=path).eval()
    batch = random_modality_batch("images", PIX, lengths=[2, 1], seed=4)
    assert torch.equal(src(batch).values, dst(batch).values)
    with pytest.raises(ValueError, match="do not match.*missing keys"):
        cls.from_schema(PIX, d_model=16, weights_path=path)
    torch.save({"state_dict": {"bogus": torch.zeros(1)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="unexpected keys: bogus"):
        cls.from_schema(PIX, d_model=8, weights_path=tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="never downloaded"):
        cls.from_schema(PIX, d_model=8, weights_path=tmp_path / "missing.pt")


def test_cnn_any_image_size_and_channel_check() -> None:
    enc = CNNEncoder(in_channels=2, d_model=8, width=8, n_layers=2).eval()
    for h, w in ((5, 9), (32, 20)):
        out = enc(_pixel_batch(torch.rand(3, 2, h, w), [2, 1]))
        assert out.values.shape == (2, 2, 8) and torch.isfinite(out.values).all()
    with pytest.raises(ValueError, match="channels"):
        enc(_pixel_batch(torch.rand(2, 3, 8, 8), [2]))


def test_breastmnist_images_encode_and_train(shared_path) -> None:
    data = np.load(shared_path("breastmnist", "breastmnist.npz"))
    # [16, 1, 28, 28]
    images = torch.from_numpy(data["train_images"][:16].astype(np.float32) / 255.0)[:, None]
    labels = torch.from_numpy(data["train_labels"][:16].astype(np.int64))
    schema = {"kind": "pixels", "channels": 1, "height": 28, "width": 28}
    batch = _pixel_batch(images, [1] * 16)  # one ultrasound image per patient
    torch.manual_seed(0)
    vit = create_encoder("vit", in_channels=1, image_size=(28, 28), d_model=16)
    cnn = CNNEncoder.from_schema(schema, d_model=16, width=8)
    with torch.no_grad():
        v, c = vit.eval()(batch), cnn.eval()(batch)
    assert v.mask.sum(dim=1).eq(16).all() and v.names[0][15] == "0:3_3"  # 7-pixel sub-patches: a 4 x 4 map
    assert c.values.shape == (16, 1, 16) and torch.isfinite(v.values).all() and torch.isfinite(c.values).all()
    # trainable end to end: a few steps on a fixed batch lower the loss of a mean-pooled linear probe
    head = torch.nn.Linear(16, 2)
    opt = torch.optim.Adam([*vit.parameters(), *head.parameters()], lr=3e-3)
    vit.train()
    losses = []
    for _ in range(8):
        tok = vit(batch)
        pooled = (tok.values * tok.mask[..., None]).sum(1) / tok.mask.sum(1, keepdim=True)
        loss = F.cross_entropy(head(pooled), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------------------------------- clinical


def _clinical(numeric: list[list[float]], missing: list[list[bool]], cats: list[list[int]]) -> ModalityBatch:
    B = len(numeric)
    cols = CLIN["numeric"] + list(CLIN["categorical"])
    tensors = {"numeric": torch.tensor(numeric), "numeric_missing": torch.tensor(missing),
               "categorical": torch.tensor(cats, dtype=torch.long)}
    return ModalityBatch("clinical", torch.ones(B, len(cols), dtype=torch.bool),
                         torch.ones(B, dtype=torch.bool),
                         tensors, [list(cols) for _ in range(B)])


def test_feature_tokens_numeric_missing_and_categorical_embeddings() -> None:
    torch.manual_seed(0)
    enc = FeatureTokensEncoder.from_schema(CLIN, d_model=8).eval()
    batch = _clinical([[0.0, 1.0, 2.0], [0.0, 5.0, -1.0], [0.0, 0.0, 0.0]],
                      [[False, False, False], [True, False, False], [True, True, True]],
                      [[0, 1], [2, 3], [4, 0]])
    v = enc(batch).values
    # numeric: value * w + b, so tokens are affine in the value
    assert torch.allclose(v[0, 1] - v[0, 0], enc.num_weight[1] * 1.0 + enc.num_bias[1] - enc.num_bias[0])
    assert torch.allclose(v[0, 2], 2.0 * enc.num_weight[2] + enc.num_bias[2])
    # missing: the learned per-variable embedding, never zero, whatever value is stored
    assert torch.allclose(v[1, 0], enc.num_missing[0]) and torch.allclose(v[2, 0], v[1, 0])
    assert v[2, :3].abs().sum(dim=1).gt(0).all() and not torch.allclose(v[2, 0], v[2, 1])
    # categorical: missing (0), unknown (1) and categories are distinct rows of each column's own table
    grade = torch.stack([v[0, 3], v[1, 3], v[2, 3]])
    assert torch.cdist(grade, grade).add(torch.eye(3)).gt(0).all()
    assert not torch.allclose(v[2, 4], v[0, 3])  # er missing != grade missing
    with pytest.raises(ValueError, match=r"\['grade'\]"):
        enc(_clinical([[0.0] * 3], [[False] * 3], [[5, 0]]))
    with pytest.raises(ValueError, match=r"\['er'\]"):
        enc(_clinical([[0.0] * 3], [[False] * 3], [[0, -1]]))
    with pytest.raises(TypeError, match="integer"):
        enc(ModalityBatch("clinical", batch.mask, batch.present, {**batch.tensors, "categorical":
                          batch.tensors["categorical"].float()}, batch.names))


@pytest.mark.parametrize("name", ["mlp", "tabular_ft_transformer", "tabular_category_embedding"])
def test_missing_indicator_is_an_input(name: str) -> None:
    """A missing value (stored as 0.0) and an observed 0.0 give different tokens: missingness is seen."""
    torch.manual_seed(0)
    enc = create_encoder(name, numeric=CLIN["numeric"], categorical=CLIN["categorical"], d_model=8).eval()
    out = enc(_clinical([[0.0, 0.3, 0.1]] * 2, [[False, False, False], [True, False, False]], [[2, 3]] * 2))
    assert not torch.allclose(out.values[0], out.values[1], atol=1e-4)


def test_single_token_encoders_name_the_token_clinical() -> None:
    enc = ClinicalMLPEncoder.from_schema(CLIN, d_model=8)
    batch = random_modality_batch("clinical", CLIN, present=[True, False])
    out = enc(batch)
    assert out.names == [["clinical"], [""]] and out.mask.tolist() == [[True], [False]]
    ft = create_encoder("tabular_ft_transformer", numeric=CLIN["numeric"], categorical=CLIN["categorical"],
                        d_model=8, output="cls")
    assert ft(batch).names == [["clinical"], [""]]


def test_pytorch_tabular_backbones_are_embedded_submodules() -> None:
    from pytorch_tabular.models.category_embedding.category_embedding_model import CategoryEmbeddingBackbone
    from pytorch_tabular.models.ft_transformer.ft_transformer import FTTransformerBackbone

    ft = create_encoder("tabular_ft_transformer", numeric=CLIN["numeric"],
                        categorical=CLIN["categorical"], d_model=8)
    ce = create_encoder("tabular_category_embedding", numeric=CLIN["numeric"],
                        categorical=CLIN["categorical"],
                        d_model=8, layers="16-8")
    assert isinstance(ft.backbone, FTTransformerBackbone) and isinstance(ce.backbone,
                                                                         CategoryEmbeddingBackbone)
    assert any(k.startswith("backbone.") for k in ft.state_dict()) and ce.backbone.output_dim == 8
    assert ft.embedding.continuous_dim == 2 * len(CLIN["numeric"])  # values + missing indicators
    with pytest.raises(ValueError, match="layers"):
        create_encoder("tabular_category_embedding", numeric=["a"], categorical={}, d_model=8, layers="16-x")
    with pytest.raises(ValueError, match="divisible"):
        create_encoder("tabular_ft_transformer", numeric=["a"], categorical={}, d_model=8, n_heads=3)


def test_clinical_schema_errors() -> None:
    with pytest.raises(ValueError, match="no columns"):
        FeatureTokensEncoder(numeric=[], categorical={}, d_model=8)
    with pytest.raises(TypeError, match="numeric"):
        FeatureTokensEncoder(numeric="age", categorical={}, d_model=8)
    with pytest.raises(ValueError, match="unique"):
        ClinicalMLPEncoder(numeric=["a"], categorical={"a": ["x"]}, d_model=8)
    only_cat = FeatureTokensEncoder(numeric=[], categorical={"g": ["1", "2"]}, d_model=4)
    batch = random_modality_batch("clinical", {"numeric": [], "categorical": {"g": ["1", "2"]}}, batch_size=2)
    assert only_cat(batch).values.shape == (2, 1, 4)


def test_real_cohorts_encode_through_the_data_layer(shared_path) -> None:
    """BreastMNIST (val split) and GSE7390 clinical: loader -> Preprocessor -> make_loader -> every
    encoder."""
    from clinfuse.datasets import Preprocessor, load_breastmnist, load_gse7390, make_loader
    from clinfuse.encoders import ENCODERS, default_encoder, list_encoders

    cohort = load_breastmnist(shared_path("breastmnist"), split="val")
    pre = Preprocessor().fit(cohort)
    images = next(iter(make_loader(cohort, pre, batch_size=4))).modalities["images"]
    assert default_encoder("images", pre.schema_["images"]) == "vit"
    for name in ("vit", "cnn"):
        tokens = ENCODERS.get(name).from_schema(pre.schema_["images"], d_model=8).eval()(images)
        assert torch.isfinite(tokens.values).all() and tokens.mask.any(dim=1).all()
    cohort = load_gse7390(shared_path("gse7390_etc"))
    pre = Preprocessor().fit(cohort)
    clinical = next(iter(make_loader(cohort, pre, batch_size=8))).modalities["clinical"]
    columns = pre.schema_["clinical"]["numeric"] + list(pre.schema_["clinical"]["categorical"])
    for name in list_encoders("clinical"):
        tokens = ENCODERS.get(name).from_schema(pre.schema_["clinical"], d_model=8).eval()(clinical)
        assert torch.isfinite(tokens.values).all()
        assert tokens.names[0] == (columns if tokens.values.shape[1] > 1 else ["clinical"])
