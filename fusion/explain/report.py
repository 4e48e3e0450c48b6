"""``AttentionReport``: the tidy attention table of a cohort (in memory or a Parquet file), and its queries.

The rows are described in :mod:`.table`; exports live in :mod:`.exporters` and figures in :mod:`.figures`,
both reached through the report's ``to_*`` and ``plot_*`` methods.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from . import exporters
from .table import conform_frame, report_kinds


class AttentionReport:
    """Per-sample attention in one tidy table (in memory, or backed by a Parquet file for large cohorts).

    Args:
        frame: the tidy table (columns :data:`~.table.COLUMNS`), or None with ``path``.
        path: a Parquet file written by ``explain(..., out=path)``; read lazily on first use.
        aggregator: the aggregator name, for messages.
        geometry: slide id -> :class:`~clinfuse.datasets.images.SlideGeometry` (``ImageBags.geometry``);
            ``explain`` fills it from the cohort, so exports use each slide's true tile size and scale.
    """

    def __init__(self, frame: pd.DataFrame | None = None, *, path: str | Path | None = None,
                 aggregator: str | None = None, geometry: dict[str, Any] | None = None) -> None:
        if frame is None and path is None:
            raise ValueError("AttentionReport needs a frame or the path of a Parquet file written by explain")
        self._frame = None if frame is None else conform_frame(frame.copy())
        self.path = None if path is None else Path(path)
        self.aggregator = aggregator
        self.geometry = dict(geometry or {})

    # ----------------------------------------------------------------------------------------- access
    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = conform_frame(pq.read_table(self.path).to_pandas())
        return self._frame

    def to_frame(self, kinds: Iterable[str] | None = None) -> pd.DataFrame:
        """A copy of the tidy table, optionally only the given kinds."""
        frame = self.frame
        if kinds is not None:
            kinds = [kinds] if isinstance(kinds, str) else list(kinds)
            self._check_kinds(kinds)
            frame = frame[frame["kind"].isin(kinds)]
        return frame.reset_index(drop=True).copy()

    @property
    def kinds(self) -> list[str]:
        """The kinds present in this report."""
        return sorted(self.frame["kind"].dropna().unique().tolist())

    @property
    def sample_ids(self) -> list[str]:
        return list(dict.fromkeys(self.frame["sample_id"].tolist()))

    def _check_kinds(self, kinds: Iterable[str]) -> None:
        known = report_kinds()
        unknown = [k for k in kinds if k not in known]
        if unknown:
            raise ValueError(f"unknown attention kind(s) {unknown}; kinds are {known}")
        present = set(self.kinds)
        absent = [k for k in kinds if k not in present]
        if absent:
            who = f"aggregator {self.aggregator!r}" if self.aggregator else "this model"
            raise ValueError(
                f"{who} provides no {absent} attention (kinds in this report: {sorted(present)}); "
                "choose an aggregator that provides it (see FusionModel.attention_kinds)"
            )

    def modality_weights(self) -> pd.DataFrame:
        """Samples x modalities: the attention share of each modality per sample (rows sum to 1; absent =
        0). How the attention is spread, not what each modality does to the prediction: see
        :meth:`modality_contributions` for that."""
        self._check_kinds(["modality"])
        rows = self.frame[self.frame["kind"] == "modality"]
        table = rows.pivot_table(index="sample_id", columns="token", values="value", aggfunc="sum",
                                 sort=False)
        table.columns.name = "modality"
        return table.reindex(self.sample_ids_with("modality")).fillna(0.0)

    def modality_contributions(self, target_class: str | None = None, *, share: bool = False) -> pd.DataFrame:
        """Samples x modalities: each modality's exact Shapley contribution to the prediction (rows of kind
        ``modality_contribution``, from :func:`clinfuse.fusion.explain.modality_contributions`).

        Values are signed and in output units (a class logit; the risk for survival); a sample's values plus
        its base (the rows' ``raw_value``) sum to its prediction. A modality the sample lacks shows 0.
        ``target_class``: one class of a classifier; None: every output, with columns ``(target_class,
        modality)`` when there are several (a survival model has one, its risk). ``share=True``: the
        fraction of the prediction each modality explains, ``|phi_m| / sum_k |phi_k|`` per sample and output
        (rows sum to 1; NaN for a sample whose contributions are all exactly 0).
        """
        rows = self.frame[self.frame["kind"] == "modality_contribution"]
        if rows.empty:
            raise ValueError("this report has no modality_contribution rows; build them with "
                             "clinfuse.fusion.explain.modality_contributions(model, cohort)")
        outputs = list(dict.fromkeys(rows["target_class"].fillna("").tolist()))
        if target_class is not None:
            if str(target_class) not in outputs:
                raise ValueError(f"target_class {target_class!r} is not an output of this report; "
                                 f"the outputs are {[o for o in outputs if o] or ['risk (no class)']}")
            rows, outputs = rows[rows["target_class"] == str(target_class)], [str(target_class)]
        rows = rows.assign(target_class=rows["target_class"].fillna(""))
        modalities = list(dict.fromkeys(rows["token"].tolist()))
        table = rows.pivot_table(index="sample_id", columns=["target_class", "token"], values="value",
                                 aggfunc="sum", sort=False)
        columns = pd.MultiIndex.from_product([outputs, modalities], names=["target_class", "modality"])
        table = table.reindex(index=list(dict.fromkeys(rows["sample_id"].tolist())), columns=columns)
        table = table.fillna(0.0)
        if share:
            magnitude = table.abs()
            totals = magnitude.T.groupby(level="target_class", sort=False).sum().T  # [samples, outputs]
            table = magnitude / totals.reindex(columns=columns.get_level_values(0)).set_axis(columns, axis=1)
        if len(outputs) == 1:
            table = table.droplevel("target_class", axis=1)
        table.index.name = "sample_id"
        return table

    def attention_spread(self, *, null: Any = None, **kwargs: Any) -> pd.DataFrame:
        """Per sample, modality, kind and class: the effective number of tokens exp(H) beside N, and whether
        the attention is indistinguishable from uniform (against ``null``, e.g.
        ``spread.untrained_null(model, cohort)``, else the fallback rule); see :mod:`.spread`."""
        from .spread import attention_spread

        return attention_spread(self, null=null, **kwargs)

    def sample_ids_with(self, kind: str) -> list[str]:
        return list(dict.fromkeys(self.frame.loc[self.frame["kind"] == kind, "sample_id"].tolist()))

    def top_tokens(self, sample_id: str, k: int = 10, *, kind: str | None = None,
                   target_class: str | None = None) -> pd.DataFrame:
        """The ``k`` highest-weighted tokens of one sample (per kind; one kind or class if given)."""
        frame = self.frame
        rows = frame[frame["sample_id"] == str(sample_id)]
        if rows.empty:
            raise ValueError(f"sample {sample_id!r} is not in this report ({len(self.sample_ids)} samples)")
        if kind is not None:
            self._check_kinds([kind])
            rows = rows[rows["kind"] == kind]
        if target_class is not None:
            rows = rows[rows["target_class"] == str(target_class)]
        order = rows.assign(_mag=rows["value"].abs()).sort_values(["kind", "target_class", "_mag"],
                                                                    ascending=[True, True, False])
        top = order.groupby(["kind", "target_class"], dropna=False, sort=False).head(k)
        return top.drop(columns="_mag").reset_index(drop=True)

    # ----------------------------------------------------------------------------------------- export
    def to_csv(self, path: str | Path) -> Path:
        return exporters.write_csv(self.frame, path)

    def to_parquet(self, path: str | Path) -> Path:
        return exporters.write_parquet(self.frame, path)

    def to_json(self, path: str | Path) -> Path:
        """JSON records (one object per row; NA as null)."""
        return exporters.write_json(self.frame, path)

    def to_anndata(self):
        """AnnData for scverse users: obs = samples, var = tokens the samples share, one layer per kind/class.

        Shared tokens are those of the modalities, clinical and genomic rows (variables, genes or gene sets,
        or one token for the whole clinical record). Per-sample tokens (patches, events) are not shared;
        see :meth:`to_patch_anndata`. Entries a sample lacks are NaN.
        """
        return exporters.shared_token_anndata(self.frame)

    def to_patch_anndata(self, sample_id: str | None = None) -> dict[str, Any]:
        """One AnnData per (sample, slide) of patch-level attention; coordinates in ``obsm["spatial"]``.

        Keys are ``"sample"`` or ``"sample:slide"``; obs are the patches (by position), one layer per
        patch-level kind and class (``patch``, or ``kind[class]`` for per-class kinds). Where the slide's
        geometry is known, ``uns["geometry"]`` holds it (frame, ``patch_size``, ``mpp``, magnification) and
        ``uns["spatial"][slide]["scalefactors"]`` the tile side (``spot_diameter_fullres``) and
        ``microns_per_pixel`` in the units of ``obsm["spatial"]``.
        """
        return exporters.patch_anndata(self.frame, sample_id, geometry=self.geometry)

    def to_geojson(self, path: str | Path, sample_id: str, *, kind: str = "patch",
                   target_class: str | None = None, slide_id: str | None = None,
                   patch_size: float | None = None, magnification: float | None = None) -> Path:
        """Patch attention of one sample as a GeoJSON FeatureCollection that QuPath imports.

        Each patch becomes a square tile (``objectType: "tile"``) at its ``x, y`` (top-left, level-0 pixels)
        of side ``patch_size`` (default: the slide's geometry, else the smallest spacing between patch
        coordinates), with the attention in ``measurements``. ``magnification`` (default: the geometry's) is
        stored in the collection's properties.
        """
        self._check_kinds([kind])
        return exporters.write_geojson(self.frame, path, sample_id, kind=kind, target_class=target_class,
                                       slide_id=slide_id, patch_size=patch_size, magnification=magnification,
                                       geometry=self.geometry)

    # ----------------------------------------------------------------------------------------- figures
    def plot_patches(self, sample_id: str, **kwargs: Any):
        """Patch attention heatmap on the coordinates (see :func:`.figures.plot_patch_attention`)."""
        from .figures import plot_patch_attention

        return plot_patch_attention(self, sample_id, **kwargs)

    def plot_image(self, sample_id: str, image: np.ndarray, **kwargs: Any):
        """Attention over a single image's sub-patches (see :func:`.figures.plot_image_attention`)."""
        from .figures import plot_image_attention

        return plot_image_attention(self, sample_id, image, **kwargs)

    def plot_persam(self, sample_id: str, **kwargs: Any):
        """Class-wise, exploratory and explanatory attention side by side (PersAM models; the figure the
        aggregator registers as its sample figure)."""
        from .figures import sample_figure

        return sample_figure("persam").draw(self, sample_id, **kwargs)

    def plot_modality_contributions(self, **kwargs: Any):
        """Mean |Shapley share| per modality, beside the attention share when the report has it (see
        :func:`.contribution_plot.plot_modality_contributions`)."""
        from .contribution_plot import plot_modality_contributions

        return plot_modality_contributions(self, **kwargs)

    def plot_modality_weights(self, **kwargs: Any):
        from .figures import plot_modality_weights

        return plot_modality_weights(self, **kwargs)

    def plot_top_tokens(self, sample_id: str, **kwargs: Any):
        from .figures import plot_top_tokens

        return plot_top_tokens(self, sample_id, **kwargs)
