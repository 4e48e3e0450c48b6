"""What every figure shares: pyplot on Agg, saving as PNG / PDF / SVG, displayable images, readable colour
bars with the uniform level marked, and how a class or time bin is named in a title."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ...datasets.atomic import atomic_path

FORMATS = ("png", "pdf", "svg")
UNIFORM_GID = "uniform_level"  # the colour bar's 1/N marker (tests and users find it by this gid)
SCALE_BAR_GID = "scale_bar"
EMPTY_COLOUR = "0.82"  # positions without a patch: mid-light grey, not a colour of the map
CMAP = "inferno"
CEILING_TIMES_UNIFORM = 3.0  # colour limits reach at least 3 x 1/N, so near-uniform noise stays dark


def pyplot():
    """matplotlib's pyplot on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_format(path: str | Path, format: str | None = None) -> str:
    """The file format of a figure: ``format`` if given, else the suffix of ``path`` (none = PNG)."""
    chosen = (format or Path(path).suffix.lstrip(".") or "png").lower()
    if chosen not in FORMATS:
        raise ValueError(f"figure {str(path)!r}: format {chosen!r} is not one of {list(FORMATS)} "
                         "(give format= or a .png, .pdf or .svg file name)")
    return chosen


def save_figure(fig, path: str | Path | None, format: str | None = None):
    """Write ``fig`` atomically to ``path`` (PNG, PDF or SVG by ``format`` or suffix); returns ``fig``."""
    if path is not None:
        fmt = figure_format(path, format)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight")
    return fig


def save_png(fig, path: str | Path | None):
    """Kept for callers of the first API: :func:`save_figure` with the format taken from ``path``."""
    return save_figure(fig, path)


def display_image(image: np.ndarray) -> np.ndarray:
    """``image`` (``[H, W]``, ``[H, W, C]`` or ``[C, H, W]``) as floats in [0, 1] for ``imshow``.

    Integer images are divided by their type's maximum (uint8: 255), so uint8 and the same image as floats
    in [0, 1] display alike; float images outside [0, 1] are rescaled over their own range.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[-1] not in (1, 3, 4):
        img = np.moveaxis(img, 0, -1)
    img = img.squeeze()
    if img.ndim not in (2, 3):
        raise ValueError(f"an image must be [H, W], [H, W, C] or [C, H, W]; got shape {np.shape(image)}")
    if np.issubdtype(img.dtype, np.bool_):
        return img.astype(float)
    if np.issubdtype(img.dtype, np.integer):
        return img.astype(float) / float(np.iinfo(img.dtype).max)
    img = img.astype(float)
    lo, hi = np.nanmin(img), np.nanmax(img)
    if lo < 0 or hi > 1:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return img


def colour_limits(values: np.ndarray, uniform: float) -> tuple[float, float]:
    """(0, max(max value, 3 x uniform)): noise around the uniform level is not stretched over the map."""
    top = float(np.nanmax(values)) if np.size(values) else 0.0
    return 0.0, max(top, CEILING_TIMES_UNIFORM * uniform, 1e-12)


def tick_formatter(vmin: float = 0.0, vmax: float = 1.0):
    """A formatter with as many decimals as the axis' tick step needs (0.025 -> 3; never 0.001, 0.001)."""
    from matplotlib.ticker import Formatter

    class StepFormatter(Formatter):
        ticks = np.zeros(0)

        def set_locs(self, locs):  # the axis hands over its tick positions before labelling them
            self.ticks = np.asarray(locs, dtype=float)

        def __call__(self, value, pos=None):
            steps = np.diff(np.unique(self.ticks))
            step = float(steps.min()) if len(steps) else (abs(vmax - vmin) or 1.0) / 5
            if abs(value) >= 1e4 or 0 < step < 1e-6:
                return f"{value:.3g}"
            # the fewest decimals that write the step exactly (0.0025 needs 4, 0.002 needs 3)
            decimals = next(d for d in range(12) if abs(round(step, d) - step) <= 1e-6 * step or d == 11)
            return f"{value:.{decimals}f}"

    return StepFormatter()


def attention_colourbar(fig, mappable, axes, *, uniform: float, vmax: float, what: str = "attention"):
    """One colour bar for ``axes`` with the uniform level 1/N marked and the limits stated in its label."""
    bar = fig.colorbar(mappable, ax=axes, fraction=0.046 if len(np.atleast_1d(axes)) == 1 else 0.03,
                       pad=0.03)
    bar.ax.yaxis.set_major_formatter(tick_formatter(0.0, vmax))
    bar.ax.axhline(uniform, color="cyan", linewidth=2.0, gid=UNIFORM_GID)
    bar.ax.text(1.05, uniform / vmax, " 1/N", transform=bar.ax.transAxes, color="tab:cyan", fontsize=7,
                va="center", ha="left", clip_on=False)
    n = round(1.0 / uniform) if uniform > 0 else 0
    bar.set_label(f"{what} (shared scale: 0 to max(max, {CEILING_TIMES_UNIFORM:g}/N))\n"
                  f"cyan line: uniform 1/N = {uniform:.3g} (N = {n} patches)", fontsize=7)
    return bar


_BIN = re.compile(r"^(-?[\d.]+(?:e[+-]?\d+)?)-(-?[\d.]+(?:e[+-]?\d+)?|inf)$")


def describe_target(target: str | None) -> str:
    """How an output is named in a title: ``class 1``, ``time bin 10-20`` (discrete survival) or ``risk``."""
    if target is None or (isinstance(target, float) and math.isnan(target)):
        return ""
    target = str(target)
    if target == "risk":
        return "risk"
    if _BIN.match(target):
        return f"time bin {target}"
    return f"class {target}"


def nice_length(span: float) -> float:
    """A round length (1, 2 or 5 x 10^k) near a fifth of ``span``, for a scale bar."""
    if span <= 0:
        return 1.0
    raw = span / 5
    power = 10 ** math.floor(math.log10(raw))
    return min((m * power for m in (1, 2, 5, 10)), key=lambda v: abs(v - raw))
