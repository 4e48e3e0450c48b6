"""Saving and loading fitted models: plain JSON + a tensors-only state dict, written atomically.

A saved model is a folder::

    config.json        {"format": "clinfuse-model", "format_version": 4, "class": "FusionModel",
                        "params": the user's hyperparameters (get_params), "network": the resolved network
                        configuration (build.resolve_network_config), which load builds exactly}
    preprocessor.json  the fitted Preprocessor (Preprocessor.to_json; no pickle)
    schema.json        the data schema (modalities, columns, categories, genes, feature dimension, task)
    fitted.json        fitted attributes that are not tensors (classes, time bins, baseline hazard, history)
    weights.pt         ``network.state_dict()``: tensors only, read with ``torch.load(weights_only=True)``
    metrics.json       validation metrics of the fit
    provenance.json    clinfuse and dependency versions, python, time, fingerprint of the training data
    MODEL_CARD.md      what a reviewer reads without Python (:mod:`clinfuse.fusion.model_card`)
    .clinfuse          {"written_by": "clinfuse", "kind": "model"}
    manifest.json      size and SHA-256 of every other file, checked by load before anything is built

The folder is written whole into a temporary next to it and swapped in by one atomic step
(:mod:`clinfuse.datasets.atomic`), so the path holds the old model or the new one whatever is killed when.
Nothing is ever unpickled: the weights file is read with ``weights_only=True`` and must hold a flat
``{str: Tensor}`` mapping, anything else is refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import math
import platform
from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

from ..datasets import output_folders
from ..datasets.atomic import write_text_atomic
from ..datasets.statistics import to_jsonable
from .build import build_network, output_names, resolve_network_config
from .finite import check_finite_network
from .fitted import FittedState
from .model_card import CARD, data_summary, render_card  # noqa: F401 (data_summary: for fit)
from .model_files import validate_folder

FORMAT = "clinfuse-model"
FORMAT_VERSION = 4
OLDEST_FORMAT_VERSION = 3  # older folders left defaults unsaved that have changed since: retrain them
MARKER = output_folders.MARKER  # in every folder clinfuse writes: {"written_by": "clinfuse", "kind"}
WEIGHTS = "weights.pt"
DEPENDENCIES = ("torch", "pytorch-lightning", "numpy", "pandas", "scikit-learn", "anndata", "lifelines",
                "pytorch-tabular", "einops")


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temp file in the same folder + ``os.replace``)."""
    write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a complete clinfuse output folder")
    return json.loads(path.read_text(encoding="utf-8"))


def atomic_dir(target: str | Path, *, kind: str = "model",
               protect: Iterable[str | Path] = ()) -> contextlib.AbstractContextManager[Path]:
    """A temporary folder swapped in at ``target`` whole, in one atomic step (see
    :func:`clinfuse.datasets.output_folders.atomic_dir`: an existing ``target`` is replaced only when it
    holds nothing but clinfuse outputs of the same ``kind``, and never when it is one of ``protect``)."""
    return output_folders.atomic_dir(target, kind=kind, protect=protect)


def save_weights(path: str | Path, state_dict: Mapping[str, torch.Tensor]) -> None:
    """``torch.save`` of a flat ``{name: tensor}`` mapping (CPU, contiguous clones; nothing else)."""
    clean = {}
    for k, v in state_dict.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"state dict entry {k!r} is a {type(v).__name__}, only tensors are saved")
        clean[str(k)] = v.detach().cpu().clone().contiguous()
    torch.save(clean, Path(path))


def load_weights(path: str | Path, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """Read a weights file (or its ``data``, already read) with ``torch.load(weights_only=True)``; refuse
    anything but ``{str: Tensor}``."""
    path = Path(path)
    if data is None and not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a complete saved clinfuse model")
    try:
        obj = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
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


def provenance(sample_ids: list[str], shapes: Mapping[str, Any],
               summary: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": package_versions(),
        "training_data": {"n_samples": len(sample_ids), "shapes": to_jsonable(shapes),
                          "sha256": data_fingerprint(sample_ids, shapes), "summary": summary},
    }


def check_format(config: Mapping[str, Any], folder: Path) -> None:
    if config.get("format") != FORMAT:
        raise ValueError(f"{folder} does not hold a clinfuse model (config.json format is "
                         f"{config.get('format')!r}, expected {FORMAT!r})")
    version = config.get("format_version", 1)  # format 1 did not write it
    if isinstance(version, bool) or not isinstance(version, int):
        raise TypeError(f"{folder}/config.json: format_version must be an int, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{folder} was saved by a newer clinfuse (format_version {version}, this one reads "
                         f"<= {FORMAT_VERSION}); upgrade clinfuse")
    if version < OLDEST_FORMAT_VERSION:
        raise ValueError(f"{folder} was saved in format_version {version}, which this clinfuse no longer "
                         f"reads (it reads {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}): retrain the model "
                         "and save it again")


# ------------------------------------------------------------------------------------------- the model
# fitted.json holds these FittedState fields (keys with the attributes' trailing "_", as format 3 wrote them)
# (format 4 folders written before follow_up was kept have "censoring_" instead, which nothing reads)
_FITTED_JSON = ("classes", "time_bins", "history", "best_epoch", "baseline_hazard", "follow_up", "metrics")


_OBJECT_PARAMS = {"strategy": "auto", "logger": None, "callbacks": None}


def _jsonable_params(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        try:
            json.dumps(to_jsonable(v), allow_nan=False)
            out[k] = to_jsonable(v)
        except (TypeError, ValueError):
            # e.g. a Lightning Strategy, Logger or Callback object: the saved model is for prediction,
            # which never uses them; saved as their defaults
            if k not in _OBJECT_PARAMS:
                raise TypeError(f"hyperparameter {k}={v!r} cannot be saved as JSON") from None
            out[k] = _OBJECT_PARAMS[k]
    return out


def save_model(path: str | Path, *, class_name: str, params: dict[str, Any], state: FittedState,
               extras: Callable[[Path], None] | None = None) -> Path:
    """Write a fitted model (its hyperparameters and fitted state) to folder ``path`` atomically.
    ``extras(folder)`` may write more files (``clinfuse train``'s history and curve) before the swap, so
    that the manifest lists them; ``load`` reads only the files above.

    In multi-process training (DDP) every process holds the same weights; only rank 0 writes.
    """
    path = Path(path)
    if not state.is_global_zero:
        return path
    check_finite_network(state.network, f"save to {path}")
    with atomic_dir(path, kind="model") as tmp:
        write_json(tmp / "config.json", {"format": FORMAT, "format_version": FORMAT_VERSION,
                                         "class": class_name, "params": _jsonable_params(params),
                                         "network": state.network_config})
        state.preprocessor.to_json(tmp / "preprocessor.json")
        write_json(tmp / "schema.json", state.schema)
        write_json(tmp / "fitted.json", {f"{k}_": getattr(state, k) for k in _FITTED_JSON})
        save_weights(tmp / WEIGHTS, state.network.state_dict())
        write_json(tmp / "metrics.json", state.metrics or {})
        # a loaded model re-saved keeps its original provenance
        prov = state.provenance or provenance(state.training_ids, state.training_shapes, state.data_summary)
        write_json(tmp / "provenance.json", prov)
        card = render_card(params=_jsonable_params(params), network=state.network_config,
                           metrics=to_jsonable(state.metrics or {}), provenance=prov)
        write_text_atomic(tmp / CARD, card)
        if extras is not None:
            extras(tmp)
    return path.expanduser().resolve()


EARLIER_DEFAULTS: dict[str, dict[str, Any]] = {
    "persam": {"center_evidence": False, "instance_gate_penalty": None},
}
"""Aggregator -> keywords added after models were saved, with the value that reproduces such a model (a
saved configuration holds every keyword of its time, so a missing one means the model predates it)."""


def with_earlier_defaults(network: Any, *, every: bool = False) -> Any:
    """``network`` (a saved configuration) with the keywords of :data:`EARLIER_DEFAULTS` it lacks set to their
    earlier value; ``every``: set them whatever it holds (a format-3 configuration, rebuilt with today's
    defaults)."""
    spec = network.get("aggregator") if isinstance(network, dict) else None
    earlier = EARLIER_DEFAULTS.get(spec.get("name")) if isinstance(spec, dict) else None
    if not earlier or not isinstance(spec.get("kwargs"), dict):
        return network
    kwargs = {**spec["kwargs"], **{k: v for k, v in earlier.items() if every or k not in spec["kwargs"]}}
    return {**network, "aggregator": {**spec, "kwargs": kwargs}}


def _format3_network(schema: dict[str, Any], params: dict[str, Any],
                     fitted: dict[str, Any]) -> dict[str, Any]:
    """The format-3 reader: the network configuration of a folder that stored only ``params``.

    Format 3 derived the network from the hyperparameters: FusionModel's n_heads, n_layers and dropout went
    to every component whose constructor took them then (the ViT, CNN and FT-Transformer called their
    layer count ``depth`` and never got n_layers; no feed-forward width was shared), every other keyword
    was the component's default.
    """
    took = {"n_heads": {"event_transformer", "gene_transformer", "tabular_ft_transformer", "vit",
                        "cross_attention", "persam", "self_attention"},
            "n_layers": {"event_transformer", "gene_transformer", "persam", "self_attention"}}

    def format3_shared(cls: type) -> frozenset[str]:
        name = getattr(cls, "registry_name", "")  # heads are not registered: they got dropout only
        return frozenset({"dropout", *(k for k, names in took.items() if name in names)})

    names = output_names(params["task"], params["survival_head"], classes=fitted.get("classes_"),
                         time_bins=fitted.get("time_bins_"))
    params = _format3_gene_layers(schema, params)
    return resolve_network_config(schema, {**params, "ffn_mult": None}, n_outputs=len(names),
                                  class_names=names, shared_keywords=format3_shared)


def _format3_gene_layers(schema: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with gene_transformer's ``n_layers`` pinned to 1, its default when format 3 was written
    (None now: no layer among gene tokens), where the folder left it to that default."""
    from ..encoders import default_encoder

    if params.get("n_layers") is not None or "genomics" not in schema:
        return params
    name = (params.get("encoders") or {}).get("genomics") or default_encoder("genomics", schema["genomics"])
    given = dict(params.get("encoder_kwargs") or {})
    if name != "gene_transformer" or "n_layers" in (given.get("genomics") or {}):
        return params
    given["genomics"] = {**(given.get("genomics") or {}), "n_layers": 1}
    return {**params, "encoder_kwargs": given}


def load_model(path: str | Path, *, valid_params: set[str]) -> tuple[dict[str, Any], FittedState]:
    """Read a folder written by :func:`save_model`: the hyperparameters and the fitted state.

    Every file is read once, into memory, and checked against the folder's manifest before anything is
    built, so a save running meanwhile in another process can never give a model of two saves.
    """
    from ..datasets.preprocess import Preprocessor

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"no saved model at {folder} (expected a folder written by FusionModel.save)")
    snapshot = output_folders.read_snapshot(folder)
    # Every file's contents (read once, all from one save) are checked before anything is built: an invalid
    # file is named with its field, which says more than "changed since it was saved".
    contents = validate_folder(folder, snapshot.files)  # parsed JSON (format checked), weights' shapes
    snapshot.check()
    config = contents["config.json"]
    params = dict(config["params"])
    unknown = sorted(set(params) - valid_params)
    if unknown:
        raise ValueError(f"{folder}/config.json has unknown hyperparameter(s) {unknown}; "
                         f"valid: {sorted(valid_params)}")
    preprocessor = Preprocessor.from_dict(contents["preprocessor.json"])
    schema = contents["schema.json"]
    if schema != json.loads(json.dumps(preprocessor.schema_)):
        raise ValueError(f"{folder}: schema.json does not match preprocessor.json (the folder was modified)")
    fitted = contents["fitted.json"]
    if fitted.get("time_bins_") is not None:  # JSON has no infinity: the open last edge was written as null
        fitted["time_bins_"] = [math.inf if v is None else float(v) for v in fitted["time_bins_"]]
    if int(config["format_version"]) >= 4:
        network_config = with_earlier_defaults(config.get("network"))
    else:
        network_config = with_earlier_defaults(_format3_network(schema, params, fitted), every=True)
    weights = load_weights(folder / WEIGHTS, snapshot.files[WEIGHTS])
    try:
        network = build_network(schema, network_config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{folder}/config.json: {exc}") from exc
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{folder}/{WEIGHTS} does not fit the saved configuration: {exc}") from exc
    state = FittedState(preprocessor=preprocessor, schema=schema, network=network.eval(),
                        network_config=network_config, provenance=contents["provenance.json"],
                        **{k: fitted.get(f"{k}_") for k in _FITTED_JSON})
    return params, state
