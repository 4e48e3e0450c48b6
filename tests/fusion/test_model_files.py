"""A damaged model folder fails at load, before anything is built, naming the file and the field."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from clinfuse.datasets.output_folders import write_manifest
from clinfuse.fusion import FusionModel
from clinfuse.fusion.model_files import validate_folder


@pytest.fixture(scope="module")
def saved(fitted_classifier, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    fitted_classifier.model.save(path)
    return path


@pytest.fixture
def copy(saved, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved, target)
    return target


def _edit(folder, name, change):
    data = json.loads((folder / name).read_text())
    change(data)
    (folder / name).write_text(json.dumps(data, indent=2))
    write_manifest(folder)  # a consistent edit: the content checks, not the manifest, must catch it


def _load_fails(folder, match):
    with pytest.raises(ValueError, match=match):
        FusionModel.load(folder)


def test_an_intact_folder_validates(saved):
    contents = validate_folder(saved)
    assert contents["config.json"]["format_version"] >= 4
    assert contents["weights_shapes"]["token_types.type_embedding"][-1] == contents["config.json"]["network"][
        "d_model"]


def test_std_zero_in_preprocessor_json(copy):
    _edit(copy, "preprocessor.json", lambda d: d["fitted"]["clinical"]["std"].__setitem__(1, 0.0))
    _load_fails(copy, r"preprocessor\.json: field fitted\.clinical\.std\[1\]: expected a finite number > 0")


def test_non_finite_statistic_in_preprocessor_json(copy):
    text = (copy / "preprocessor.json").read_text()
    data = json.loads(text)
    data["fitted"]["genomics"]["mean"][0] = float("nan")
    (copy / "preprocessor.json").write_text(json.dumps(data))  # json writes NaN, which Python reads back
    write_manifest(copy)
    _load_fails(copy, r"field fitted\.genomics\.mean\[0\]: expected a finite number, got nan")


def test_shortened_mean_list(copy):
    _edit(copy, "preprocessor.json", lambda d: d["fitted"]["clinical"]["mean"].pop())
    _load_fails(copy, r"preprocessor\.json: field fitted\.clinical\.mean: has \d+ values, expected \d+")


@pytest.mark.parametrize("name", ["config.json", "fitted.json", "preprocessor.json"])
def test_invalid_json_names_the_file_and_line(copy, name):
    text = (copy / name).read_text()
    (copy / name).write_text(text.replace(",", "", 1))
    write_manifest(copy)
    _load_fails(copy, rf"{name}: not valid JSON at line \d+, column \d+")


@pytest.mark.parametrize(("name", "change", "match"), [
    ("fitted.json", lambda d: d.pop("classes_"), r"fitted\.json: field classes_: missing"),
    ("fitted.json", lambda d: d.__setitem__("classes_", ["a"]),
     r"fitted\.json: field classes_: expected a list"),
    ("config.json", lambda d: d.pop("network"), r"config\.json: field network: missing"),
    ("config.json", lambda d: d["network"].__setitem__("class_names", ["x"]),
     r"config\.json: field network\.class_names: has 1 names for n_outputs=2"),
    ("config.json", lambda d: d["params"].__setitem__("task", 3), r"config\.json: field params\.task"),
    ("config.json", lambda d: d["network"]["aggregator"].pop("kwargs"),
     r"config\.json: field network\.aggregator\.kwargs: missing"),
])
def test_missing_or_mistyped_fields(copy, name, change, match):
    _edit(copy, name, change)
    _load_fails(copy, match)


def test_fitted_json_that_is_not_an_object(copy):
    (copy / "fitted.json").write_text("[1, 2]")
    write_manifest(copy)
    _load_fails(copy, r"fitted\.json: field \(top level\): expected a JSON object")


def test_an_edited_d_model_fails_in_milliseconds_naming_the_field(copy):
    _edit(copy, "config.json", lambda d: d["network"].__setitem__("d_model", 16000))
    start = time.perf_counter()
    _load_fails(copy, r"config\.json: field network\.d_model: 16000, but weights\.pt was saved with width")
    assert time.perf_counter() - start < 2.0


def test_other_size_edits_are_checked_against_the_weights_shapes(copy):
    def more_layers(d):
        kwargs = d["network"]["aggregator"]["kwargs"]
        key = next(k for k in ("n_layers", "n_heads") if k in kwargs)
        kwargs[key] = kwargs[key] * 2
    _edit(copy, "config.json", more_layers)
    _load_fails(copy, r"weights\.pt does not fit")


def test_cli_prints_one_line_for_a_damaged_folder(copy, tmp_path, capsys):
    from clinfuse.fusion.cli import main

    _edit(copy, "config.json", lambda d: d["network"].__setitem__("d_model", 16000))
    data = tmp_path / "data.yaml"
    data.write_text("clinical: nothing.csv\n")
    assert main(["predict", "--model", str(copy), "--data", str(data), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "config.json: field network.d_model: 16000" in err


def test_a_persam_folder_saved_before_the_instance_gate_loads_without_it(fitted_classifier, tmp_path):
    """A configuration written before PersAM had ``center_evidence`` / ``instance_gate_penalty`` lacks both
    keywords: it must rebuild the ungated, uncentred aggregator it was trained as (not today's default) and
    reproduce its predictions; a folder written now keeps its gate."""
    import numpy as np
    from clinfuse.fusion.persistence import EARLIER_DEFAULTS, with_earlier_defaults

    params = {**fitted_classifier.model.get_params(), "max_epochs": 1,
              "aggregator_kwargs": {"center_evidence": False, "instance_gate_penalty": None}}
    old = FusionModel(**params).fit(fitted_classifier.train)
    folder = tmp_path / "model"
    old.save(folder)
    _edit(folder, "config.json", lambda c: [c["network"]["aggregator"]["kwargs"].pop(k)
                                            for k in EARLIER_DEFAULTS["persam"]])
    loaded = FusionModel.load(folder)
    assert loaded.network_.aggregator.instance_gate is None and not loaded.network_.aggregator.center_evidence
    np.testing.assert_allclose(loaded.predict_proba(fitted_classifier.test).to_numpy(),
                               old.predict_proba(fitted_classifier.test).to_numpy(), atol=1e-6)
    now = FusionModel.load(fitted_classifier.model.save(tmp_path / "now"))
    assert now.network_.aggregator.instance_gate is not None and now.network_.aggregator.center_evidence
    kept = {"aggregator": {"name": "persam",
                           "kwargs": {"center_evidence": True, "instance_gate_penalty": 0.5}}}
    assert with_earlier_defaults(kept) == kept
    assert with_earlier_defaults(kept, every=True)["aggregator"]["kwargs"] == EARLIER_DEFAULTS["persam"]
