"""One construction path: the resolved network configuration, shared keywords, and the saved config.json."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from clinfuse.datasets.output_folders import write_manifest
from clinfuse.fusion import FusionModel
from clinfuse.fusion.build import (
    build_network,
    component_defaults,
    resolve_network_config,
    shared_keywords_of,
)

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "reference_models"
TINY = {"d_model": 16, "n_heads": 2, "max_epochs": 1, "validation_fraction": 0.0, "verbose": False, "seed": 0}


@pytest.fixture(scope="module")
def saved(small_cohort, tmp_path_factory):
    model = FusionModel(**TINY).fit(small_cohort)
    return model, model.save(tmp_path_factory.mktemp("build") / "model")


@pytest.fixture(scope="module")
def schema():
    """A schema with all four modalities, pixel images (so the ViT is built)."""
    from clinfuse.datasets import Preprocessor, make_synthetic_cohort

    cohort, _ = make_synthetic_cohort(12, n_patches=(2, 4), feature_dim=8, n_genes=12, n_codes=6, seed=0)
    schema = dict(Preprocessor().fit(cohort).schema_)
    schema["images"] = {"kind": "pixels", "channels": 3, "height": 8, "width": 8}
    return schema


def _components(config):
    """(registered name, class, resolved kwargs, where in the network) of each encoder, the aggregator and
    the head."""
    from clinfuse.encoders import ENCODERS
    from clinfuse.fusion.base import AGGREGATORS
    from clinfuse.fusion.build import HEADS

    return ([(s["name"], ENCODERS.get(s["name"]), s["kwargs"], m) for m, s in config["encoders"].items()]
            + [(config["aggregator"]["name"], AGGREGATORS.get(config["aggregator"]["name"]),
                config["aggregator"]["kwargs"], "aggregator"),
               (config["head"]["name"], HEADS[config["head"]["name"]][0], config["head"]["kwargs"], "head")])


def _module(net, where):
    return getattr(net, where) if where in ("aggregator", "head") else net.encoders[where]


def _n_layers(module) -> int:
    """Transformer layers of the encoders (``transformer.layers``), PersAM (``encoder.layers``) or
    self-attention (``blocks``)."""
    for attr in ("transformer", "encoder"):
        if hasattr(getattr(module, attr, None), "layers"):
            return len(getattr(module, attr).layers)
    return len(module.blocks)


def _resolve(schema, **params):
    model = FusionModel(**{**TINY, **params})
    return resolve_network_config(schema, model.get_params(), n_outputs=2, class_names=["a", "b"])


# ------------------------------------------------------------------------------------------- the config
def test_the_resolved_config_is_saved_and_a_format4_folder_reloads_identically(saved, small_cohort):
    model, path = saved
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == 4
    assert config["params"] == json.loads(json.dumps(model.get_params()))
    assert config["network"] == model.network_config_
    genomics = config["network"]["encoders"]["genomics"]
    assert genomics["name"] == "gene_transformer"
    assert not {"genes", "gene_sets", "d_model"} & set(genomics["kwargs"])  # the schema supplies them
    assert not {"numeric", "categorical"} & set(config["network"]["encoders"]["clinical"]["kwargs"])
    loaded = FusionModel.load(path)
    assert loaded.network_config_ == model.network_config_ and loaded.get_params() == model.get_params()
    pd.testing.assert_frame_equal(loaded.predict_proba(small_cohort), model.predict_proba(small_cohort))


def test_a_format3_reference_folder_resaves_as_format4_and_reloads_identically(tmp_path):
    from clinfuse.fusion.config import load_data_config

    folder = REFERENCE / "persam_classification"
    old = FusionModel.load(folder / "model")
    # format 3: the shared n_heads / n_layers / dropout reached the components that took them
    assert old.network_config_["aggregator"]["kwargs"]["n_layers"] == 1
    assert old.network_config_["aggregator"]["kwargs"]["n_heads"] == 2
    # a keyword added since format 3 builds what format 3 built: a linear patch embedding
    assert old.network_config_["encoders"]["images"]["kwargs"]["activation"] is None
    new = FusionModel.load(old.save(tmp_path / "v4"))
    assert json.loads((tmp_path / "v4" / "config.json").read_text())["format_version"] == 4
    assert new.network_config_ == old.network_config_
    cohort = load_data_config(folder / "data.yaml").to_cohort(task=old.task, require_targets=True)
    pd.testing.assert_frame_equal(new.predict_proba(cohort), old.predict_proba(cohort))


# ------------------------------------------------------------------------------------- shared keywords
def test_n_layers_none_leaves_every_component_its_own_default(schema):
    config = _resolve(schema, n_layers=None, encoders={"images": "vit"})
    net = build_network(schema, config)
    for name, cls, kwargs, where in _components(config):
        own = json.loads(json.dumps(component_defaults(cls)))
        given = {"n_heads", "dropout"} & shared_keywords_of(cls)  # TINY sets these two
        assert {k: v for k, v in kwargs.items() if k not in given} == \
            {k: v for k, v in own.items() if k in kwargs and k not in given}, name
        # complete: every keyword with a default but those the builder supplies (from the schema, the targets)
        supplied = {"d_model", "gene_sets", "has_values", "n_outputs", "class_names"}
        assert set(own) - set(kwargs) <= supplied, name
        if "n_layers" in shared_keywords_of(cls):
            module, want = _module(net, where), own["n_layers"]
            if want is None:  # gene_transformer: 1 layer among gene-set tokens, none among gene tokens
                want = 1 if module.use_gene_sets else 0
            assert _n_layers(module) == want, name
    assert _n_layers(net.encoders["images"]) == 2  # the ViT's own default


def test_shared_n_layers_and_ffn_mult_reach_every_component_that_has_the_concept(schema):
    for aggregator in ("persam", "self_attention"):
        config = _resolve(schema, n_layers=3, ffn_mult=3, aggregator=aggregator, encoders={"images": "vit"},
                          encoder_kwargs={"clinical": {"dropout": 0.0}})
        net = build_network(schema, config)
        reached = []
        for name, cls, kwargs, where in _components(config):
            if "n_layers" in shared_keywords_of(cls):
                reached.append(name)
                assert kwargs["n_layers"] == 3, name
                assert _n_layers(_module(net, where)) == 3, name
            if "ffn_mult" in shared_keywords_of(cls):
                assert kwargs["ffn_mult"] == 3, name
        assert {"gene_transformer", "event_transformer", aggregator} <= set(reached)
        assert config["encoders"]["clinical"]["kwargs"]["dropout"] == 0.0  # the user's keyword wins
        assert config["head"]["kwargs"]["dropout"] == 0.1


def test_unknown_keywords_and_modalities_are_named(schema):
    with pytest.raises(ValueError, match=r"gene_transformer.*n_layerz"):
        _resolve(schema, encoder_kwargs={"genomics": {"n_layerz": 2}})
    with pytest.raises(ValueError, match="encoder_kwargs names modality"):
        _resolve(schema, encoder_kwargs={"pixels": {"n_layers": 2}})
    with pytest.raises(ValueError, match="feature_tokens"):
        _resolve(schema, encoders={"genomics": "feature_tokens"})


# ------------------------------------------------------------------------------------ saved config.json
def _edit(path: Path, edit) -> None:
    config = json.loads((path / "config.json").read_text())
    edit(config)
    (path / "config.json").write_text(json.dumps(config))
    write_manifest(path)  # a deliberate edit: past the manifest check, to the config's own checks


def test_an_unknown_keyword_in_a_saved_config_is_named(saved, tmp_path):
    import shutil

    _, path = saved
    bad = Path(shutil.copytree(path, tmp_path / "bad"))
    _edit(bad, lambda c: c["network"]["encoders"]["genomics"]["kwargs"].update(n_layerz=2))
    with pytest.raises(ValueError, match=r"config\.json.*gene_transformer.*n_layerz"):
        FusionModel.load(bad)
    _edit(bad, lambda c: c["network"]["encoders"]["genomics"]["kwargs"].pop("n_layerz"))
    _edit(bad, lambda c: c["network"]["aggregator"].update(name="nope"))
    with pytest.raises(ValueError, match=r"unknown aggregator 'nope'; registered: .*persam"):
        FusionModel.load(bad)


def test_a_relu_patch_embedding_is_saved_and_a_config_without_the_keyword_builds_the_linear_one(tmp_path):
    import shutil

    from clinfuse.datasets import make_synthetic_cohort

    cohort, _ = make_synthetic_cohort(24, modalities=("clinical", "images"), n_patches=(2, 5), feature_dim=6,
                                      seed=4)
    linear = FusionModel(**TINY).fit(cohort)
    assert linear.network_config_["encoders"]["images"]["kwargs"]["activation"] is None
    relu = FusionModel(**TINY, encoder_kwargs={"images": {"activation": "relu"}}).fit(cohort)
    loaded = FusionModel.load(relu.save(tmp_path / "relu"))
    assert loaded.network_config_["encoders"]["images"]["kwargs"]["activation"] == "relu"
    pd.testing.assert_frame_equal(loaded.predict_proba(cohort), relu.predict_proba(cohort))
    assert not np.allclose(relu.predict_proba(cohort), linear.predict_proba(cohort))
    # a format-4 folder saved before the keyword existed has no "activation": it builds the linear embedding
    before = Path(shutil.copytree(linear.save(tmp_path / "linear"), tmp_path / "before"))
    _edit(before, lambda c: c["network"]["encoders"]["images"]["kwargs"].pop("activation"))
    old = FusionModel.load(before)
    pd.testing.assert_frame_equal(old.predict_proba(cohort), linear.predict_proba(cohort))


@pytest.mark.parametrize("version", [1, 2])
def test_folders_older_than_format3_are_refused_with_the_retrain_message(saved, tmp_path, version):
    import shutil

    _, path = saved
    old = Path(shutil.copytree(path, tmp_path / f"v{version}"))
    _edit(old, lambda c: c.update(format_version=version))
    with pytest.raises(ValueError, match=rf"{old.name}.*format_version {version}.*retrain"):
        FusionModel.load(old)


def test_every_component_declares_exactly_the_shared_keywords_its_constructor_has():
    from clinfuse.encoders import ENCODERS
    from clinfuse.fusion.base import AGGREGATORS
    from clinfuse.fusion.build import HEADS, SHARED_KEYWORDS

    classes = [ENCODERS.get(n) for n in ENCODERS.names()] + [AGGREGATORS.get(n) for n in AGGREGATORS.names()]
    classes += [cls for cls, _ in HEADS.values()]
    for cls in classes:
        takes = {k for k in SHARED_KEYWORDS if k in inspect.signature(cls.__init__).parameters}
        assert set(shared_keywords_of(cls)) == takes, cls.__name__


def test_earlier_keyword_names_are_accepted_with_a_warning_and_stored_under_the_current_name(schema):
    with pytest.warns(DeprecationWarning, match="'depth' is now called 'n_layers'"):
        config = _resolve(schema, encoders={"images": "vit"}, encoder_kwargs={"images": {"depth": 3}})
    assert config["encoders"]["images"]["kwargs"]["n_layers"] == 3
    assert "depth" not in config["encoders"]["images"]["kwargs"]
    with pytest.warns(DeprecationWarning, match="instance_ffn_mult"):
        config = _resolve(schema, aggregator_kwargs={"instance_ffn_mult": 2})
    assert config["aggregator"]["kwargs"]["ffn_mult"] == 2
    with pytest.raises(ValueError, match="earlier name of 'ffn_mult'"):
        _resolve(schema, aggregator_kwargs={"instance_ffn_mult": 2, "ffn_mult": 2})


# ------------------------------------------------------------------------------- user components
def test_user_components_keep_their_own_keywords_and_inherit_through_kwargs(schema):
    """A user's encoder may call a keyword ``depth`` (the renames are for the built-ins only), may do work
    in ``from_schema`` after constructing, and a subclass taking ``**kwargs`` still gets the shared and
    inherited keywords."""
    from clinfuse.encoders import ENCODERS
    from clinfuse.encoders.genomics import GeneTransformer
    from clinfuse.fusion.aggregators.persam import PersAM
    from clinfuse.fusion.base import AGGREGATORS

    class DeepGenes(GeneTransformer):
        def __init__(self, *, depth: int = 1, **kwargs):
            super().__init__(**kwargs)
            self.depth = depth

        @classmethod
        def from_schema(cls, schema, *, d_model, **kwargs):
            encoder = super().from_schema(schema, d_model=d_model, **kwargs)
            encoder.extra = encoder.depth * 2  # work after constructing: the builder must not trip on it
            return encoder

    class WiderPersAM(PersAM):
        def __init__(self, *, extra: int = 1, **kwargs):
            super().__init__(**kwargs)
            self.extra = extra

    ENCODERS.register("deep_genes", modalities=("genomics",))(DeepGenes)
    AGGREGATORS.register("wider_persam")(WiderPersAM)
    try:
        config = _resolve(schema, n_heads=2, encoders={"genomics": "deep_genes"}, aggregator="wider_persam",
                          encoder_kwargs={"genomics": {"depth": 3}}, aggregator_kwargs={"n_latents": 8})
        genes, agg = config["encoders"]["genomics"]["kwargs"], config["aggregator"]["kwargs"]
        assert genes["depth"] == 3 and "n_layers" in genes and genes["n_heads"] == 2
        assert agg["n_latents"] == 8 and agg["n_heads"] == 2 and agg["extra"] == 1
        net = build_network(schema, config)
        assert net.encoders["genomics"].extra == 6 and net.aggregator.n_heads == 2
    finally:
        ENCODERS.unregister("deep_genes")
        AGGREGATORS.unregister("wider_persam")


def test_live_name_views_add_pickle_and_copy_as_the_one_view():
    import copy
    import pickle

    from clinfuse.datasets import MODALITIES, TOKEN_KIND
    from clinfuse.fusion import ATTENTION_KINDS

    assert ATTENTION_KINDS + ("shap",) == (*ATTENTION_KINDS, "shap")
    assert ("x",) + MODALITIES == ("x", *MODALITIES)
    assert list(ATTENTION_KINDS)[:5] == ["modality", "feature", "gene", "event", "patch"]
    for view in (MODALITIES, TOKEN_KIND, ATTENTION_KINDS):
        assert pickle.loads(pickle.dumps(view)) is view and copy.deepcopy(view) is view
