"""What the ``clinfuse`` commands do (``cli.py`` parses the arguments and calls ``run_<command>(args)``).

Every output folder is written atomically: into a temporary folder next to it, swapped into place in one
step when complete. An existing folder is replaced only when it holds nothing but clinfuse outputs of the
same kind, never when it is (or holds, or lies in) the model folder being read; that is checked before any
work. File names derived from sample ids go through ``file_stem``.

``train`` checkpoints every epoch into a folder outside the model folder (``--checkpoint-dir``, else
``model.checkpoint_dir`` of run.yaml, else ``<out>.checkpoints`` next to ``--out``), which is kept after
the run; ``train --resume`` continues from it. SIGINT / SIGTERM end a command with status 130 / 143 and
one line saying what was kept (:func:`interruption_message`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..datasets.output_folders import check_replaceable
from ..datasets.safe_names import file_stem
from .persistence import atomic_dir, write_json
from .predictions import prediction_frame

DEMO_SIZES = {
    # The cohort (patients, patches per bag) and PersAM's training; "tiny" is for tests (seconds), the default
    # finishes in under 2 minutes on 2 cores and its explanatory attention finds the planted evidence
    # (benchmarks/bench_demo_auroc.py: held-out planted-patch AUROC over seeds, against the previous recipe).
    "default": {"n_patients": 400, "n_patches": (20, 60), "max_epochs": 30, "batch_size": 8, "d_model": 64,
                "early_stopping_patience": 10},
    "tiny": {"n_patients": 40, "n_patches": (6, 12), "max_epochs": 2, "batch_size": 16, "d_model": 32,
             "early_stopping_patience": 6},
}


def demo_model_params(size: dict[str, Any], *, seed: int = 0) -> dict[str, Any]:
    """The ``FusionModel`` keywords of the demo for one entry of :data:`DEMO_SIZES`."""
    return {"task": "classification", "aggregator": "persam", "d_model": size["d_model"], "n_heads": 4,
            "max_epochs": size["max_epochs"], "batch_size": size["batch_size"],
            "early_stopping_patience": size["early_stopping_patience"], "verbose": False, "seed": seed}


def demo_cohort(size: dict[str, Any], *, seed: int = 0) -> tuple[Any, Any, Any, Any]:
    """(cohort, train, test, truth): the demo's synthetic cohort for one entry of :data:`DEMO_SIZES` and its
    split (the demo's is seed 0), so that the held-out samples of a demo folder can be rebuilt."""
    from ..datasets import make_synthetic_cohort, train_validation_split

    cohort, truth = make_synthetic_cohort(size["n_patients"], task="classification",
                                          n_patches=size["n_patches"], seed=seed)
    train_ids, test_ids = train_validation_split(cohort, fraction=0.25, seed=seed)
    return cohort, cohort.subset(train_ids), cohort.subset(test_ids), truth


def planted_line(summary: dict[str, Any]) -> str:
    """The demo's line on the planted evidence (:func:`~.explain.faithfulness.planted_summary`)."""
    return (f"planted evidence patches, held-out ({summary['n_patients']} patients): AUROC of "
            f"{summary['kind']} attention {_fmt(summary['auroc_median'])} (per-patient median; min "
            f"{_fmt(summary['auroc_min'])}), pooled {_fmt(summary['auroc_pooled'])}; mass ratio "
            f"{_fmt(summary['mass_ratio'])} (1.0 = uniform)")


# ------------------------------------------------------------------------------------------- helpers
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def metrics_table(metrics: dict[str, Any]) -> str:
    """Plain-text table: one row per missingness pattern (plus ``all``), one column per metric."""
    rows = {"all": {k: v for k, v in metrics.items() if k != "by_pattern"}}
    rows.update(metrics.get("by_pattern", {}))
    frame = pd.DataFrame(rows).T
    count_cols = ("n", "n_events", "n_after_follow_up")
    counted = [c for c in count_cols if c in frame]
    cols = [c for c in frame.columns if c not in count_cols] + counted
    frame = frame[cols]
    counts = {c: (lambda v: "" if pd.isna(v) else str(int(v))) for c in counted}
    return frame.to_string(formatters={**{c: _fmt for c in frame.columns}, **counts})


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, float_format="%.6g")


def write_table(frame: pd.DataFrame, out: Path, stem: str, *, csv: bool = False) -> list[str]:
    """``<stem>.parquet`` (index kept), and ``<stem>.csv`` too when ``csv``; returns the file names."""
    frame.to_parquet(out / f"{stem}.parquet")
    if csv:
        write_csv(frame, out / f"{stem}.csv")
    return [f"{stem}.parquet"] + ([f"{stem}.csv"] if csv else [])


def write_attention(model: Any, cohort: Any, out: Path, *, max_figures: int = 3, csv: bool = False,
                    predictions: pd.DataFrame | None = None, figure_format: str = "png",
                    contributions: bool = True, spread_null: bool = True) -> tuple[Any, list[str]]:
    """Attention table (Parquet; CSV too with ``csv``) and figures of ``cohort`` into ``out``; returns
    (report, names of the files written).

    The per-sample figure is the aggregator's ``sample_figure`` (default ``"patches"``), drawn for
    informative samples (:func:`~.explain.selection.informative_samples`) into
    ``attention_<file_stem(sample id)>.<figure_format>``; patch maps skip one-patch bags. Also written:
    ``modality_contributions.parquet`` and its figure (exact Shapley values; ``contributions=False`` skips
    their 2^M passes per sample), ``attention_spread.parquet`` (effective number of tokens and uniform flag,
    against untrained copies of the model; ``spread_null=False``: the fallback rule), ``risk_groups`` for
    survival models with targets, and ``figures.json``: file -> sample, why it was picked, the panels
    flagged uniform, what was skipped, the summary lines.
    """
    from .explain import figures
    from .explain.contribution_plot import mean_shares
    from .explain.selection import informative_samples, patch_counts
    from .explain.spread import write_spread
    from .explain.table import spatial_modalities

    ext = figures.figure_format(f"figure.{figure_format}")
    report = model.explain(cohort, out=out / "attention.parquet")
    written = ["attention.parquet"]
    if csv:
        report.to_csv(out / "attention.csv")
        written.append("attention.csv")
    spread, spread_files, spread_lines = write_spread(model, cohort, report, out, csv=csv, null=spread_null)
    written += spread_files
    plt = figures.pyplot()
    if "modality" in model.attention_kinds:
        plt.close(figures.plot_modality_weights(report, path=out / f"modality_weights.{ext}"))
        written.append(f"modality_weights.{ext}")
    contribution_line = ""
    if contributions:  # exact Shapley contributions of the modalities (unlike attention shares)
        contribution_report, files = _write_contributions(model, cohort, report, out, csv=csv, ext=ext)
        written += files
        shares = mean_shares(contribution_report, attention=report)
        contribution_line = "  ".join(
            f"{m} {r.shapley_share:.2f}"
            + ("" if np.isnan(r.attention_share) else f" (attention {r.attention_share:.2f})")
            for m, r in shares.iterrows())
    if predictions is None:
        predictions = prediction_frame(model, cohort, survival_curves=False, pattern=False)
    predictions = predictions.set_axis(predictions.index.astype(str))
    figure = figures.sample_figure(getattr(model.network_.aggregator, "sample_figure", "patches"))
    candidates = report.sample_ids_with(figure.kind)
    frame = report.frame
    skipped: list[str] = []
    if frame.loc[frame["kind"] == figure.kind, "modality"].isin(spatial_modalities()).any():
        counts = patch_counts(frame, figure.kind)
        skipped = [s for s in candidates if counts.get(s, 0) < 2]
        candidates = [s for s in candidates if counts.get(s, 0) >= 2]
    samples, reasons, uniform = {}, {}, {}
    for pick in informative_samples(predictions, candidates, max_figures):
        name = f"attention_{file_stem(pick.sample_id)}.{ext}"
        fig = figure.draw(report, pick.sample_id, path=out / name, spread=spread)
        uniform[name] = [f"{k}{'' if c is None else f'[{c}]'} {note.removeprefix('≈ uniform ')}"
                         for (k, c), note in getattr(fig, "uniform_notes", {}).items()]
        plt.close(fig)
        written.append(name)
        samples[name], reasons[name] = pick.sample_id, pick.reason
    index: dict[str, Any] = {"sample_figures": samples, "reasons": reasons, "uniform": uniform,
                             "skipped_one_patch_bags": skipped, "attention_spread": spread_lines,
                             "modality_contributions": contribution_line}
    if model.task == "survival" and {"time", "event"} <= set(predictions.columns):
        try:
            plt.close(figures.plot_risk_groups(predictions["risk"], predictions["time"], predictions["event"],
                                               path=out / f"risk_groups.{ext}"))
            written.append(f"risk_groups.{ext}")
        except ValueError as exc:  # every predicted risk equal: no groups to compare, and say so
            index["risk_groups"] = f"not drawn: {exc}"
    if samples or skipped or spread_lines or contribution_line or "risk_groups" in index:
        write_json(out / "figures.json", index)
    return report, written


def _write_contributions(model: Any, cohort: Any, report: Any, out: Path, *, csv: bool, ext: str
                         ) -> tuple[Any, list[str]]:
    """The exact modality contributions of ``cohort`` (table and figure) into ``out``: (report, files)."""
    from .explain.contribution_plot import plot_modality_contributions
    from .explain.contributions import modality_contributions
    from .explain.plotting import pyplot

    contributions = modality_contributions(model, cohort)
    contributions.to_parquet(out / "modality_contributions.parquet")
    written = ["modality_contributions.parquet"]
    if csv:
        contributions.to_csv(out / "modality_contributions.csv")
        written.append("modality_contributions.csv")
    pyplot().close(plot_modality_contributions(contributions, attention=report,
                                               path=out / f"modality_contributions.{ext}"))
    return contributions, [*written, f"modality_contributions.{ext}"]


def figure_lines(out: Path) -> list[str]:
    """What ``figures.json`` in ``out`` says: the attention spread per kind, one line per sample figure and
    why (with the panels it flags uniform), and what was skipped."""
    import json

    path = out / "figures.json"
    if not path.is_file():
        return []
    index = json.loads(path.read_text())
    lines = []
    if index.get("modality_contributions"):
        lines.append("modality contributions, mean |exact Shapley share| (modality_contributions.parquet):")
        lines.append(f"  {index['modality_contributions']}")
    if index.get("attention_spread"):
        lines.append("attention spread (N_eff = exp(entropy) of each sample's weights; "
                     "attention_spread.parquet):")
        lines += [f"  {line}" for line in index["attention_spread"]]
    lines += [f"  {name}: {index['sample_figures'][name]}, {why}"
              + (f"; ≈ uniform: {', '.join(index['uniform'][name])}" if index.get("uniform", {}).get(name)
                 else "; no panel flagged uniform") for name, why in index["reasons"].items()]
    if index.get("skipped_one_patch_bags"):
        lines.append(f"  skipped {len(index['skipped_one_patch_bags'])} one-patch bag(s) for patch maps")
    if "risk_groups" in index:
        lines.append(f"  risk groups {index['risk_groups']}")
    return lines


# --------------------------------------------------------------------------------------------- demo
def run_demo(args: Any) -> int:
    import torch

    from .explain.faithfulness import planted_patch_lift, planted_summary
    from .explain.figures import plot_training_curve
    from .explain.planted_maps import write_planted_figures
    from .model import FusionModel

    check_replaceable(args.out, kind="demo")
    csv = bool(getattr(args, "csv", False))
    size = DEMO_SIZES["tiny" if getattr(args, "tiny", False) else "default"]
    # Small model: intra-op threads cost more in synchronisation than they gain (and keep runs comparable).
    torch.set_num_threads(1)
    cohort, train, test, truth = demo_cohort(size)
    print(cohort.summary())
    print(f"\ntraining PersAM on {len(train)} samples (early stopping on an inner split), "
          f"testing on {len(test)} held-out samples")
    model = FusionModel(**demo_model_params(size))
    model.fit(train)
    metrics = model.evaluate(test)
    print("\nheld-out test metrics (per missingness pattern):")
    print(metrics_table(metrics))
    with atomic_dir(args.out, kind="demo") as out:
        model.save(out / "model")
        preds = prediction_frame(model, test)
        tables = write_table(preds, out, "predictions", csv=csv)
        report, figs = write_attention(model, test, out, csv=csv, predictions=preds,
                                       figure_format=getattr(args, "figure_format", "png"))
        lift = planted_patch_lift(report, truth, test.labels)
        planted = planted_summary(report, truth, test.labels, kind="explanatory")
        fmt = getattr(args, "figure_format", "png")
        # the samples write_attention drew (figures.json), again with the planted evidence outlined
        drawn = json.loads((out / "figures.json").read_text())["sample_figures"] if (
            out / "figures.json").is_file() else {}
        evidence = write_planted_figures(report, truth, list(drawn.values()), out, ext=fmt)
        plot_training_curve(model.history_, best_epoch=model.best_epoch_, path=out / f"training_curve.{fmt}")
        write_json(out / "metrics.json", {"test": metrics, "validation": model.metrics_.get("validation"),
                                          "best_epoch": model.best_epoch_, "history": model.history_,
                                          "attention": lift, "planted_evidence": planted,
                                          "n_train": len(train), "n_test": len(test),
                                          "cohort": truth.description})
    print("\nattention mass on the planted evidence patches / their share of the bag (1.0 = uniform):")
    for kind, v in lift.items():
        print(f"  {kind:12s} {_fmt(v['lift'])}  ({v['n_samples']} samples)")
    print(planted_line(planted))
    print(f"wrote {Path(args.out)}/: metrics.json, {', '.join(tables + figs + list(evidence))}, "
          f"training_curve.{fmt}, model/")
    print("\n".join(figure_lines(Path(args.out))))
    if evidence:
        print(f"  {', '.join(evidence)}: the same samples, planted evidence patches outlined in green")
    return 0


# --------------------------------------------------------------------------------------- train / predict
def checkpoint_folder(args: Any, model_keys: dict[str, Any]) -> Path:
    """The checkpoint folder of ``clinfuse train`` (see the module docstring); never inside ``--out``,
    which the save replaces as a whole."""
    given = getattr(args, "checkpoint_dir", None) or model_keys.get("checkpoint_dir")
    if given is None:
        out = Path(args.out).expanduser().resolve()
        return out.with_name(f"{out.name}.checkpoints")
    folder = Path(given).expanduser()
    if not folder.is_absolute() and not getattr(args, "checkpoint_dir", None):
        folder = Path(args.config).parent / folder  # run.yaml paths are relative to the file
    out = Path(args.out).expanduser().resolve()
    if folder.resolve() == out or out in folder.resolve().parents:
        raise ValueError(f"checkpoint folder {folder} is inside --out {out}, which a save replaces; "
                         "choose a folder outside it")
    return folder


def run_train(args: Any) -> int:
    from .config import load_run_config
    from .training_record import train_from_config

    cfg = load_run_config(args.config)
    check_replaceable(args.out, kind="model")  # a bad --out fails now, not after the training
    args.checkpoint_folder = folder = checkpoint_folder(args, cfg.model)  # for interruption_message
    run = train_from_config(cfg, out=args.out, checkpoint_dir=folder, fold=getattr(args, "fold", None),
                            resume=bool(getattr(args, "resume", False)))
    for what, metrics in ((f"validation metrics ({run.validation_source})", run.validation_metrics),
                          ("test metrics (split test, per missingness pattern)", run.test_metrics)):
        if metrics:
            print(f"\n{what}:\n{metrics_table(metrics)}")
    print(f"\nsaved the model to {run.path} (with {', '.join(run.files)}; checkpoints in {folder})")
    return 0


def run_tune(args: Any) -> int:
    from .config import load_run_config
    from .model import FusionModel
    from .tuning import tune

    cfg = load_run_config(args.config)
    check_replaceable(args.out, kind="tuning")
    given = {"n_trials": args.n_trials, "folds": args.folds, "seed": args.seed}
    keys = {**cfg.tune, **{k: v for k, v in given.items() if v is not None}}
    cohort = cfg.data.to_cohort(task=cfg.task, require_targets=True)
    split = cfg.study_split()  # tuning sees the fold's training samples only: val and test stay unseen
    cohort = split.cohorts(cohort)[0] if split is not None else cohort
    print(cohort.summary())
    # every trial and fold would share (and resume from) one checkpoint folder: tuning keeps none (no logs)
    model = FusionModel(task=cfg.task, **{**cfg.model, "checkpoint_dir": None, "logger": False})
    result = tune(model, cohort, **keys)
    with atomic_dir(args.out, kind="tuning") as out:
        write_json(out / "best_params.json", {"best_params": result.best_params_,
                                              "best_score": result.best_score_,
                                              "metric": "c_index" if cfg.task == "survival" else "auc"})
        result.trials_.to_csv(out / "trials.csv", index=False)
        result.best_model_.save(out / "model")
    print(f"best inner-CV score {_fmt(result.best_score_)} with {result.best_params_}")
    print(f"wrote {Path(args.out)}/: best_params.json, trials.csv, model/")
    return 0


def interruption_message(args: Any, exc: Any) -> str:
    """One line for a command stopped by SIGINT / SIGTERM: what stopped, and what was kept."""
    from .interrupts import TrainingInterrupted

    out = getattr(args, "out", None)
    if isinstance(exc, TrainingInterrupted):
        msg = f"{exc}; nothing was written to {out}"
        if exc.checkpoint is not None and args.command == "train":
            msg += " (continue with the same command and --resume)"
        return msg
    kept = getattr(args, "checkpoint_folder", None)
    return (f"{exc}; {out} was left as it was (nothing half-written)"
            + (f"; the checkpoints are kept in {kept}" if kept is not None else ""))


def _load_for_scoring(args: Any) -> tuple[Any, Any]:
    from .config import load_data_config
    from .model import FusionModel

    model = FusionModel.load(args.model)
    cohort = load_data_config(args.data).to_cohort(task=model.task, require_targets=False)
    return model, cohort


def _has_targets(model: Any, cohort: Any) -> bool:
    return (cohort.labels if model.task == "classification" else cohort.survival) is not None


def run_predict(args: Any) -> int:
    check_replaceable(args.out, kind="predictions", protect=[args.model])
    model, cohort = _load_for_scoring(args)
    times = getattr(args, "times", None)
    if times is not None and (model.task != "survival" or not _has_targets(model, cohort)):
        raise ValueError("--times sets the times of the survival metrics: it needs a survival model and data "
                         f"with survival targets (this model is for {model.task}"
                         f"{'' if _has_targets(model, cohort) else ', the data have no targets'})")
    with atomic_dir(args.out, kind="predictions", protect=[args.model]) as out:
        tables = write_table(prediction_frame(model, cohort, missing=True), out, "predictions",
                             csv=bool(getattr(args, "csv", False)))
        if _has_targets(model, cohort):
            metrics = model.evaluate(cohort) if times is None else model.evaluate(cohort, times=times)
            write_json(out / "metrics.json", metrics)
            print(metrics_table(metrics))
    print(f"wrote predictions for {len(cohort)} samples to {Path(args.out)}/: {', '.join(tables)}")
    return 0


def run_explain(args: Any) -> int:
    check_replaceable(args.out, kind="explanation", protect=[args.model])
    model, cohort = _load_for_scoring(args)
    csv = bool(getattr(args, "csv", False))
    with atomic_dir(args.out, kind="explanation", protect=[args.model]) as out:
        preds = prediction_frame(model, cohort, missing=True)
        tables = write_table(preds, out, "predictions", csv=csv)
        _report, files = write_attention(model, cohort, out, csv=csv, predictions=preds,
                                         figure_format=getattr(args, "figure_format", "png"),
                                         contributions=not getattr(args, "no_contributions", False),
                                         spread_null=not getattr(args, "no_null", False))
        write_json(out / "kinds.json", {"kinds": model.attention_kinds, "aggregator": model.aggregator_})
    print(f"wrote attention ({', '.join(model.attention_kinds)}) for {len(cohort)} samples to "
          f"{Path(args.out)}/: {', '.join(files + tables)}")
    print("\n".join(figure_lines(Path(args.out))))
    return 0
