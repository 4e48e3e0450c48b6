"""Attention spread: the effective number of tokens exp(H) per sample, and the uniform flag (against an
untrained copy of the model, or the 0.95 fallback), in the table, the figures and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.fusion.explain import AttentionReport
from clinfuse.fusion.explain.spread import (
    SPREAD_COLUMNS,
    attention_spread,
    effective_tokens,
    null_from_report,
    spread_summary,
    untrained_copy,
    untrained_null,
)


def _rows(sample, kind, values, *, cls=None, modality="images", xy=True, normalise=True):
    values = np.asarray(values, dtype=float)
    n = len(values)
    frame = pd.DataFrame({"sample_id": sample, "patient_id": sample, "modality": modality, "kind": kind,
                          "target_class": cls, "token": [f"{sample}:{i}" for i in range(n)],
                          "value": values / values.sum() if normalise else values, "raw_value": values})
    if xy:
        side = int(np.ceil(np.sqrt(n)))
        frame["x"], frame["y"] = (np.arange(n) % side) * 256.0, (np.arange(n) // side) * 256.0
    return frame


def _report(*frames):
    return AttentionReport(pd.concat(frames, ignore_index=True))


def _peaked(n, hot=2, weight=30.0):
    v = np.ones(n)
    v[:hot] = weight
    return v


# --------------------------------------------------------------------------------------------- numbers
def test_effective_tokens_is_exp_entropy():
    assert effective_tokens(np.ones(25)) == pytest.approx(25.0)
    assert effective_tokens(np.eye(25)[3]) == pytest.approx(1.0)
    p = np.array([0.5, 0.25, 0.25])
    assert effective_tokens(p) == pytest.approx(np.exp(-(p * np.log(p)).sum()))  # 2.828
    assert effective_tokens(np.array([2.0, 1.0, 1.0])) == pytest.approx(2 * np.sqrt(2))  # renormalised
    for bad in (np.zeros(3), np.array([1.0, -1.0]), np.ones((2, 2)), np.array([]), np.array([np.nan])):
        with pytest.raises(ValueError, match="non-negative weights"):
            effective_tokens(bad)


def test_table_rows_per_sample_kind_class_with_the_fallback_rule():
    report = _report(
        _rows("u", "patch", np.ones(25)),
        _rows("o", "patch", np.eye(25)[0]),
        _rows("p", "explanatory", _peaked(40), cls="0"), _rows("p", "explanatory", np.ones(40), cls="1"),
        _rows("one", "patch", [1.0]),
        _rows("u", "phi", [0.3], cls="0", modality="clinical", xy=False, normalise=False),  # over classes
        _rows("u", "phi", [0.7], cls="1", modality="clinical", xy=False, normalise=False),
    )
    spread = attention_spread(report)
    assert list(spread.columns) == list(SPREAD_COLUMNS)
    row = spread.set_index(["sample_id", "kind", "target_class"]).sort_index()
    u, o = row.loc[("u", "patch", None)], row.loc[("o", "patch", None)]
    assert (u.n_tokens, u.effective_tokens, u.ratio, u.peak_ratio) == (
        25, pytest.approx(25), pytest.approx(1), pytest.approx(1))
    assert bool(u.uniform) and u.rule == "fallback: ratio >= 0.95" and u.threshold == 0.95
    assert o.effective_tokens == pytest.approx(1.0) and o.ratio == pytest.approx(1 / 25)
    assert o.peak_ratio == pytest.approx(25.0) and not bool(o.uniform)
    assert not bool(row.loc[("p", "explanatory", "0")].uniform)
    assert bool(row.loc[("p", "explanatory", "1")].uniform)
    single = row.loc[("one", "patch", None)]
    assert pd.isna(single.uniform) and single.rule.startswith("one token")
    assert "phi" not in set(spread["kind"]) and "phi" in spread.attrs["not_judged"]
    assert spread_summary(spread)[0] == (
        "patch: 1 of 2 samples indistinguishable from uniform (fallback rule); median N_eff/N 0.52; "
        "1 sample(s) not judged (one token or no weight)")
    assert any(line.startswith("phi: not judged") for line in spread_summary(spread))
    with pytest.raises(ValueError, match="fallback_ratio"):
        attention_spread(report, fallback_ratio=1.5)


def test_modality_kind_counts_present_modalities_and_bad_weights_are_named():
    modality = pd.DataFrame({"sample_id": "s", "patient_id": "s", "modality": "all", "kind": "modality",
                             "target_class": None, "token": ["clinical", "genomics", "images"],
                             "value": [0.5, 0.0, 0.5], "raw_value": [1.0, 0.0, 1.0]})
    spread = attention_spread(_report(modality))
    assert spread["n_tokens"].tolist() == [2] and bool(spread["uniform"].iloc[0])  # genomics absent
    genes = _rows("s", "gene", np.ones(4), cls="1", modality="genomics", xy=False)  # present, weight 0
    assert attention_spread(_report(modality, genes)).query("kind == 'modality'")["n_tokens"].tolist() == [3]
    bad = _rows("s9", "patch", np.ones(3))
    bad.loc[1, "value"] = -0.1
    with pytest.raises(ValueError, match="sample 's9', kind 'patch'"):
        attention_spread(bad)
    with pytest.raises(TypeError, match="AttentionReport"):
        attention_spread([1, 2])


# ------------------------------------------------------------------------------------------- the null
@pytest.fixture(scope="module")
def null(fitted_classifier):
    model = fitted_classifier.model
    before = {k: v.clone() for k, v in model.network_.state_dict().items()}
    proba = model.predict_proba(fitted_classifier.test)
    rng = torch.get_rng_state()
    result = untrained_null(model, fitted_classifier.test)
    # the fitted model and the global generators are untouched
    assert all(torch.equal(before[k], v) for k, v in model.network_.state_dict().items())
    pd.testing.assert_frame_equal(model.predict_proba(fitted_classifier.test), proba)
    assert torch.equal(torch.get_rng_state(), rng)
    return result


def test_the_untrained_null(null, fitted_classifier):
    n = len(fitted_classifier.test)
    assert null.method == "untrained" and null.n_draws == 5 and set(null.spread["draw"]) == set(range(5))
    limits = null.thresholds().set_index(["kind", "target_class"])
    assert limits.loc[("exploratory", None), "n_null"] == 5 * n
    assert 0.99 < limits.loc[("exploratory", None), "threshold"] <= 1.0  # untrained attention is near flat
    with pytest.raises(ValueError, match="quantile"):
        null.thresholds(1.5)


def test_flag_true_for_an_untrained_model_false_for_trained_concentrated_attention(null, fitted_classifier):
    test = fitted_classifier.test
    fresh = attention_spread(untrained_copy(fitted_classifier.model, seed=99).explain(test), null=null)
    patches = fresh[fresh["modality"] == "images"]
    assert patches["rule"].str.startswith("null: ratio >= max(q0.05 of").all()
    assert patches["uniform"].astype(bool).mean() >= 0.8
    assert fresh.loc[fresh["kind"] == "feature", "uniform"].astype(bool).all()  # untrained: exactly flat
    trained = attention_spread(fitted_classifier.model.explain(test), null=null)
    # the trained model's clinical and gene attention is concentrated (N_eff/N ~ 0.75), never flagged
    for kind in ("feature", "gene"):
        rows = trained[trained["kind"] == kind]
        assert len(rows) and not rows["uniform"].astype(bool).any() and rows["ratio"].median() < 0.95
    # hand-made concentrated patch attention is told apart from the null; flat attention is not
    sid = str(test.sample_ids[0])
    hand = attention_spread(_report(_rows(sid, "exploratory", _peaked(12)),
                                    _rows("flat", "exploratory", np.ones(12))), null=null)
    assert hand["uniform"].astype(bool).tolist() == [False, True]


def test_a_report_as_null_e_g_a_permuted_label_refit():
    null_report = _report(*[_rows(f"n{i}", "patch", 1 + 0.5 * np.random.default_rng(i).random(30))
                            for i in range(20)])
    null = null_from_report(null_report, method="permuted-label refit")
    limit = float(null.thresholds()["threshold"].iloc[0])
    assert 0.95 < limit < 1.0
    spread = attention_spread(_report(_rows("a", "patch", np.ones(30)), _rows("b", "patch", _peaked(30)),
                                      _rows("c", "gene", np.ones(5), modality="genomics", xy=False)),
                              null=null_report)
    by = spread.set_index("sample_id")
    assert bool(by.loc["a", "uniform"]) and not bool(by.loc["b", "uniform"])
    assert by.loc["a", "threshold"] == pytest.approx(limit) and "1 draw" in by.loc["a", "rule"]
    assert by.loc["c", "rule"] == "fallback (no report null rows): ratio >= 0.95"


# -------------------------------------------------------------------------------------------- figures
def _maps(fig):
    return [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]


def test_patch_maps_say_uniform_and_keep_the_colour_scale():
    n = 25
    report = _report(_rows("s", "patch", 1 + 0.01 * np.random.default_rng(0).random(n)))
    fig = report.plot_patches("s")
    (ax,) = _maps(fig)
    eff = attention_spread(report)["effective_tokens"].iloc[0]
    assert ax.get_title() == f"≈ uniform (N_eff = {eff:.1f} of {n})\npatch"
    assert ax.get_title().startswith("≈ uniform (N_eff = 25.0 of 25)")
    assert ax.images[0].get_clim() == pytest.approx((0.0, 3 / n))  # 0 to 3/N: not stretched
    assert fig.uniform_notes == {("patch", None): f"≈ uniform (N_eff = {eff:.1f} of {n})"}
    peaked = _report(_rows("s", "patch", _peaked(n))).plot_patches("s")
    assert _maps(peaked)[0].get_title() == "patch" and peaked.uniform_notes == {}
    # a spread table judged elsewhere (e.g. against a null) is what the titles state
    judged = attention_spread(report).assign(uniform=pd.array([False], dtype="boolean"))
    assert _maps(report.plot_patches("s", spread=judged))[0].get_title() == "patch"


def test_persam_trio_flags_only_its_uniform_panels():
    n = 16
    frames = [_rows("s", "exploratory", np.ones(n))]
    frames += [_rows("s", k, _peaked(n), cls=c) for k in ("class_wise", "explanatory") for c in ("0", "1")]
    fig = _report(*frames).plot_persam("s")
    titles = [ax.get_title() for ax in _maps(fig)]
    assert sum(t.startswith("≈ uniform (N_eff = 16.0 of 16)") for t in titles) == 1
    assert any(t == "≈ uniform (N_eff = 16.0 of 16)\nexploratory" for t in titles)


def test_token_bars_say_uniform():
    flat = _rows("s", "gene", np.ones(8), cls="1", modality="genomics", xy=False)
    ax = _report(flat).plot_top_tokens("s", kinds=("gene",)).axes[0]
    assert ax.get_title() == "≈ uniform (N_eff = 8.0 of 8)\ngene (genomics), class 1\n(all 8 tokens)"
    peaked = _rows("s", "gene", _peaked(8), cls="1", modality="genomics", xy=False)
    assert _report(peaked).plot_top_tokens("s", kinds=("gene",)).axes[0].get_title().startswith("gene")
    # bars drawn by the patch figure (tokens without coordinates) too
    bars = _report(flat.assign(kind="patch")).plot_patches("s")
    assert bars.axes[0].get_title().startswith("≈ uniform (N_eff = 8.0 of 8)\npatch")


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.slow  # trains the tiny demo (~5 s)
def test_demo_writes_the_spread_table_and_says_so(tmp_path, capsys):
    from clinfuse.fusion.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--tiny", "--out", str(out), "--csv"]) == 0
    printed = capsys.readouterr().out
    spread = pd.read_parquet(out / "attention_spread.parquet")
    assert list(spread.columns)[-len(SPREAD_COLUMNS):] == list(SPREAD_COLUMNS)
    assert (out / "attention_spread.csv").is_file()
    assert spread["rule"].str.startswith("null:").any()
    n = spread.loc[spread["kind"] == "explanatory", "sample_id"].nunique()
    flagged = int(spread[spread["kind"] == "explanatory"].groupby("sample_id")["uniform"].all().sum())
    median = spread.loc[spread["kind"] == "explanatory", "ratio"].median()
    assert (f"explanatory: {flagged} of {n} samples indistinguishable from uniform (null rule); "
            f"median N_eff/N {median:.2f}") in printed
    index = json.loads((out / "figures.json").read_text())
    for name in index["sample_figures"]:
        notes = index["uniform"][name]
        assert (f"{name}: " in printed) and (("; ≈ uniform: " + ", ".join(notes)) in printed if notes
                                              else "no panel flagged uniform" in printed)


def test_write_attention_writes_the_spread_and_its_summary(fitted_classifier, tmp_path, monkeypatch):
    """What ``clinfuse explain`` and ``demo`` write and print (their shared ``write_attention``), fast: no
    sample figures, one untrained copy (the CLI's five are the slow tests')."""
    from clinfuse.fusion.commands import figure_lines, write_attention
    from clinfuse.fusion.explain import spread as spread_module

    monkeypatch.setattr(spread_module, "NULL_DRAWS", 1)
    monkeypatch.setattr(spread_module, "MIN_NULL_VALUES", 1)

    _, files = write_attention(fitted_classifier.model, fitted_classifier.test, tmp_path, max_figures=0)
    assert "attention_spread.parquet" in files and "attention_spread.csv" not in files
    spread = pd.read_parquet(tmp_path / "attention_spread.parquet")
    assert set(spread["sample_id"]) == set(fitted_classifier.test.sample_ids)
    lines = figure_lines(tmp_path)
    feature = spread[spread["kind"] == "feature"]
    assert (f"  feature: {int(feature['uniform'].sum())} of {feature['sample_id'].nunique()} samples "
            f"indistinguishable from uniform (null rule); median N_eff/N {feature['ratio'].median():.2f}"
            in lines)
    assert any(line.startswith("  phi: not judged") for line in lines)


@pytest.mark.slow  # explains and draws two PersAM figures (~3 s)
def test_write_attention_figure_lines_state_the_flags(fitted_classifier, tmp_path):
    from clinfuse.fusion.commands import figure_lines, write_attention

    _, files = write_attention(fitted_classifier.model, fitted_classifier.test, tmp_path, max_figures=2)
    assert "attention_spread.parquet" in files
    spread = pd.read_parquet(tmp_path / "attention_spread.parquet")
    assert spread["rule"].str.startswith("null: ratio >= max(q0.05 of").any()
    lines = figure_lines(tmp_path)
    assert any(x.startswith("attention spread (N_eff = exp(entropy)") for x in lines)
    patch = spread[spread["kind"] == "patch"]
    expected = (f"  patch: {int(patch['uniform'].sum())} of {len(patch)} samples indistinguishable from "
                f"uniform (null rule); median N_eff/N {patch['ratio'].median():.2f}")
    assert expected in lines
    index = json.loads((tmp_path / "figures.json").read_text())
    assert len(index["sample_figures"]) == 2
    for name, sample in index["sample_figures"].items():
        mine = spread[(spread["sample_id"] == sample) & spread["kind"].isin(["class_wise", "exploratory",
                                                                              "explanatory"])]
        assert len(index["uniform"][name]) == int(mine["uniform"].sum())  # every flagged panel is named
        line = next(x for x in lines if x.startswith(f"  {name}: "))
        assert ("; ≈ uniform: " in line) == bool(index["uniform"][name])
        assert all(re.fullmatch(r"\w+(\[[^\]]+\])? \(N_eff = \d+\.\d of \d+\)", note)
                   for note in index["uniform"][name])


@pytest.mark.slow  # saves, loads and explains a model with figures (~3 s)
def test_clinfuse_explain_writes_the_spread_table(fitted_classifier, tmp_path, capsys):
    import yaml
    from clinfuse.fusion.cli import main
    from clinfuse.fusion.config import write_cohort_files

    fitted_classifier.model.save(tmp_path / "model")
    spec = write_cohort_files(fitted_classifier.test, tmp_path / "data")
    data = tmp_path / "data" / "data.yaml"  # its paths are relative to its folder
    data.write_text(yaml.safe_dump({k: v for k, v in spec.items() if k != "label"}))
    assert main(["explain", "--model", str(tmp_path / "model"), "--data", str(data),
                 "--out", str(tmp_path / "e"), "--csv"]) == 0
    printed = capsys.readouterr().out
    csv = pd.read_csv(tmp_path / "e" / "attention_spread.csv")
    parquet = pd.read_parquet(tmp_path / "e" / "attention_spread.parquet")
    assert len(csv) == len(parquet) and set(parquet["sample_id"]) == set(fitted_classifier.test.sample_ids)
    assert "attention_spread.parquet" in printed and "samples indistinguishable from uniform" in printed
