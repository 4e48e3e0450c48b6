"""Where a slide's patches lie: :class:`SlideGeometry`, one small frozen record per slide.

The readers of :mod:`.feature_readers` put every coordinate in one frame, named by ``frame``:

- ``"level0_px"``: pixels of the slide's level 0 (full resolution), ``(x, y)`` of the patch's top-left
  corner. TRIDENT, CLAM and slideflow (centres moved to the corner) land here, and STAMP when the level-0
  resolution is given (``mpp=``).
- ``"px"``: pixels at the resolution ``mpp`` (top-left corners), not known to be level 0: STAMP files
  converted with their own ``tile_size_um / tile_size_px`` (the extraction resolution).
- ``"um"``: micrometres (top-left corners): STAMP files that do not say their tile size in pixels.
- ``"stored"``: as the file holds them, unit unknown (HistoSSL-style ``.npy`` columns ``x, y``).

``patch_size`` is the side of one patch in the frame's unit (level-0 pixels for ``"level0_px"``), ``mpp``
the micrometres per pixel of the frame, ``magnification`` the objective magnification of level 0 and
``target_magnification`` the one the patches were extracted at; each is None when the files do not say.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

FRAMES = ("level0_px", "px", "um", "stored")


@dataclass(frozen=True)
class SlideGeometry:
    """The coordinate frame and tile spec of one slide's patches.

    Attributes:
        format: the layout the slide was read from (``"trident"``, ``"clam"``, ``"stamp"``,
            ``"slideflow"``, ``"histossl"``).
        frame: one of :data:`FRAMES` (see the module docstring); coordinates are top-left corners.
        patch_size: side of one (square) patch in the frame's unit, or None when unknown.
        mpp: micrometres per pixel of the frame (None when unknown or when ``frame`` is ``"um"``).
        magnification: objective magnification of level 0, when the files say it.
        target_magnification: magnification the patches were extracted at, when the files say it.
        level: pyramid level the patches were read from (CLAM ``patch_level``, HistoSSL column 0), if known.
        overlap: overlap between neighbouring patches in pixels at the extraction resolution, if known.
        level0_size: ``(width, height)`` of level 0 in pixels, if known.
        extractor: the feature extractor's name, when the files say it.
        slide_level: True for a slide embedding (one 1-D vector) loaded as a one-token bag; such a bag has
            no coordinates.
    """

    format: str
    frame: str
    patch_size: float | None = None
    mpp: float | None = None
    magnification: float | None = None
    target_magnification: float | None = None
    level: int | None = None
    overlap: float | None = None
    level0_size: tuple[int, int] | None = None
    extractor: str | None = None
    slide_level: bool = False

    def __post_init__(self) -> None:
        if self.frame not in FRAMES:
            raise ValueError(f"images: geometry frame must be one of {FRAMES}, got {self.frame!r}")
        for name in ("patch_size", "mpp", "magnification", "target_magnification"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"images: geometry {name} must be > 0, got {value!r}")

    @property
    def unit(self) -> str:
        """``"px"``, ``"um"`` or ``"stored"``: the unit of coordinates and ``patch_size``."""
        return {"level0_px": "px", "px": "px"}.get(self.frame, self.frame)

    @property
    def patch_size_um(self) -> float | None:
        """Side of one patch in micrometres, when it can be known."""
        if self.patch_size is None:
            return None
        if self.frame == "um":
            return self.patch_size
        if self.frame in ("level0_px", "px") and self.mpp is not None:
            return self.patch_size * self.mpp
        return None

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain Python values (for ``AnnData.uns`` or JSON)."""
        out = asdict(self)
        out["level0_size"] = None if self.level0_size is None else list(self.level0_size)
        out["unit"] = self.unit
        return out


def attr_float(attrs: Any, *names: str) -> float | None:
    """The first of ``names`` present in an h5py attribute set (or dict) as a float; arrays give their
    first element (CLAM's ``downsample`` is ``(dx, dy)``)."""
    for name in names:
        if name in attrs:
            value = attrs[name]
            try:
                value = value.reshape(-1)[0] if hasattr(value, "reshape") else value
                return float(value)
            except (TypeError, ValueError, IndexError):
                return None
    return None


def attr_str(attrs: Any, *names: str) -> str | None:
    """The first of ``names`` present as a ``str`` (bytes are decoded)."""
    for name in names:
        if name in attrs:
            value = attrs[name]
            return value.decode() if isinstance(value, bytes) else str(value)
    return None
