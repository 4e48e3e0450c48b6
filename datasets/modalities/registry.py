"""The modality registry: the registered :class:`~.base.Modality` objects, in canonical order.

The built-in four register in the order clinical, genomics, images, events; a new one is appended by
:func:`register_modality` (from any module: no library file changes). ``MODALITIES`` and ``TOKEN_KIND`` of
:mod:`clinfuse.datasets.batch` are live views of this registry, so code that imported them early still
sees a modality registered later.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .base import Modality, ModalityPreprocessor

RESERVED_NAMES = frozenset({
    "labels", "survival", "groups", "name", "excluded", "task", "classes", "sample_ids", "modalities",
    "targets", "patients", "all", "task_", "sample_id",
})
"""Names a modality may not take: Cohort keywords and attributes, and the report's ``"all"``."""


class ModalityRegistry:
    """Name -> :class:`Modality`, in registration order (the canonical order of schemas and batches)."""

    def __init__(self) -> None:
        self._entries: dict[str, Modality] = {}

    def register(self, modality: Modality | type[Modality], *, replace: bool = False) -> Any:
        """Register a modality (an instance, or a class: then it is instantiated and the class returned,
        so ``@register_modality`` works as a class decorator). ``replace`` swaps a registered one in place."""
        instance = modality() if isinstance(modality, type) else modality
        if not isinstance(instance, Modality):
            raise TypeError(f"register_modality: expected a Modality, got {type(instance).__name__}")
        name = getattr(instance, "name", None)
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"register_modality: a modality's name must be an identifier, got {name!r}")
        if name in RESERVED_NAMES:
            raise ValueError(f"register_modality: {name!r} is reserved (a Cohort keyword or attribute)")
        if name in self._entries and not replace:
            raise ValueError(
                f"register_modality: modality {name!r} is already registered (pass replace=True)"
            )
        if not isinstance(getattr(instance, "token_kind", None), str):
            raise TypeError(f"register_modality: modality {name!r} needs a token_kind string")
        if instance.token_kind in ("modality", "shap") or instance.token_kind in {
                m.token_kind for m in self._entries.values() if m.name != name}:
            raise ValueError(f"register_modality: modality {name!r} takes the token kind "
                             f"{instance.token_kind!r}, which is already a report kind; choose another")
        cls = getattr(instance, "preprocessor_class", None)
        if not (isinstance(cls, type) and issubclass(cls, ModalityPreprocessor)):
            raise TypeError(f"register_modality: modality {name!r} needs a ModalityPreprocessor subclass "
                             "as preprocessor_class")
        taken = {o: m.name for m in self._entries.values() if m.name != name for o in m.options}
        clash = [o for o in (name, *instance.options) if o in taken or (o in self._entries and o != name)]
        if clash:
            raise ValueError(f"register_modality: modality {name!r} reuses the keyword(s) {clash} of another "
                             "registered modality")
        self._entries[name] = instance
        return modality

    def unregister(self, name: str) -> Modality:
        """Remove a registered modality (tests use it to undo a registration)."""
        modality = self.get(name)
        del self._entries[name]
        return modality

    def get(self, name: str) -> Modality:
        """The modality called ``name``; an unknown name is a ValueError listing the registered ones."""
        if not isinstance(name, str):
            raise TypeError(f"modality name must be a string, got {type(name).__name__}")
        if name not in self._entries:
            raise ValueError(f"unknown modality {name!r}; registered modalities: {', '.join(self._entries)}")
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __iter__(self) -> Iterator[Modality]:
        return iter(list(self._entries.values()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ModalityRegistry({list(self._entries)})"


MODALITY_REGISTRY = ModalityRegistry()


def register_modality(modality: Modality | type[Modality], *, replace: bool = False) -> Any:
    """Add a modality to :data:`MODALITY_REGISTRY` (see :meth:`ModalityRegistry.register`)."""
    return MODALITY_REGISTRY.register(modality, replace=replace)


def unregister_modality(name: str) -> Modality:
    return MODALITY_REGISTRY.unregister(name)


def get_modality(name: str) -> Modality:
    return MODALITY_REGISTRY.get(name)


def layout_of(name: str) -> str:
    """The modality whose batch layout ``name`` follows (``Modality.layout``; itself by default): encoders
    written for that layout accept it. A name that is not registered is its own layout."""
    if name not in MODALITY_REGISTRY:
        return name
    return MODALITY_REGISTRY.get(name).layout or name


class ModalityNames(Sequence):
    """A live, tuple-like view of the registered modality names (compares and prints like a tuple)."""

    def __init__(self, registry: ModalityRegistry) -> None:
        self._registry = registry

    def __getitem__(self, index: Any) -> Any:
        return self._registry.names()[index]

    def __len__(self) -> int:
        return len(self._registry)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __contains__(self, name: object) -> bool:
        return name in self._registry

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ModalityNames | tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # live content: not hashable

    def __add__(self, other: Sequence[str]) -> tuple[str, ...]:
        return (*self, *other)

    def __radd__(self, other: Sequence[str]) -> tuple[str, ...]:
        return (*other, *self)

    def __reduce__(self) -> str:  # pickle / deepcopy give back the one live view, not a frozen copy
        return "MODALITY_NAMES"

    def __repr__(self) -> str:
        return repr(self._registry.names())


class TokenKinds(Mapping):
    """A live view modality name -> token kind of the registered modalities."""

    def __reduce__(self) -> str:  # pickle / deepcopy give back the one live view
        return "TOKEN_KINDS"

    def __init__(self, registry: ModalityRegistry) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> str:
        if name not in self._registry:
            raise KeyError(name)
        return self._registry.get(name).token_kind

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry.names())

    def __len__(self) -> int:
        return len(self._registry)

    def __repr__(self) -> str:
        return repr(dict(self))


MODALITY_NAMES = ModalityNames(MODALITY_REGISTRY)
TOKEN_KINDS = TokenKinds(MODALITY_REGISTRY)
