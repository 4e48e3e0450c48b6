"""Building the network: one resolved, JSON-able configuration and the one function that builds it.

:func:`resolve_network_config` turns a FusionModel's hyperparameters into the complete configuration of
every component (its registered name and every constructor keyword, defaults filled in), and
:func:`build_network` builds exactly that for a fitted data schema. ``fit`` resolves and builds; a saved
model stores the configuration and ``load`` builds it again, so a saved model never depends on defaults
that change later. What the data decides (input widths, vocabularies, gene lists) is not part of it: each
encoder's ``from_schema`` reads it from the schema at build time.
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from .. import encoders as enc
from ..datasets.batch import MODALITIES
from .base import AGGREGATORS
from .heads import ClassificationHead, CoxHead, DiscreteTimeHead
from .network import FusionNetwork
from .token_types import TokenTypeEmbedding
from .wide import WIDE_MODALITIES, WideLinear

# The default for a cohort without an instance modality: on clinical-only cohorts (GBSG2, 3 splits) it
# trained better than concat and self_attention, and it exports per-feature attention for explain.
TABLE_AGGREGATOR = "hierarchical"

SHARED_KEYWORDS = ("n_heads", "n_layers", "dropout", "ffn_mult")
"""FusionModel keywords passed to every component that has the concept (``d_model`` always is)."""

HEADS: dict[str, tuple[type[nn.Module], str | None]] = {
    "classification": (ClassificationHead, "n_classes"),
    "discrete": (DiscreteTimeHead, "n_bins"),
    "cox": (CoxHead, None),
}
"""Head name -> (class, the constructor keyword that receives ``n_outputs``)."""

# Keywords the builder passes itself (never stored): sizes and the outputs' names.
_AGGREGATOR_SUPPLIED = frozenset({"d_model", "modalities", "n_outputs", "class_names"})
_TOKEN_TYPES_SUPPLIED = frozenset({"d_model", "modalities"})

NETWORK_KEYS = ("d_model", "modalities", "modality_dropout", "n_outputs", "class_names", "token_types",
                "encoders", "aggregator", "head")

RENAMED_KEYWORDS: dict[str, dict[str, str]] = {
    "vit": {"depth": "n_layers"}, "cnn": {"depth": "n_layers"},
    "tabular_ft_transformer": {"depth": "n_layers", "ff_hidden_multiplier": "ffn_mult"},
    "persam": {"instance_ffn_mult": "ffn_mult"},
}
"""Registered component -> earlier names of its keywords (in a user's ``encoder_kwargs`` /
``aggregator_kwargs`` or a saved format-3 folder): accepted with a DeprecationWarning and stored under the
current name. Only the built-ins that were renamed: a user component keeps its own names."""


def head_name(task: str, survival_head: str) -> str:
    return "classification" if task == "classification" else survival_head


def output_names(task: str, survival_head: str, *, classes: Sequence | None,
                 time_bins: Sequence[float] | None) -> list[str]:
    """Names of the network's outputs: the classes, the time bins ``"lo-hi"``, or ``["risk"]`` (Cox)."""
    if task == "classification":
        return [str(c) for c in classes]
    if survival_head == "discrete":
        e = list(time_bins)
        return [f"{e[k]:g}-{e[k + 1]:g}" for k in range(len(e) - 1)]
    return ["risk"]


# ------------------------------------------------------------------------------------------- keywords
def shared_keywords_of(cls: type) -> frozenset[str]:
    """The shared concepts (of :data:`SHARED_KEYWORDS`) a component class declares it has."""
    return frozenset(cls.shared_keywords)


def _current_names(label: str, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` with earlier keyword names (:data:`RENAMED_KEYWORDS`) replaced by the current ones."""
    renamed = RENAMED_KEYWORDS.get(name, {})
    out = {}
    for key, value in given.items():
        new = renamed.get(key, key)
        if new != key:
            if new in given:
                raise ValueError(f"{label} {name!r}: {key!r} is the earlier name of {new!r}; "
                                 "give one of them")
            warnings.warn(f"{label} {name!r}: the keyword {key!r} is now called {new!r}", DeprecationWarning,
                          stacklevel=4)
        out[new] = value
    return out


def _keywords(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's keywords; a constructor that takes ``**kwargs`` and hands them on (a subclass of
    a registered component) also has those of the classes it inherits from."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass in (object, nn.Module):
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
                out.setdefault(p.name, p)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return out


def component_defaults(cls: type) -> dict[str, Any]:
    """The constructor defaults of a component class."""
    return {k: p.default for k, p in _keywords(cls).items() if p.default is not inspect.Parameter.empty}


def _schema_keywords(cls: type, schema_entry: Mapping[str, Any], *, d_model: int,
                     given: Mapping[str, Any]) -> frozenset[str]:
    """The keywords ``cls.from_schema`` passes to the constructor itself (sizes, vocabularies, gene
    lists): they come from the schema at every build and are never stored. Found by letting
    ``from_schema`` construct a stand-in that only records its keywords."""
    seen: dict[str, Any] = {}

    class _Recorded(Exception):
        """Stops ``from_schema`` once the constructor is reached: nothing is built or used."""

    class _Recorder(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen.update(kwargs)
            raise _Recorded

    try:
        _Recorder.from_schema(schema_entry, d_model=d_model, **given)
    except _Recorded:
        pass
    except TypeError as exc:
        if "multiple values for keyword argument" not in str(exc):
            raise
        raise ValueError(f"encoder {cls.registry_name!r}: {exc}; keywords that the data schema supplies "
                         "cannot be given") from None
    return frozenset(seen) - set(given) - {"d_model"}


def _json_value(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a JSON value")


def _full_kwargs(label: str, name: str, cls: type, *, shared: Mapping[str, Any], given: Mapping[str, Any],
                 supplied: frozenset[str], concepts: Callable[[type], frozenset[str]]) -> dict[str, Any]:
    """Every keyword of one component: the shared values of the concepts it has (None = its own default),
    then the user's keywords, then its defaults. ``supplied`` (d_model, schema sizes) are never stored."""
    given = _current_names(label, name, given)
    known = set(_keywords(cls)) - supplied
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"{label} {name!r} has no keyword(s) {unknown}; it takes {sorted(known)}")
    kw = {k: v for k, v in shared.items() if v is not None and k in concepts(cls)}
    kw.update(given)
    for k, v in component_defaults(cls).items():
        if k not in supplied:
            kw.setdefault(k, v)
    kw = {k: kw[k] for k in _keywords(cls) if k in kw}  # in the constructor's order
    try:
        return json.loads(json.dumps(kw, default=_json_value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{label} {name!r}: every keyword must be a JSON value to be saved ({exc})") from None


def _check_modality_names(what: str, mapping: Mapping[str, Any], modalities: list[str]) -> None:
    unknown = [m for m in mapping if m not in modalities]
    if unknown:
        raise ValueError(f"{what} names modality {unknown} that the training data does not have "
                         f"(it has {modalities})")


# ------------------------------------------------------------------------------------------ resolve
def resolve_network_config(schema: Mapping[str, Any], params: Mapping[str, Any], *, n_outputs: int,
                           class_names: Sequence[str],
                           shared_keywords: Callable[[type], frozenset[str]] = shared_keywords_of,
                           ) -> dict[str, Any]:
    """The complete network configuration of a FusionModel's hyperparameters ``params`` for ``schema``.

    Returns a JSON-able dict: ``d_model``, ``modalities``, ``modality_dropout``, ``n_outputs``,
    ``class_names``, and ``token_types`` / ``encoders[modality]`` / ``aggregator`` / ``head`` (and ``wide``
    when there is a linear term: :func:`resolve_wide`) as ``{"name": ..., "kwargs": {...}}`` holding every
    constructor keyword (defaults filled in) except those the builder supplies. ``shared_keywords(cls)``
    says which of ``n_heads, n_layers, dropout, ffn_mult`` a component receives (default: what the class
    declares; the format-3 reader passes the old rule).
    """
    modalities = [m for m in MODALITIES if m in schema]
    names, encoder_kwargs = dict(params.get("encoders") or {}), dict(params.get("encoder_kwargs") or {})
    _check_modality_names("encoders", names, modalities)
    _check_modality_names("encoder_kwargs", encoder_kwargs, modalities)
    d_model = int(params["d_model"])
    casts = {"n_heads": int, "n_layers": int, "dropout": float, "ffn_mult": int}
    shared = {k: None if params.get(k) is None else casts[k](params[k]) for k in SHARED_KEYWORDS}
    encoders = {}
    for m in modalities:
        name = names.get(m) or enc.default_encoder(m, schema[m])
        cls = _encoder_class(name, m)
        given = _current_names(f"encoder ({m})", name, dict(encoder_kwargs.get(m) or {}))
        supplied = _schema_keywords(cls, schema[m], d_model=d_model, given=given) | {"d_model"}
        kwargs = _full_kwargs(f"encoder ({m})", name, cls, shared=shared, given=given, supplied=supplied,
                              concepts=shared_keywords)
        encoders[m] = {"name": name, "kwargs": kwargs}
    agg = resolve_aggregator(params.get("aggregator"), modalities)
    agg_kwargs = _full_kwargs("aggregator", agg, AGGREGATORS.get(agg), shared=shared,
                              given=dict(params.get("aggregator_kwargs") or {}),
                              supplied=_AGGREGATOR_SUPPLIED, concepts=shared_keywords)
    head = head_name(str(params["task"]), str(params["survival_head"]))
    head_cls, _ = HEADS[head]
    head_kwargs = _full_kwargs("head", head, head_cls, shared=shared, given={}, supplied=_head_supplied(head),
                               concepts=shared_keywords)
    token_kwargs = _full_kwargs("token_types", "token_types", TokenTypeEmbedding, shared={}, given={},
                                supplied=_TOKEN_TYPES_SUPPLIED, concepts=shared_keywords)
    config = {"d_model": d_model, "modalities": modalities,
              "modality_dropout": float(params["modality_dropout"]),
              "n_outputs": int(n_outputs), "class_names": [str(c) for c in class_names],
              "token_types": {"name": "token_types", "kwargs": token_kwargs}, "encoders": encoders,
              "aggregator": {"name": agg, "kwargs": agg_kwargs},
              "head": {"name": head, "kwargs": head_kwargs}}
    wide = resolve_wide(params, modalities, head=head, n_outputs=int(n_outputs))
    if wide is not None:
        config["wide"] = wide
    return config


def resolve_wide(params: Mapping[str, Any], modalities: Sequence[str], *, head: str,
                 n_outputs: int) -> dict[str, Any] | None:
    """The linear ("wide") term's configuration, or None: when ``wide_penalty`` is None or absent (models
    saved before the term existed) or no modality has tabular inputs. A survival head gets one linear risk
    added to all its outputs (a proportional effect on every bin's hazard logit), a classifier one score
    per class."""
    penalty = params.get("wide_penalty")
    if penalty is None or not any(m in WIDE_MODALITIES for m in modalities):
        return None
    return {"name": "linear", "kwargs": {"penalty": float(penalty),
                                         "n_outputs": n_outputs if head == "classification" else 1}}


def resolve_aggregator(name: str | None, modalities: Sequence[str]) -> str:
    """The aggregator a FusionModel's ``aggregator`` means for ``modalities``: a name is itself; None is
    ``"persam"`` when there is an instance modality (images, genomics, events), else ``TABLE_AGGREGATOR``
    (PersAM pools instances, so a clinical-only cohort has nothing for it to attend over)."""
    from .aggregators.persam.model import INSTANCE_MODALITIES

    if name is not None:
        return str(name)
    return "persam" if any(m in INSTANCE_MODALITIES for m in modalities) else TABLE_AGGREGATOR


def _head_supplied(name: str) -> frozenset[str]:
    return frozenset({"d_model", HEADS[name][1]} - {None})


def _encoder_class(name: str, modality: str) -> type:
    cls = enc.ENCODERS.get(name)  # unknown name -> ValueError listing the registered ones
    if not enc.ENCODERS.accepts(name, modality):
        raise ValueError(f"encoder {name!r} does not accept modality {modality!r}; for {modality} use one of "
                         f"{enc.list_encoders(modality)}")
    return cls


# -------------------------------------------------------------------------------------------- build
def _component(label: str, spec: Any) -> tuple[str, Mapping[str, Any]]:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("kwargs"), Mapping):
        raise TypeError(f"{label}: expected {{'name': ..., 'kwargs': {{...}}}}, got {spec!r}")
    return spec.get("name"), spec["kwargs"]


def check_network_config(schema: Mapping[str, Any], config: Mapping[str, Any]) -> None:
    """ValueError unless ``config`` is a network configuration this code can build for ``schema``:
    its keys, its modalities, registered component names, and only keywords each component takes."""
    if not isinstance(config, Mapping):
        raise TypeError(f"the network configuration must be a mapping, got {type(config).__name__}")
    missing = [k for k in NETWORK_KEYS if k not in config]
    if missing:
        raise ValueError(f"the network configuration lacks {missing}")
    want = [m for m in MODALITIES if m in schema]
    if list(config["modalities"]) != want or not isinstance(config["encoders"], Mapping) \
            or sorted(config["encoders"]) != sorted(want):
        raise ValueError(f"the network configuration is for modalities {config['modalities']} with encoders "
                         f"{config['encoders']!r}, but the schema has {want}")
    d_model = config["d_model"]
    if isinstance(d_model, bool) or not isinstance(d_model, int) or d_model < 1:
        raise ValueError(f"the network configuration's d_model must be a positive int, got {d_model!r}")
    parts = []  # (label, name, class, supplied keywords, kwargs)
    name, kwargs = _component("token_types", config["token_types"])
    parts.append(("token_types", name, TokenTypeEmbedding, _TOKEN_TYPES_SUPPLIED, kwargs))
    for m in want:
        name, kwargs = _component(f"encoder ({m})", config["encoders"][m])
        parts.append((f"encoder ({m})", name, _encoder_class(name, m), frozenset({"d_model"}), kwargs))
    name, kwargs = _component("aggregator", config["aggregator"])
    parts.append(("aggregator", name, AGGREGATORS.get(name), _AGGREGATOR_SUPPLIED, kwargs))
    name, kwargs = _component("head", config["head"])
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; registered: {', '.join(sorted(HEADS))}")
    parts.append(("head", name, HEADS[name][0], _head_supplied(name), kwargs))
    if config.get("wide") is not None:
        name, kwargs = _component("wide", config["wide"])
        if name != "linear":
            raise ValueError(f"unknown wide term {name!r}; the one there is: 'linear'")
        parts.append(("wide", name, WideLinear, frozenset({"n_numeric", "categories", "n_genes"}), kwargs))
    for label, name, cls, supplied, kwargs in parts:
        known = set(_keywords(cls)) - supplied
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"{label} {name!r} has no keyword(s) {unknown}; it takes {sorted(known)}")


def build_network(schema: Mapping[str, Any], config: Mapping[str, Any]) -> FusionNetwork:
    """The :class:`FusionNetwork` of a configuration from :func:`resolve_network_config`, sized by ``schema``
    (the fitted preprocessor's ``schema_``). Components are built in a fixed order (encoders in modality
    order, aggregator, head, token types), so a seed gives the same initial weights."""
    check_network_config(schema, config)
    d_model, modalities = int(config["d_model"]), list(config["modalities"])
    encoders = {}
    for m in modalities:
        spec = config["encoders"][m]
        cls = enc.ENCODERS.get(spec["name"])
        try:
            encoders[m] = cls.from_schema(schema[m], d_model=d_model, **spec["kwargs"])
        except TypeError as exc:  # a keyword that the schema supplies
            raise ValueError(f"encoder ({m}) {spec['name']!r}: {exc}") from None
    spec = config["aggregator"]
    aggregator = AGGREGATORS.get(spec["name"])(d_model=d_model, modalities=modalities,
                                               n_outputs=int(config["n_outputs"]),
                                               class_names=list(config["class_names"]), **spec["kwargs"])
    head_cls, outputs_keyword = HEADS[config["head"]["name"]]
    sizes = {} if outputs_keyword is None else {outputs_keyword: int(config["n_outputs"])}
    head = head_cls(d_model=d_model, **sizes, **config["head"]["kwargs"])
    token_types = TokenTypeEmbedding(d_model=d_model, modalities=modalities,
                                     **config["token_types"]["kwargs"])
    wide = config.get("wide")
    return FusionNetwork(encoders=encoders, aggregator=aggregator, head=head, d_model=d_model,
                         modalities=modalities, modality_dropout=float(config["modality_dropout"]),
                         token_types=token_types,
                         wide=None if wide is None else WideLinear.from_schema(schema, **wide["kwargs"]))

