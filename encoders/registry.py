"""A small timm-style registry, shared by the encoders and the aggregators.

``@ENCODERS.register("feature_bag", modalities=("images",))`` registers a class; ``ENCODERS.create(name,
**kwargs)`` builds one; an unknown name raises ``ValueError`` listing the registered names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


class Registry:
    """Name -> component class, with the modalities each entry accepts (empty = any)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, type] = {}
        self._modalities: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, *, modalities: Iterable[str] = ()) -> Callable[[type], type]:
        def decorator(cls: type) -> type:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._entries[name] = cls
            self._modalities[name] = tuple(modalities)
            cls.registry_name = name
            return cls

        return decorator

    def get(self, name: str) -> type:
        if not isinstance(name, str):
            raise TypeError(f"{self.what} name must be a string, got {type(name).__name__}")
        if name not in self._entries:
            raise ValueError(f"unknown {self.what} {name!r}; registered: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def create(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)

    def names(self, modality: str | None = None) -> list[str]:
        """Registered names, optionally only those that accept ``modality``."""
        return sorted(
            n for n, mods in self._modalities.items() if modality is None or not mods or modality in mods
        )

    def modalities_of(self, name: str) -> tuple[str, ...]:
        self.get(name)
        return self._modalities[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
