"""What the ``clinfuse`` commands do (``cli.py`` parses the arguments and calls ``run_<command>(args)``).

Every output folder is written atomically: into a temporary folder next to it, renamed into place when
complete, and an existing folder is replaced only if clinfuse wrote it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .persistence import atomic_dir, to_jsonable, write_json

DEMO_SIZES = {
    # n_patients, patches per bag, max_epochs; "tiny" is for tests (seconds), the default under 2 minutes.
    "default": {"n_patients": 240, "n_patches": (20, 60), "max_epochs": 25},
    "tiny": {"n_patients": 40, "n_patches": (6, 12), "max_epochs": 2},
}


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
    cols = [c for c in frame.columns if c not in ("n", "n_events")] + [c for c in ("n", "n_events") if c in frame]
    frame = frame[cols]
    counts = {c: (lambda v: "" if pd.isna(v) else str(int(v))) for c in ("n", "n_events") if c in frame}
    return frame.to_string(formatters={**{c: _fmt for c in frame.columns}, **counts})


def prediction_frame(model: Any, cohort: Any) -> pd.DataFrame:
    """One row per sample: predictions (probabilities and label, or risk and S(t) at the bin ends), the
    sample's missingness pattern, and its targets when the cohort has them."""
    from .metrics import pattern_names

    ids = [str(s) for s in cohort.sample_ids]
    if model.task == "classification":
        proba = model.predict_proba(cohort)
        frame = proba.add_prefix("proba_")
        frame["prediction"] = np.asarray(proba.columns, dtype=object)[np.argmax(proba.to_numpy(), axis=1)]
        if cohort.labels is not None:
            frame["label"] = cohort.labels.loc[ids].to_numpy()
    else:
        frame = model.predict_risk(cohort).to_frame("risk")
        if model.survival_head == "discrete":
            times = [t for t in model.time_bins_[1:] if math.isfinite(t)]
        else:
            times = list(np.quantile(model.baseline_hazard_["times"], [0.25, 0.5, 0.75]))
        surv = model.predict_survival(cohort, times)
        for t in times:
            frame[f"S(t={t:g})"] = surv[t].to_numpy()
        if cohort.survival is not None:
            frame["time"] = cohort.survival.loc[ids, "time"].to_numpy()
            frame["event"] = cohort.survival.loc[ids, "event"].to_numpy()
    presence = cohort.presence().reindex(index=ids, columns=model.modalities_, fill_value=False)
    frame["pattern"] = pattern_names(presence).to_numpy()
    return frame


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    frame.to_csv(path, float_format="%.6g")


def plot_training_curve(history: list[dict[str, float]], path: Path, best_epoch: int | None = None) -> None:
    from .figures import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], marker="o", label="training loss")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="validation loss")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", linestyle="--", label="kept weights (best epoch)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("training curve (validation = inner split)")
    _save(fig, path)
    plt.close(fig)


def write_attention(model: Any, cohort: Any, out: Path, *, max_figures: int = 3) -> tuple[Any, list[str]]:
    """Attention tables (Parquet + CSV) and figures of ``cohort`` into ``out``; returns (report, figure names)."""
    from . import figures

    report = model.explain(cohort, out=out / "attention.parquet")
    report.to_csv(out / "attention.csv")
    written = []
    kinds = set(model.attention_kinds)
    plt = figures._plt()
    if "modality" in kinds:
        plt.close(figures.plot_modality_weights(report, path=out / "modality_weights.png"))
        written.append("modality_weights.png")
    patch_kind = "explanatory" if "explanatory" in kinds else "patch" if "patch" in kinds else None
    if patch_kind is not None:
        with_patches = report.sample_ids_with(patch_kind)[:max_figures]
        for sid in with_patches:
            name = f"attention_{sid}.png"
            if patch_kind == "explanatory":
                fig = figures.plot_persam_trio(report, sid, path=out / name)
            else:
                fig = figures.plot_patch_attention(report, sid, kind="patch", path=out / name)
            plt.close(fig)
            written.append(name)
    return report, written


# --------------------------------------------------------------------------------------------- demo
def relevant_patch_attention(report: Any, truth: Any, labels: pd.Series) -> dict[str, Any]:
    """Per attention kind over patches, the mean over samples of (attention mass on the patches the
    planted rule makes evidence) / (their share of the bag): 1 = no better than uniform, higher = the
    attention finds the evidence. Class-specific kinds are read for the sample's true class."""
    out: dict[str, Any] = {}
    frame = report.to_frame()
    for kind in ("patch", "class_wise", "exploratory", "explanatory"):
        rows_k = frame[(frame["kind"] == kind) & (frame["modality"] == "images")]
        ratios = []
        for sid, rows in rows_k.groupby("sample_id"):
            relevant = truth.relevant_patches.get(sid)
            if relevant is None or not relevant.any() or relevant.all():
                continue
            if rows["target_class"].notna().any():
                rows = rows[rows["target_class"] == str(labels[sid])]
            if rows.empty:
                continue
            mass = float(rows["value"].to_numpy()[relevant[rows["position"].to_numpy(int)]].sum())
            ratios.append(mass / float(relevant.mean()))
        if ratios:
            out[kind] = {"lift": float(np.mean(ratios)), "n_samples": len(ratios)}
    return out


def run_demo(args: Any) -> int:
    import torch

    from ..datasets import make_synthetic_cohort, train_validation_split
    from .model import FusionModel

    size = DEMO_SIZES["tiny" if getattr(args, "tiny", False) else "default"]
    # Small model: intra-op threads cost more in synchronisation than they gain (and keep runs comparable).
    torch.set_num_threads(1)
    cohort, truth = make_synthetic_cohort(size["n_patients"], task="classification", n_patches=size["n_patches"],
                                          seed=0)
    print(cohort.summary())
    train_ids, test_ids = train_validation_split(cohort, fraction=0.25, seed=0)
    train, test = cohort.subset(train_ids), cohort.subset(test_ids)
    print(f"\ntraining PersAM on {len(train)} samples (early stopping on an inner split), "
          f"testing on {len(test)} held-out samples")
    model = FusionModel(task="classification", aggregator="persam", d_model=32, n_heads=4, max_epochs=size["max_epochs"],
                        batch_size=16, early_stopping_patience=6, verbose=False, seed=0)
    model.fit(train)
    metrics = model.evaluate(test)
    print("\nheld-out test metrics (per missingness pattern):")
    print(metrics_table(metrics))
    with atomic_dir(args.out) as out:
        model.save(out / "model")
        preds = prediction_frame(model, test)
        write_csv(preds, out / "predictions.csv")
        report, figs = write_attention(model, test, out)
        lift = relevant_patch_attention(report, truth, test.labels)
        plot_training_curve(model.history_, out / "training_curve.png", model.best_epoch_)
        write_json(out / "metrics.json", {"test": metrics, "validation": model.metrics_.get("validation"),
                                          "best_epoch": model.best_epoch_, "history": model.history_,
                                          "attention": lift, "n_train": len(train), "n_test": len(test),
                                          "cohort": truth.description})
    print("\nattention mass on the planted evidence patches / their share of the bag (1.0 = uniform):")
    for kind, v in lift.items():
        print(f"  {kind:12s} {_fmt(v['lift'])}  ({v['n_samples']} samples)")
    print(f"wrote {Path(args.out)}/: metrics.json, predictions.csv, attention.parquet, attention.csv, "
          f"training_curve.png, {', '.join(figs)}, model/")
    return 0


# --------------------------------------------------------------------------------------- train / predict
def run_train(args: Any) -> int:
    from .config import load_run_config
    from .model import FusionModel

    cfg = load_run_config(args.config)
    cohort = cfg.data.to_cohort(task=cfg.task, require_targets=True)
    print(cohort.summary())
    model = FusionModel(task=cfg.task, **cfg.model).fit(cohort)
    path = model.save(args.out)
    val = model.metrics_.get("validation")
    if val:
        print("\nvalidation metrics (inner split):")
        print(metrics_table(val))
    print(f"\nsaved the model to {path}")
    return 0


def _load_for_scoring(args: Any) -> tuple[Any, Any]:
    from .config import load_data_config
    from .model import FusionModel

    model = FusionModel.load(args.model)
    cohort = load_data_config(args.data).to_cohort(task=model.task, require_targets=False)
    return model, cohort


def _has_targets(model: Any, cohort: Any) -> bool:
    return (cohort.labels if model.task == "classification" else cohort.survival) is not None


def run_predict(args: Any) -> int:
    model, cohort = _load_for_scoring(args)
    with atomic_dir(args.out) as out:
        write_csv(prediction_frame(model, cohort), out / "predictions.csv")
        if _has_targets(model, cohort):
            metrics = model.evaluate(cohort)
            write_json(out / "metrics.json", metrics)
            print(metrics_table(metrics))
    print(f"wrote predictions for {len(cohort)} samples to {Path(args.out)}/predictions.csv")
    return 0


def run_explain(args: Any) -> int:
    model, cohort = _load_for_scoring(args)
    with atomic_dir(args.out) as out:
        _report, figs = write_attention(model, cohort, out)
        write_csv(prediction_frame(model, cohort), out / "predictions.csv")
        write_json(out / "kinds.json", {"kinds": model.attention_kinds, "aggregator": model.aggregator})
    print(f"wrote attention ({', '.join(to_jsonable(model.attention_kinds))}) for {len(cohort)} samples to "
          f"{Path(args.out)}/: attention.parquet, attention.csv, predictions.csv, {', '.join(figs)}")
    return 0
