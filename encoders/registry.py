"""A small timm-style registry, shared by the encoders and the aggregators.

``@ENCODERS.register("feature_bag", modalities=("images",))`` registers a class; ``ENCODERS.create(name,
**kwargs)`` builds one; an unknown name raises ``ValueError`` listing the registered names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


class Registry:
    """Name -> component class, with the modalities each entry accepts (empty = any)."""

    def __init__(self, what: str, *, populate: str | None = None) -> None:
        """``populate``: a module that registers every entry when imported; it is imported on the first
        lookup, so the registry is complete however it is reached (and packages can import lazily)."""
        self.what = what
        self._entries: dict[str, type] = {}
        self._modalities: dict[str, tuple[str, ...]] = {}
        self._populate = populate

    def _ensure(self) -> None:
        if self._populate is not None:
            module, self._populate = self._populate, None
            importlib.import_module(module)

    def register(self, name: str, *, modalities: Iterable[str] = ()) -> Callable[[type], type]:
        def decorator(cls: type) -> type:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = cls
            self._modalities[name] = tuple(modalities)
            cls.registry_name = name
            return cls

        return decorator

    def unregister(self, name: str) -> type:
        """Remove an entry (a test or a plug-in undoing its registration); returns its class."""
        cls = self.get(name)
        del self._entries[name], self._modalities[name]
        return cls

    def get(self, name: str) -> type:
        if not isinstance(name, str):
            raise TypeError(f"{self.what} name must be a string, got {type(name).__name__}")
        self._ensure()
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self, modality: str | None = None) -> list[str]:
        """Registered names, optionally only those that accept ``modality``."""
        self._ensure()
        return sorted(n for n in self._modalities if modality is None or self.accepts(n, modality))

    def accepts(self, name: str, modality: str) -> bool:
        """Whether entry ``name`` takes ``modality``: it names no modality, or that modality, or the one whose
        batch layout ``modality`` follows (``Modality.layout``)."""
        from ..datasets.modalities import layout_of

        mods = self.modalities_of(name)
        return not mods or modality in mods or layout_of(modality) in mods

    def modalities_of(self, name: str) -> tuple[str, ...]:
        self.get(name)
        return self._modalities[name]

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries

    def __iter__(self):
        self._ensure()
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        self._ensure()
        return len(self._entries)
