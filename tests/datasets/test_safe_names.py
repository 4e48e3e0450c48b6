"""File names derived from ids: ``file_stem`` and the files written under it (write_cohort_files, explain)
stay inside the folder they were given, whatever the id holds, and keep the true id beside them."""

from __future__ import annotations

import json
import re
import uuid

import numpy as np
import pandas as pd
import pytest
import yaml
from clinfuse.datasets import Cohort, ImageBags, make_synthetic_cohort
from clinfuse.fusion import FusionModel
from clinfuse.fusion.cli import main
from clinfuse.fusion.commands import write_attention
from clinfuse.fusion.config import load_data_config, write_cohort_files

TOKEN = uuid.uuid4().hex[:8]  # the victim files' names: nothing else on the machine has them
HOSTILE = [
    f"../../../../victim-{TOKEN}",
    "L" * 300,  # among the first three: the CLI draws figures of the first three samples
    f"/tmp/victim-abs-{TOKEN}",
    "a/b",
    "a:b",  # slugs like a/b
    "a_b",  # what both slug to: must keep its own name
    "ctrl\x01\x07\x1b[2J\t\nid",
    "L" * 299 + "M",  # shares the first 299 characters
    "患者-ü-Ω",
    ".",
    "..",
    ".hidden",
    "x-0123456789",  # looks like a hashed stem
    "S0001",
]
FIGURED = HOSTILE[:4] + ["ctrl\x01\x07\x1b[2J\t\nid", "患者-ü-Ω", "a:b"]  # figures cost ~0.6 s each
SAFE = re.compile(r"[A-Za-z0-9._-]{1,100}")
# matplotlib has no glyph for control characters or CJK in its default font: harmless for these figures
pytestmark = pytest.mark.filterwarnings("ignore:Glyph:UserWarning")


def test_file_stem_is_safe_bounded_and_one_to_one():
    from clinfuse.datasets.safe_names import file_stem

    stems = [file_stem(i) for i in HOSTILE]
    for text, stem in zip(HOSTILE, stems, strict=True):
        assert SAFE.fullmatch(stem), (text, stem)
        assert stem not in (".", "..") and not stem.startswith("."), (text, stem)
        assert file_stem(text) == stem  # stable
    assert len(set(stems)) == len(HOSTILE)  # a/b, a:b and a_b, the two long ids: all different
    assert file_stem("S0001") == "S0001" and file_stem("a_b") == "a_b"  # safe ids keep their name
    with pytest.raises(ValueError, match="max_length"):
        file_stem("x", max_length=4)


def _hostile_cohort():
    base, _ = make_synthetic_cohort(len(HOSTILE), modalities=("clinical", "images"), n_patches=(4, 6),
                                    feature_dim=8, missing_rate=0.0, seed=0)
    rename = dict(zip(base.sample_ids, HOSTILE, strict=True))
    images = ImageBags.from_features({rename[s]: base.images.load(s).data for s in base.images.sample_ids})
    return Cohort(clinical=base.clinical.rename(index=rename), images=images,
                  labels=base.labels.rename(index=rename)), base


def _all_files(root):
    return {p for p in root.rglob("*") if p.is_file()}


def _no_victims(*folders):
    for folder in folders:
        for text in (HOSTILE[0], HOSTILE[2]):
            for name in (f"{text}.npy", f"attention_{text}.png"):
                assert not (folder / name).resolve().exists(), name


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    cohort, base = _hostile_cohort()
    model = FusionModel(task="classification", aggregator="persam", d_model=8, n_heads=2, n_layers=1,
                        max_epochs=1, batch_size=8, validation_fraction=0.0, verbose=False, seed=0)
    model.fit(cohort)
    return root, cohort, base, model


def test_write_cohort_files_keeps_hostile_ids_inside_and_round_trips(hostile):
    root, cohort, base, _ = hostile
    folder = root / "files"
    before = _all_files(root.parent)
    spec = write_cohort_files(cohort, folder)
    new = _all_files(root.parent) - before
    assert new and all(folder in p.parents for p in new), sorted(map(str, new))
    _no_victims(folder / "features")
    names = {p.name for p in (folder / "features").iterdir()}
    assert all(SAFE.fullmatch(n[:-4]) for n in names) and len(names) == len(HOSTILE)
    assert spec["images"] == "images.parquet"  # the stems are not the ids: a manifest maps them back
    (folder / "data.yaml").write_text(yaml.safe_dump(spec))
    back = load_data_config(folder / "data.yaml").to_cohort(task="classification", require_targets=True)
    assert sorted(back.images.sample_ids) == sorted(HOSTILE)
    for old, text in zip(base.sample_ids, HOSTILE, strict=True):
        np.testing.assert_array_equal(back.images.load(text).data, base.images.load(old).data)


def test_write_cohort_files_keeps_the_plain_layout_for_safe_ids(tmp_path):
    cohort, _ = make_synthetic_cohort(6, modalities=("clinical", "images"), n_patches=(3, 4), feature_dim=8,
                                      missing_rate=0.0)
    spec = write_cohort_files(cohort, tmp_path)
    assert spec["images"] == "features" and not (tmp_path / "images.parquet").exists()
    assert sorted(p.stem for p in (tmp_path / "features").iterdir()) == sorted(cohort.sample_ids)


@pytest.mark.slow  # several seconds: CI runs it, the quick suite does not
def test_explain_figures_of_hostile_ids_stay_in_out_and_name_their_sample(hostile):
    root, cohort, _, model = hostile
    out = root / "figs"
    out.mkdir()
    before = _all_files(root.parent)
    _, written = write_attention(model, cohort.subset(FIGURED), out, max_figures=len(FIGURED))
    new = _all_files(root.parent) - before
    assert all(out in p.parents for p in new), sorted(map(str, new))
    _no_victims(out)
    pngs = [n for n in written if n.startswith("attention_") and n.endswith(".png")]
    assert len(pngs) == len(FIGURED) and all((out / n).is_file() for n in pngs)
    mapping = json.loads((out / "figures.json").read_text())["sample_figures"]
    assert sorted(mapping) == sorted(pngs) and sorted(mapping.values()) == sorted(FIGURED)  # the true ids


@pytest.mark.slow  # the end-to-end run; test_explain_figures_... covers the same ids in-process
def test_cli_explain_with_hostile_ids_finishes_inside_out(hostile, tmp_path):
    root, cohort, _, model = hostile
    model_dir = model.save(tmp_path / "model")
    spec = write_cohort_files(cohort, tmp_path / "data")
    (tmp_path / "data" / "data.yaml").write_text(yaml.safe_dump({k: v for k, v in spec.items()
                                                                 if k != "label"}))
    before = _all_files(tmp_path.parent)
    assert main(["explain", "--model", str(model_dir), "--data", str(tmp_path / "data" / "data.yaml"),
                 "--out", str(tmp_path / "expl")]) == 0
    new = _all_files(tmp_path.parent) - before
    assert new and all((tmp_path / "expl") in p.parents for p in new), sorted(map(str, new))
    att = pd.read_parquet(tmp_path / "expl" / "attention.parquet")
    assert set(att["sample_id"]) == set(HOSTILE)
