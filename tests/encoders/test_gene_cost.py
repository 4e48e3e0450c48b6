"""The default model's cost on gene panels is linear in the number of genes (issue 13, speed on gene panels).

Counted, not timed: ``torch.utils.flop_counter.FlopCounterMode`` counts the matmul FLOPs of a training
step (forward + backward) of the default ``FusionModel(task="survival")`` network, built for clinical + G
genes as ``fit`` builds it, and a dispatch mode records every fused attention call (which the FLOP counter
does not count on CPU) with its query and key counts. Full self-attention among the gene tokens made
that work grow as G^2.
"""

from __future__ import annotations

import pytest
import torch
from clinfuse.datasets import Cohort, Preprocessor, make_loader, make_synthetic_cohort
from clinfuse.fusion import FusionModel
from clinfuse.fusion.build import build_network, resolve_network_config
from clinfuse.fusion.persistence import _format3_network
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


class _Attention(TorchDispatchMode):
    """Records ``(B * H, Tq, Tk, dh)`` of every scaled-dot-product attention op (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, int, int, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if "scaled_dot_product" in func.__name__:
            q, k = args[0], args[1]
            self.calls.append((q.shape[0] * q.shape[1], q.shape[2], k.shape[2], q.shape[3]))
        return func(*args, **(kwargs or {}))

    def flops(self) -> int:
        return sum(4 * bh * tq * tk * dh for bh, tq, tk, dh in self.calls)  # QK^T and AV, 2 FLOPs a MAC


def _gene_cohort(n_genes: int, task: str = "survival") -> Cohort:
    c, _ = make_synthetic_cohort(12, task=task, modalities=("clinical", "genomics"), n_genes=n_genes,
                                 missing_rate=0.0, seed=0)
    # no gene sets: the genes themselves are the tokens, as for a user's expression table
    return Cohort(clinical=c.clinical, genomics=c.genomics, survival=c.survival, labels=c.labels)


def _default_network(cohort: Cohort, **params):
    pre = Preprocessor(top_genes=None).fit(cohort)
    config = resolve_network_config(pre.schema_, {**FusionModel(task="survival").get_params(), **params},
                                    n_outputs=4, class_names=["0", "1", "2", "3"])
    torch.manual_seed(0)
    return build_network(pre.schema_, config), config, pre


def _training_step(n_genes: int, **params) -> tuple[int, _Attention]:
    """Matmul FLOPs and the attention calls of one training step (forward + backward) on 4 samples."""
    cohort = _gene_cohort(n_genes)
    net, _, pre = _default_network(cohort, **params)
    batch = next(iter(make_loader(cohort, pre, batch_size=4)))
    net.train()
    with FlopCounterMode(display=False) as counter, _Attention() as attention:
        net(batch).outputs.sum().backward()
    return int(counter.get_total_flops()), attention


def _step_flops(n_genes: int, **params) -> int:
    flops, attention = _training_step(n_genes, **params)
    return flops + attention.flops()


def test_default_model_forms_no_attention_among_gene_tokens():
    n_genes = 300
    net, config, _ = _default_network(_gene_cohort(n_genes))
    assert config["encoders"]["genomics"]["name"] == "gene_transformer"
    assert len(net.encoders["genomics"].transformer.layers) == 0
    _, attention = _training_step(n_genes)
    among_genes = [c for c in attention.calls if c[1] >= n_genes and c[2] >= n_genes]
    assert not among_genes, f"G x G attention formed: {among_genes}"


def test_gene_set_tokens_keep_their_layer_by_default():
    cohort, _ = make_synthetic_cohort(12, task="survival", modalities=("clinical", "genomics"), n_genes=40,
                                      missing_rate=0.0, seed=0)
    net, config, _ = _default_network(cohort)
    assert config["encoders"]["genomics"]["kwargs"]["n_layers"] is None  # resolved by the schema, as
    assert config["encoders"]["genomics"]["kwargs"]["use_gene_sets"] is None  # use_gene_sets is
    assert net.encoders["genomics"].use_gene_sets and len(net.encoders["genomics"].transformer.layers) == 1


def test_default_training_step_costs_flops_linear_in_genes():
    small, large = _step_flops(256), _step_flops(1024)
    assert large / small < 4.4, (small, large)  # 4x the genes: at most 4x (+10%) the work, not 16x


@pytest.mark.slow  # over half a second: CI runs it, the quick suite does not
def test_gene_attention_layers_are_still_available_and_quadratic():
    # the option stays: one full layer among 1024 gene tokens costs far more than 4x that of 256
    small, large = (_step_flops(g, encoder_kwargs={"genomics": {"n_layers": 1}}) for g in (256, 1024))
    assert large / small > 6.0, (small, large)


@pytest.mark.parametrize("given,want", [(None, 1), (2, 2)])
def test_format3_folders_keep_the_gene_layers_they_were_trained_with(given, want):
    """A format-3 folder stored only FusionModel's params; n_layers=None meant gene_transformer's default
    then, which was 1."""
    cohort = _gene_cohort(20)
    pre = Preprocessor(top_genes=None).fit(cohort)
    params = {**FusionModel(task="survival").get_params(), "n_layers": given}
    config = _format3_network(pre.schema_, params, {"time_bins_": [0.0, 1.0, 2.0, 3.0, 4.0]})
    assert config["encoders"]["genomics"]["kwargs"]["n_layers"] == want
    kept = _format3_network(pre.schema_, {**params, "n_layers": None,
                                          "encoder_kwargs": {"genomics": {"n_layers": 0}}},
                            {"time_bins_": [0.0, 1.0, 2.0, 3.0, 4.0]})
    assert kept["encoders"]["genomics"]["kwargs"]["n_layers"] == 0


def test_without_layers_training_dropout_drops_whole_gene_values():
    """Each gene token in training is either the token of the (rescaled) value or that of value 0 (its
    gene embedding only), never a token with some of its d features zeroed."""
    from clinfuse.datasets.testing import random_modality_batch, random_schema
    from clinfuse.encoders.genomics import GeneTransformer

    schema = random_schema("genomics")
    batch = random_modality_batch("genomics", schema, present=[True, True, True], seed=3)
    torch.manual_seed(0)
    enc = GeneTransformer(genes=schema["genes"], d_model=16, n_heads=2, dropout=0.5).train()
    values = batch.tensors["values"]
    kept = enc.transformer(enc.norm_in(enc.gene_embedding + (values / 0.5).unsqueeze(-1) * enc.value_weight),
                           batch.mask)
    dropped = enc.transformer(enc.norm_in(enc.gene_embedding.expand_as(kept)), batch.mask)
    with torch.no_grad():
        got = enc(batch).values
        is_kept = (got - kept).abs().amax(-1) < 1e-5
        is_dropped = (got - dropped).abs().amax(-1) < 1e-5
    assert bool((is_kept | is_dropped).all())
    assert bool(is_kept.any()) and bool((is_dropped & ~is_kept).any())
    enc.eval()
    with torch.no_grad():  # at inference nothing is dropped
        plain = enc.transformer(enc.norm_in(enc.gene_embedding + values.unsqueeze(-1) * enc.value_weight),
                                batch.mask)
        assert torch.allclose(enc(batch).values, plain, atol=1e-6)
