"""Checking a saved model folder before anything is built from it: :func:`validate_folder`.

Every file is parsed and checked against what ``save`` writes: JSON syntax (the file and line), required
fields and their types, finite statistics with std > 0, list lengths that agree (means and stds per column
or gene, class names per output), and the sizes in ``config.json`` against the tensor shapes in
``weights.pt`` (read from its header, memory-mapped: no tensor data is loaded). A damaged or edited folder
then fails in milliseconds with a ``ValueError`` naming the file and the field, instead of a traceback
from deep inside ``load`` or a network built at the edited size (``d_model: 16000`` needs gigabytes).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

JSON_FILES = ("config.json", "preprocessor.json", "schema.json", "fitted.json", "metrics.json",
              "provenance.json")
WEIGHTS = "weights.pt"


class _Where:
    """Raises ``ValueError("<folder>/<file>: field <path>: ...")``."""

    def __init__(self, folder: Path, file: str) -> None:
        self.folder, self.file = folder, file

    def fail(self, field: str, what: str) -> None:
        raise ValueError(f"{self.folder}/{self.file}: field {field}: {what}")

    def get(self, obj: Mapping[str, Any], key: str, field: str, check: Callable[[Any], bool], expected: str,
            *, optional: bool = False) -> Any:
        if key not in obj:
            if optional:
                return None
            self.fail(field, f"missing; expected {expected}")
        value = obj[key]
        if not check(value):
            self.fail(field, f"expected {expected}, got {_short(value)}")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _pos_int(v: Any) -> bool:
    return _int(v) and v >= 1


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _mapping(v: Any) -> bool:
    return isinstance(v, Mapping)


def _numbers(where: _Where, values: Any, field: str, n: int | None, *, positive: bool = False) -> None:
    """A list of ``n`` finite numbers (``> 0`` when ``positive``)."""
    if not isinstance(values, list):
        where.fail(field, f"expected a list of numbers, got {_short(values)}")
    if n is not None and len(values) != n:
        where.fail(field, f"has {len(values)} values, expected {n} (one per entry it describes)")
    for i, v in enumerate(values):
        if not _number(v) or (positive and v <= 0):
            where.fail(f"{field}[{i}]", f"expected a finite number{' > 0' if positive else ''}, got "
                                        f"{_short(v)}")


def _file_bytes(folder: Path, name: str, files: Mapping[str, bytes] | None) -> bytes:
    """The bytes of one file: from ``files`` (a snapshot read once) when given, else from disk."""
    path = folder / name
    data = files.get(name) if files is not None else (path.read_bytes() if path.is_file() else None)
    if data is None:
        raise FileNotFoundError(f"{path} is missing: not a complete saved clinfuse model")
    return data


def read_json_file(folder: Path, name: str, files: Mapping[str, bytes] | None = None) -> Any:
    """A JSON file of the folder; ``ValueError`` naming the file and the line when it is not JSON."""
    path = folder / name
    data = _file_bytes(folder, name, files)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: "
                         f"{exc.msg}") from None


def weight_shapes(folder: Path, files: Mapping[str, bytes] | None = None) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape of the weights file (memory-mapped from disk, or from the snapshot's bytes)."""
    path = folder / WEIGHTS
    source: Any = io.BytesIO(_file_bytes(folder, WEIGHTS, files)) if files is not None else path
    if files is None and not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a complete saved clinfuse model")
    try:
        obj = torch.load(source, map_location="cpu", weights_only=True, mmap=files is None)
    except Exception as exc:  # not a zip archive (mmap needs one), or more than tensors: refused either way
        raise ValueError(f"refusing to load {path}: it is not a tensors-only state dict ({exc})") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"refusing to load {path}: expected a mapping of parameter names to tensors")
    return {k: tuple(v.shape) for k, v in obj.items()}


# ------------------------------------------------------------------------------------------ config.json
def _component(where: _Where, spec: Any, field: str) -> None:
    if not _mapping(spec):
        where.fail(field, f"expected {{'name': ..., 'kwargs': {{...}}}}, got {_short(spec)}")
    where.get(spec, "name", f"{field}.name", lambda v: isinstance(v, str), "a component name")
    where.get(spec, "kwargs", f"{field}.kwargs", _mapping, "a mapping of keywords")


def check_config(where: _Where, config: Any) -> None:
    """``config.json``: format, class, hyperparameters and (format >= 4) the resolved network."""
    if not _mapping(config):
        where.fail("(top level)", f"expected a JSON object, got {_short(config)}")
    where.get(config, "class", "class", lambda v: isinstance(v, str), "a class name")
    params = where.get(config, "params", "params", _mapping, "a mapping of hyperparameters")
    where.get(params, "task", "params.task", lambda v: v in ("classification", "survival"),
              "'classification' or 'survival'")
    where.get(params, "survival_head", "params.survival_head", lambda v: v in ("discrete", "cox"),
              "'discrete' or 'cox'")
    where.get(params, "d_model", "params.d_model", _pos_int, "a positive int")
    where.get(params, "aggregator", "params.aggregator", lambda v: v is None or isinstance(v, str),
              "an aggregator name or null")
    if int(config["format_version"]) < 4:
        return
    net = where.get(config, "network", "network", _mapping, "the resolved network configuration")
    where.get(net, "d_model", "network.d_model", _pos_int, "a positive int")
    where.get(net, "modalities", "network.modalities", lambda v: _str_list(v) and len(v) > 0,
              "a non-empty list of modality names")
    where.get(net, "modality_dropout", "network.modality_dropout", lambda v: _number(v) and 0 <= v < 1,
              "a number in [0, 1)")
    n_out = where.get(net, "n_outputs", "network.n_outputs", _pos_int, "a positive int")
    names = where.get(net, "class_names", "network.class_names", _str_list, "a list of output names")
    if len(names) != n_out:
        where.fail("network.class_names", f"has {len(names)} names for n_outputs={n_out}")
    for key in ("token_types", "aggregator", "head"):
        _component(where, where.get(net, key, f"network.{key}", lambda v: True, ""), f"network.{key}")
    encoders = where.get(net, "encoders", "network.encoders", _mapping, "a mapping modality -> encoder")
    if sorted(encoders) != sorted(net["modalities"]):
        where.fail("network.encoders", f"names modalities {sorted(encoders)}, but network.modalities is "
                                       f"{net['modalities']}")
    for m, spec in encoders.items():
        _component(where, spec, f"network.encoders.{m}")


# ------------------------------------------------------------------------------------ preprocessor.json
def _check_clinical(where: _Where, state: Mapping[str, Any], field: str) -> None:
    columns = where.get(state, "numeric", f"{field}.numeric", _str_list, "a list of column names")
    _numbers(where, where.get(state, "mean", f"{field}.mean", lambda v: True, ""), f"{field}.mean",
             len(columns))
    _numbers(where, where.get(state, "std", f"{field}.std", lambda v: True, ""), f"{field}.std",
             len(columns), positive=True)
    categories = where.get(state, "categories", f"{field}.categories", _mapping,
                           "a mapping column -> list of levels")
    for col, levels in categories.items():
        if not isinstance(levels, list):
            where.fail(f"{field}.categories.{col}", f"expected a list of levels, got {_short(levels)}")


def _check_genomics(where: _Where, state: Mapping[str, Any], field: str) -> None:
    genes = where.get(state, "genes", f"{field}.genes", lambda v: _str_list(v) and len(v) > 0,
                      "a non-empty list of gene names")
    _numbers(where, where.get(state, "mean", f"{field}.mean", lambda v: True, ""), f"{field}.mean",
             len(genes))
    _numbers(where, where.get(state, "std", f"{field}.std", lambda v: True, ""), f"{field}.std", len(genes),
             positive=True)


def _check_events(where: _Where, state: Mapping[str, Any], field: str) -> None:
    where.get(state, "vocab", f"{field}.vocab", _str_list, "a list of event codes")
    _numbers(where, where.get(state, "default_stats", f"{field}.default_stats", lambda v: True, ""),
             f"{field}.default_stats", 2)
    if where.get(state, "default_stats", "", lambda v: True, "")[1] <= 0:
        where.fail(f"{field}.default_stats[1]", "the std must be > 0")
    stats = where.get(state, "value_stats", f"{field}.value_stats", _mapping, "a mapping code -> [mean, std]")
    for code, pair in stats.items():
        _numbers(where, pair, f"{field}.value_stats.{code}", 2)
        if pair[1] <= 0:
            where.fail(f"{field}.value_stats.{code}[1]", f"the std must be > 0, got {pair[1]!r}")
    where.get(state, "has_values", f"{field}.has_values", lambda v: isinstance(v, bool), "true or false")
    where.get(state, "n_rare_codes", f"{field}.n_rare_codes", lambda v: _int(v) and v >= 0, "an int >= 0")
    where.get(state, "time_span", f"{field}.time_span", lambda v: v is None or _number(v), "a number or null",
              optional=True)


def _check_images(where: _Where, state: Mapping[str, Any], field: str) -> None:
    kind = where.get(state, "kind", f"{field}.kind", lambda v: v in ("features", "pixels"),
                     "'features' or 'pixels'")
    for key in ("feature_dim",) if kind == "features" else ("channels", "height", "width"):
        where.get(state, key, f"{field}.{key}", _pos_int, "a positive int")


STATE_CHECKS: dict[str, Callable[[_Where, Mapping[str, Any], str], None]] = {
    "clinical": _check_clinical, "genomics": _check_genomics, "events": _check_events,
    "images": _check_images}
"""Modality -> the check of its fitted statistics in ``preprocessor.json`` (other modalities: a mapping)."""


def check_preprocessor(where: _Where, state: Any) -> None:
    """``preprocessor.json``: the Preprocessor's parameters and every modality's fitted statistics."""
    if not _mapping(state):
        where.fail("(top level)", f"expected a JSON object, got {_short(state)}")
    where.get(state, "format", "format", lambda v: v == "clinfuse.Preprocessor", "'clinfuse.Preprocessor'")
    where.get(state, "params", "params", _mapping, "a mapping of Preprocessor parameters")
    fitted = where.get(state, "fitted", "fitted", _mapping, "the fitted statistics (a saved model is fitted)")
    modalities = where.get(fitted, "modalities", "fitted.modalities", lambda v: _str_list(v) and len(v) > 0,
                           "a non-empty list of modality names")
    where.get(fitted, "task", "fitted.task", lambda v: v is None or (_mapping(v) and "type" in v),
              "null or a mapping with 'type'")
    for m in modalities:
        part = where.get(fitted, m, f"fitted.{m}", _mapping, f"the fitted statistics of {m}")
        STATE_CHECKS.get(m, lambda *a: None)(where, part, f"fitted.{m}")


# ------------------------------------------------------------------------------------------ fitted.json
def check_fitted(where: _Where, fitted: Any, params: Mapping[str, Any], n_outputs: int | None) -> None:
    """``fitted.json``: classes or time bins that agree with the outputs, history, baseline hazard, the
    survival follow-up (optional: older folders have none)."""
    if not _mapping(fitted):
        where.fail("(top level)", f"expected a JSON object, got {_short(fitted)}")
    task, head = params["task"], params["survival_head"]
    if task == "classification":
        classes = where.get(fitted, "classes_", "classes_", lambda v: isinstance(v, list) and len(v) >= 2,
                            "a list of at least two class labels")
        if n_outputs is not None and len(classes) != n_outputs:
            where.fail("classes_", f"has {len(classes)} classes, config.json network.n_outputs is "
                                   f"{n_outputs}")
    elif head == "discrete":
        bins = where.get(fitted, "time_bins_", "time_bins_", lambda v: isinstance(v, list) and len(v) >= 3,
                         "a list of at least three bin edges")
        for i, v in enumerate(bins):  # the open last edge is written as null
            if not (_number(v) or (v is None and i == len(bins) - 1)):
                where.fail(f"time_bins_[{i}]", f"expected a finite number, got {_short(v)}")
        if n_outputs is not None and len(bins) != n_outputs + 1:
            where.fail("time_bins_", f"has {len(bins)} edges for network.n_outputs={n_outputs} bins")
    else:
        hazard = where.get(fitted, "baseline_hazard_", "baseline_hazard_", _mapping,
                           "the Breslow baseline {'times': [...], 'cumhaz': [...]}")
        times = where.get(hazard, "times", "baseline_hazard_.times", lambda v: isinstance(v, list), "a list")
        _numbers(where, times, "baseline_hazard_.times", None)
        _numbers(where, where.get(hazard, "cumhaz", "baseline_hazard_.cumhaz", lambda v: True, ""),
                 "baseline_hazard_.cumhaz", len(times))
    history = where.get(fitted, "history_", "history_", lambda v: isinstance(v, list), "a list of epochs",
                        optional=True)
    if history is not None and not all(_mapping(row) for row in history):
        where.fail("history_", "expected one mapping per epoch")
    where.get(fitted, "best_epoch_", "best_epoch_", lambda v: v is None or _int(v), "an int or null",
              optional=True)
    where.get(fitted, "metrics_", "metrics_", lambda v: v is None or _mapping(v), "a mapping", optional=True)
    follow = where.get(fitted, "follow_up_", "follow_up_", lambda v: v is None or _mapping(v),
                       "null or the life table {'time': [...], 'n_events': [...], 'n_censored': [...]}",
                       optional=True)
    if follow is not None:
        times = where.get(follow, "time", "follow_up_.time", lambda v: isinstance(v, list) and len(v) >= 1,
                          "a non-empty list")
        _numbers(where, times, "follow_up_.time", None)
        for key in ("n_events", "n_censored"):
            counts = where.get(follow, key, f"follow_up_.{key}", lambda v: isinstance(v, list), "a list")
            _numbers(where, counts, f"follow_up_.{key}", len(times))
            if not all(_int(c) and c >= 0 for c in counts):
                where.fail(f"follow_up_.{key}", "expected counts (integers >= 0)")


# ----------------------------------------------------------------------------------------- the weights
WIDTH_PARAMETER = "token_types.type_embedding"
"""A parameter of every network whose last dimension is ``d_model``."""


def check_sizes(folder: Path, config: Mapping[str, Any], schema: Any, shapes: Mapping[str, tuple]) -> None:
    """The sizes of ``config.json`` against the weights' shapes: ``d_model`` first (so an edited width
    fails before any network exists), then, for format >= 4, every parameter of the network built on the
    ``meta`` device (shapes only, no memory) when its components can be built there."""
    where = _Where(folder, "config.json")
    version = int(config["format_version"])
    field = "network.d_model" if version >= 4 else "params.d_model"
    d_model = config["network"]["d_model"] if version >= 4 else config["params"]["d_model"]
    width = shapes.get(WIDTH_PARAMETER)
    if width is not None and width[-1] != d_model:
        where.fail(field, f"{d_model}, but {WEIGHTS} was saved with width {width[-1]} ({WIDTH_PARAMETER} has "
                          f"shape {width})")
    if version < 4:
        return
    from .build import build_network

    try:
        with torch.device("meta"):
            net = build_network(schema, config["network"])
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"{folder}/config.json: field network: {exc}") from None
    except (RuntimeError, NotImplementedError):
        # a component computes from data at construction (meta tensors hold none): the real build's
        # strict load_state_dict compares the shapes instead, at a width already checked above
        return
    # parameters only: some buffers are sized by the data when fitted (a reference set) and resized on load
    built = {k: tuple(v.shape) for k, v in net.named_parameters()}
    missing, extra = sorted(set(built) - set(shapes)), sorted(set(shapes) - set(net.state_dict()))
    if missing or extra:
        raise ValueError(f"{folder}/{WEIGHTS} does not fit config.json network: parameters missing from the "
                         f"weights {missing[:5]}, not in the network {extra[:5]}")
    wrong = [k for k in built if built[k] != shapes[k]]
    if wrong:
        k = wrong[0]
        raise ValueError(f"{folder}/{WEIGHTS} does not fit config.json network: {k} has shape {shapes[k]} in "
                         f"the weights but {built[k]} in the configured network ({len(wrong)} differ)")


def validate_folder(folder: str | Path, files: Mapping[str, bytes] | None = None) -> dict[str, Any]:
    """Check every file of a saved model folder (the folder holding ``config.json``, ``weights.pt``, ...)
    before anything is built; returns ``{file name: parsed JSON}`` plus ``"weights_shapes"``. ``files``:
    the folder's files already read into memory (name -> bytes), so that the check sees one save.

    Raises ``ValueError`` naming the file and field for any damage (see the module docstring),
    ``FileNotFoundError`` for a missing file.
    """
    from .persistence import check_format

    folder = Path(folder).expanduser()
    contents: dict[str, Any] = {name: read_json_file(folder, name, files) for name in JSON_FILES}
    config = contents["config.json"]
    if not _mapping(config):
        _Where(folder, "config.json").fail("(top level)", f"expected a JSON object, got {_short(config)}")
    check_format(config, folder)
    check_config(_Where(folder, "config.json"), config)
    check_preprocessor(_Where(folder, "preprocessor.json"), contents["preprocessor.json"])
    for name in ("schema.json", "metrics.json", "provenance.json"):
        if not _mapping(contents[name]):
            _Where(folder, name).fail("(top level)", f"expected a JSON object, got {_short(contents[name])}")
    network = config.get("network") if int(config["format_version"]) >= 4 else None
    check_fitted(_Where(folder, "fitted.json"), contents["fitted.json"], config["params"],
                 None if network is None else network["n_outputs"])
    shapes = weight_shapes(folder, files)
    check_sizes(folder, config, contents["schema.json"], shapes)
    contents["weights_shapes"] = shapes
    return contents
