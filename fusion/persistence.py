"""Saving and loading fitted models: plain JSON + a tensors-only state dict, written atomically.

A saved model is a folder::

    config.json        {"format": "clinfuse-model", "format_version": 2, "class": "FusionModel", "params": {...}}
    preprocessor.json  the fitted Preprocessor (Preprocessor.to_json; no pickle)
    schema.json        the data schema (modalities, columns, categories, genes, feature dimension, task)
    fitted.json        fitted attributes that are not tensors (classes, time bins, baseline hazard, history)
    weights.pt         ``network.state_dict()``: tensors only, read back with ``torch.load(weights_only=True)``
    metrics.json       validation metrics of the fit
    provenance.json    clinfuse and dependency versions, python, time, fingerprint of the training data

Nothing is ever unpickled: the weights file is read with ``weights_only=True`` and must hold a flat
``{str: Tensor}`` mapping, anything else is refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import platform
from collections.abc import Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..datasets.atomic import atomic_path, write_text_atomic

FORMAT = "clinfuse-model"
FORMAT_VERSION = 3
# PersAM's defaults changed twice: format 1 built it as what is now its encoded variant, format 2 without
# the modality logit terms. An older persam folder is rebuilt with its defaults spelled out (see load_model).
MARKER = ".clinfuse"  # present in every folder clinfuse writes; only such folders are ever replaced
WEIGHTS = "weights.pt"
DEPENDENCIES = ("torch", "pytorch-lightning", "numpy", "pandas", "scikit-learn", "anndata", "lifelines",
                "pytorch-tabular", "einops")


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples and paths -> plain JSON types (NaN -> None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temp file in the same folder + ``os.replace``)."""
    write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a complete clinfuse output folder")
    return json.loads(path.read_text(encoding="utf-8"))


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``target``; on success it replaces ``target`` by renaming.

    An existing ``target`` is replaced only when it is empty or was written by clinfuse (holds the
    ``.clinfuse`` marker), so a mistyped ``--out`` can never wipe an unrelated folder. On error the
    temporary folder is removed and ``target`` is left untouched.
    """
    target = Path(target).expanduser().resolve()
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"output path {target} exists and is not a folder")
        if any(target.iterdir()) and not (target / MARKER).exists():
            raise ValueError(f"output folder {target} exists and was not written by clinfuse; "
                             "choose a new or empty folder")
    with atomic_path(target, directory=True) as tmp:
        yield tmp
        (tmp / MARKER).write_text("written by clinfuse\n")


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``torch.save`` of a flat ``{name: tensor}`` mapping (CPU, contiguous clones; nothing else)."""
    clean = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, only tensors are saved")
        clean[str(k)] = v.detach().cpu().clone().contiguous()
    torch.save(clean, Path(path))


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file with ``torch.load(weights_only=True)``; refuse anything but ``{str: Tensor}``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a complete saved clinfuse model")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError and friends: the file holds more than tensors
        raise ValueError(f"refusing to load {path}: it is not a tensors-only state dict ({exc})") from exc
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"refusing to load {path}: expected a mapping of parameter names to tensors")
    return obj


def package_versions() -> dict[str, str | None]:
    """Versions of clinfuse and its main dependencies (None when one is not installed)."""
    out: dict[str, str | None] = {}
    for name in ("clinfuse", *DEPENDENCIES):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def data_fingerprint(sample_ids: list[str], shapes: Mapping[str, Any]) -> str:
    """SHA-256 of the sorted training sample ids and the data shapes: identifies the training data
    without storing any of it."""
    payload = json.dumps({"sample_ids": sorted(map(str, sample_ids)), "shapes": to_jsonable(shapes)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def data_shapes(cohort: Any) -> dict[str, Any]:
    """Shapes of the data a model was trained on (for the provenance fingerprint): each modality's
    ``Modality.shape``."""
    from ..datasets.modalities import MODALITY_REGISTRY

    shapes: dict[str, Any] = {"n_samples": len(cohort)}
    for m in MODALITY_REGISTRY:
        data = getattr(cohort, m.name, None)
        if data is not None:
            shapes[m.name] = m.shape(data)
    return shapes


def provenance(sample_ids: list[str], shapes: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "training_data": {"n_samples": len(sample_ids), "shapes": to_jsonable(shapes),
                          "sha256": data_fingerprint(sample_ids, shapes)},
    }


def check_format(config: Mapping[str, Any], folder: Path) -> None:
    if config.get("format") != FORMAT:
        raise ValueError(f"{folder} does not hold a clinfuse model (config.json format is "
                         f"{config.get('format')!r}, expected {FORMAT!r})")
    if int(config.get("format_version", -1)) > FORMAT_VERSION:
        raise ValueError(f"{folder} was saved by a newer clinfuse (format_version "
                         f"{config.get('format_version')}, this one reads <= {FORMAT_VERSION}); upgrade clinfuse")


# ------------------------------------------------------------------------------------------- the model
_FITTED_JSON = ("classes_", "time_bins_", "history_", "best_epoch_", "baseline_hazard_", "censoring_", "metrics_")


def _jsonable_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        try:
            json.dumps(to_jsonable(v), allow_nan=False)
            out[k] = to_jsonable(v)
        except (TypeError, ValueError):
            # e.g. a Lightning Strategy object: the saved model is for prediction, which never uses it.
            if k != "strategy":
                raise TypeError(f"hyperparameter {k}={v!r} cannot be saved as JSON") from None
            out[k] = "auto"
    return out


def save_model(model: Any, path: str | Path) -> Path:
    """Write ``model`` (fitted) to folder ``path`` atomically; returns the folder.

    In multi-process training (DDP) every process holds the same weights; only rank 0 writes.
    """
    path = Path(path)
    if not getattr(model, "is_global_zero_", True):
        return path
    with atomic_dir(path) as tmp:
        write_json(tmp / "config.json", {"format": FORMAT, "format_version": FORMAT_VERSION,
                                         "class": type(model).__name__, "params": _jsonable_params(model.get_params())})
        model.preprocessor_.to_json(tmp / "preprocessor.json")
        write_json(tmp / "schema.json", model.schema_)
        write_json(tmp / "fitted.json", {k: getattr(model, k, None) for k in _FITTED_JSON})
        save_weights(tmp / WEIGHTS, model.network_.state_dict())
        write_json(tmp / "metrics.json", getattr(model, "metrics_", {}) or {})
        prov = (provenance(model.training_ids_, model.training_shapes_) if hasattr(model, "training_ids_")
                else model.provenance_)  # a loaded model re-saved keeps its original provenance
        write_json(tmp / "provenance.json", prov)
    return path.expanduser().resolve()


def load_model(cls: type, path: str | Path) -> Any:
    """Rebuild a ``FusionModel`` from a folder written by :func:`save_model`."""
    from ..datasets.preprocess import Preprocessor
    from .training import build_network

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no saved model at {folder} (expected a folder written by FusionModel.save)")
    config = read_json(folder / "config.json")
    check_format(config, folder)
    params = dict(config["params"])
    version = int(config.get("format_version", 1))
    if version < FORMAT_VERSION and params.get("aggregator", "persam") == "persam":
        # rebuilt as the PersAM architecture the folder was saved with (the weights fit no other)
        from .aggregators.persam import ENCODED_VARIANT_KWARGS, GATED_VARIANT_KWARGS

        legacy = ENCODED_VARIANT_KWARGS if version < 2 else GATED_VARIANT_KWARGS
        params["aggregator_kwargs"] = {**legacy, **(params.get("aggregator_kwargs") or {})}
    valid = set(cls().get_params())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"{folder}/config.json has unknown hyperparameter(s) {unknown}; valid: {sorted(valid)}")
    model = cls(**params)
    model.preprocessor_ = Preprocessor.from_json(folder / "preprocessor.json")
    model.schema_ = read_json(folder / "schema.json")
    if model.schema_ != json.loads(json.dumps(model.preprocessor_.schema_)):
        raise ValueError(f"{folder}: schema.json does not match preprocessor.json (the folder was modified)")
    fitted = read_json(folder / "fitted.json")
    for key in _FITTED_JSON:
        setattr(model, key, fitted.get(key))
    if model.time_bins_ is not None:  # JSON has no infinity: the open last edge was written as null
        model.time_bins_ = [math.inf if v is None else float(v) for v in model.time_bins_]
    if model.task == "classification":
        names = [str(c) for c in model.classes_]
    elif model.survival_head == "discrete":
        e = model.time_bins_
        names = [f"{e[k]:g}-{e[k + 1]:g}" for k in range(len(e) - 1)]
    else:
        names = ["risk"]
    network = build_network(model.schema_, params=model.get_params(), n_outputs=len(names), class_names=names)
    state = load_weights(folder / WEIGHTS)
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{folder}/{WEIGHTS} does not fit the saved configuration: {exc}") from exc
    model.network_ = network.eval()
    prov = read_json(folder / "provenance.json")
    model.provenance_ = prov
    model.is_global_zero_ = True
    return model
