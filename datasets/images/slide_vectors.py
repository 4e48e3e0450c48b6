"""Slide embeddings as feature vectors: one row of numbers per sample instead of a one-token bag.

Slide encoders (TITAN, PRISM, CHIEF, ...) write one 1-D vector per slide, e.g. TRIDENT's
``slide_features_<encoder>/<slide>.h5`` with a 1-D ``features``. ``ImageBags.from_features`` reads such a
slide as a bag of one token (the image encoder projects it, like any patch). The other choice is to treat
the embedding as ``D`` numeric variables: :func:`slide_vectors` turns the bags into a DataFrame
``[samples, D]`` that :class:`~clinfuse.datasets.Cohort` takes as ``clinical`` (alone, or joined with the
clinical table), so each dimension is standardised on the training patients and becomes one clinical token.

A sample with several slides (``patient_of=`` grouped them) gets the element-wise ``reduce`` of its slides'
vectors: ``"mean"`` (default) or ``"max"``. ``D`` tokens per patient cost attention time in ``D``: for a
768-d embedding, consider the one-token bag, or fewer dimensions (PCA fitted on training patients).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .bags import ImageBags

REDUCERS = ("mean", "max")


def slide_vectors(bags: ImageBags, *, reduce: str = "mean", prefix: str = "slide_") -> pd.DataFrame:
    """Per sample, its slides' embeddings reduced to one vector.

    Args:
        bags: feature bags whose every slide is a slide embedding (a 1-D ``features``: one token,
            ``geometry.slide_level``).
        reduce: how the vectors of a sample's several slides combine: ``"mean"`` or ``"max"``.
        prefix: column names are ``f"{prefix}{k}"`` for ``k`` in ``0 .. D-1``.

    Returns:
        float64 DataFrame ``[n_samples, D]`` indexed by sample id (``bags.sample_ids`` order), with
        ``attrs["slides"]``: sample -> its slide ids.
    """
    if reduce not in REDUCERS:
        raise ValueError(f"images: reduce must be one of {REDUCERS}, got {reduce!r}")
    if not isinstance(prefix, str):
        raise TypeError(f"images: prefix must be a str, got {type(prefix).__name__}")
    if bags.kind != "features":
        raise ValueError("images: slide_vectors needs feature bags (from_features), not pixel bags")
    patchy = [(sample, s.slide_id, s.n) for sample in bags.sample_ids for s in bags._get(sample)
              if not _is_embedding(s)]
    if patchy:
        shown = ", ".join(f"{sample!r} (slide {sid!r}: {n} patches)" for sample, sid, n in patchy[:3])
        raise ValueError(f"images: slide_vectors needs one slide embedding (a 1-D features) per slide, but "
                         f"{len(patchy)} slide(s) are patch bags: {shown}; load those as bags instead")
    rows = []
    for sample in bags.sample_ids:
        data = bags.load(sample).data.astype(np.float64)  # [n_slides, D]: one token per slide
        rows.append(data.mean(axis=0) if reduce == "mean" else data.max(axis=0))
    assert bags.feature_dim is not None
    frame = pd.DataFrame(np.vstack(rows), index=pd.Index(bags.sample_ids, name="sample_id"),
                         columns=[f"{prefix}{k}" for k in range(bags.feature_dim)])
    frame.attrs["slides"] = {sample: bags.slide_ids(sample) for sample in bags.sample_ids}
    return frame


def _is_embedding(slide: Any) -> bool:
    return slide.n == 1 and (slide.single or (slide.geometry is not None and slide.geometry.slide_level))


def slide_embeddings(source: Any, *, reduce: str = "mean", prefix: str = "slide_",
                     **from_features: Any) -> pd.DataFrame:
    """``ImageBags.from_features(source, **from_features).slide_vectors(reduce=, prefix=)``: a folder of
    slide embeddings (e.g. TRIDENT's ``slide_features_titan/``) as a DataFrame ``[samples, D]``;
    ``patient_of=`` maps slides to patients (their vectors are reduced)."""
    from .bags import ImageBags

    return ImageBags.from_features(source, **from_features).slide_vectors(reduce=reduce, prefix=prefix)
