"""The model card: a short ``MODEL_CARD.md`` written beside every saved model, readable without Python.

It says what the model predicts (task, classes or time bins), what it was trained on (samples, patients,
each modality's coverage, the class balance or the events and censorings), the network (aggregator,
encoders, key hyperparameters), the metrics of its validation split, its intended use and limits, and the
versions that wrote it. Everything comes from what the folder itself stores (``config.json``,
``metrics.json``, ``provenance.json``), so a loaded model saved again writes the same card, and the card is
listed in the folder's checksum manifest like every other file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

CARD = "MODEL_CARD.md"
# The hyperparameters a reader needs to judge the fit (every one is in config.json).
KEY_PARAMS = ("task", "aggregator", "survival_head", "n_time_bins", "d_model", "n_heads", "n_layers",
              "dropout", "lr", "weight_decay", "max_epochs", "batch_size", "max_patches", "modality_dropout",
              "wide_penalty", "validation_fraction", "monitor", "seed")


def data_summary(train: Any, validation: Any | None, *, given: bool) -> dict[str, Any]:
    """What the card says about the data: one :func:`cohort_summary` of ``train`` and of ``validation``
    (None when the fit had no validation data), and whether the validation cohort was given to ``fit``
    (``given``) or split off the training cohort."""
    return {"training": cohort_summary(train),
            "validation": None if validation is None else cohort_summary(validation),
            "validation_given": bool(given) if validation is not None else None}


def cohort_summary(cohort: Any) -> dict[str, Any]:
    """Samples, patients, samples per modality and the targets of ``cohort`` (JSON-able, no sample ids).

    Targets: ``{"classes": {label: count}}`` for classification, ``{"events", "censored", "time_min",
    "time_median", "time_max"}`` for survival, None without targets.
    """
    presence = cohort.presence()
    out: dict[str, Any] = {"n_samples": int(len(cohort)), "n_patients": int(len(cohort.patients)),
                           "modalities": {str(m): int(presence[m].sum()) for m in presence.columns},
                           "targets": None}
    if getattr(cohort, "labels", None) is not None:
        counts = pd.Series(cohort.labels).astype(str).value_counts().sort_index()
        out["targets"] = {"classes": {str(k): int(v) for k, v in counts.items()}}
    elif getattr(cohort, "survival", None) is not None:
        surv = cohort.survival
        time, event = surv["time"].astype(float), surv["event"].astype(int)
        out["targets"] = {"events": int(event.sum()), "censored": int((event == 0).sum()),
                          "time_min": float(time.min()), "time_median": float(time.median()),
                          "time_max": float(time.max())}
    return out


# ------------------------------------------------------------------------------------------- rendering
def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "-" if v is None else str(v).lower()
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.3f}"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows)]


def _data_lines(summary: Mapping[str, Any] | None, n_recorded: Any) -> list[str]:
    if not summary:
        return [f"Training samples: {_fmt(n_recorded)}. The coverage of each modality and the targets were "
                "not recorded (the model was saved by a clinfuse that did not keep them)."]
    lines = []
    splits = [("training", summary["training"])]
    if summary.get("validation"):
        splits.append(("validation", summary["validation"]))
    lines += _table(["split", "samples", "patients"],
                    [[name, s["n_samples"], s["n_patients"]] for name, s in splits])
    modalities = list(summary["training"]["modalities"])
    lines += ["", "Samples with each modality (coverage):", ""]
    lines += _table(["modality", *(name for name, _ in splits)],
                    [[m, *(f"{s['modalities'].get(m, 0)} of {s['n_samples']} "
                           f"({s['modalities'].get(m, 0) / max(s['n_samples'], 1):.0%})" for _, s in splits)]
                     for m in modalities])
    targets = [(name, s["targets"]) for name, s in splits if s.get("targets")]
    if targets and "classes" in targets[0][1]:
        classes = sorted({c for _, t in targets for c in t["classes"]})
        lines += ["", "Class balance:", ""]
        lines += _table(["class", *(name for name, _ in targets)],
                        [[c, *(t["classes"].get(c, 0) for _, t in targets)] for c in classes])
    elif targets:
        lines += ["", "Events and censoring:", ""]
        lines += _table(["split", "events", "censored", "time min", "time median", "time max"],
                        [[name, t["events"], t["censored"], t["time_min"], t["time_median"], t["time_max"]]
                         for name, t in targets])
    return lines


def _metric_lines(metrics: Mapping[str, Any], summary: Mapping[str, Any] | None,
                  params: Mapping[str, Any]) -> list[str]:
    val = metrics.get("validation")
    lines = [f"Epochs run: {_fmt(metrics.get('epochs_run'))}; weights kept from epoch "
             f"{_fmt(metrics.get('best_epoch'))} (best validation loss "
             f"{_fmt(metrics.get('best_val_loss'))})."]
    if not isinstance(val, Mapping):
        return [*lines, "", "No validation metrics: the model was fitted without validation data."]
    where = "the validation split"
    if summary and summary.get("validation"):
        n = summary["validation"]["n_samples"]
        where = (f"the validation cohort given to `fit` ({n} samples)" if summary.get("validation_given") else
                 f"an inner grouped, stratified split of the cohort given to `fit` ({n} samples, "
                 f"validation_fraction={_fmt(params.get('validation_fraction'))}, "
                 f"seed={_fmt(params.get('seed'))})")
    lines += ["", f"Measured on {where}, which also chose the epoch (early stopping), so they are "
              "optimistic; one split, no folds. Cross-validated figures come from `cross_validate`, not "
              "from this card.", ""]
    overall = {k: v for k, v in val.items() if k != "by_pattern" and not isinstance(v, Mapping)}
    lines += _table(["metric", "value"], [[k, v] for k, v in overall.items()])
    patterns = val.get("by_pattern") or {}
    if patterns:
        keys = [k for k in overall if k != "n" and "@" not in k]  # the per-time columns stay overall
        lines += ["", "Per missingness pattern (modalities present):", ""]
        lines += _table(["pattern", "n", *keys], [[p, m.get("n"), *(m.get(k) for k in keys)]
                                                   for p, m in patterns.items()])
    return lines


def render_card(*, params: Mapping[str, Any], network: Mapping[str, Any] | None, metrics: Mapping[str, Any],
                provenance: Mapping[str, Any]) -> str:
    """The text of ``MODEL_CARD.md`` from a model folder's contents (``config.json``'s ``params`` and
    ``network``, ``metrics.json``, ``provenance.json``)."""
    training = provenance.get("training_data") or {}
    summary = training.get("summary")
    network = network or {}
    task = params.get("task")
    outputs = network.get("class_names")
    what = (f"classification into {len(outputs)} classes ({', '.join(map(str, outputs))})" if
            task == "classification" and outputs else
            f"survival with censoring ({params.get('survival_head')} head; risk and survival curves)"
            if task == "survival" else str(task))
    encoders = {m: spec.get("name") for m, spec in (network.get("encoders") or {}).items()}
    aggregator = (network.get("aggregator") or {}).get("name", params.get("aggregator"))
    versions = provenance.get("versions") or {}
    lines = ["# Model card", "", f"Saved by clinfuse {_fmt(versions.get('clinfuse'))} on "
             f"{_fmt(provenance.get('created'))}. Generated from the folder's JSON files.", "",
             "## Task", "", f"{what.capitalize()}. Modalities it reads: "
             f"{', '.join(network.get('modalities') or []) or '-'}; any subset per sample (a missing "
             "modality is masked, never imputed).", "",
             "## Data", "", *_data_lines(summary, training.get("n_samples")), "",
             "Training data fingerprint (SHA-256 of the sample ids and shapes): "
             f"`{_fmt(training.get('sha256'))}`.",
             "", "## Model", "", f"Aggregator: `{_fmt(aggregator)}`. Encoders: "
             + (", ".join(f"{m} `{e}`" for m, e in encoders.items()) or "-") + ".", "",
             *_table(["hyperparameter", "value (None: the default, resolved at fit)"],
                     [[k, "None" if params[k] is None else params[k]] for k in KEY_PARAMS if k in params
                      and (task == "survival" or k not in ("survival_head", "n_time_bins"))]), "",
             "## Metrics", "", *_metric_lines(metrics, summary, params), "",
             "## Intended use and limits", "",
             "- Research use only: not a medical device, not validated for clinical decisions.",
             "- Valid for data like the training data: the same modalities, columns, genes and feature "
             "extractor; new data is checked against the saved schema, and unseen levels or shifted scales "
             "are warned about.",
             "- The metrics above come from one small validation split; judge the model on an external "
             "cohort or by cross-validation. A model trained on a synthetic cohort "
             "(`make_synthetic_cohort`) says nothing about patients; on a public real cohort, its "
             "selection and size bound what it shows.",
             "- Attention weights are not attributions: compare them with `shap_values` / `attributions`.",
             *(["- Survival: nothing is evaluable past the last training time."]
               if task == "survival" else []),
             "", "## Versions", "",
             *_table(["package", "version"], [["python", provenance.get("python")],
                                              *([k, v] for k, v in versions.items())])]
    return "\n".join(lines) + "\n"
