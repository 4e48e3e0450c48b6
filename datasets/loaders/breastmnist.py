"""BreastMNIST (MedMNIST v2): 28 x 28 breast ultrasound images, malignant vs normal/benign."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from ..cohort import Cohort
from ..images import ImageBags
from ._common import resolve

BREASTMNIST_CLASSES: dict[int, str] = {0: "malignant", 1: "normal_benign"}
"""MedMNIST label -> class name used as the cohort label (``medmnist/info.py``: 0 malignant,
1 normal+benign)."""

BREASTMNIST_SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The official MedMNIST splits, in file order."""


def load_breastmnist(path: str | os.PathLike, *, split: str | None = None) -> Cohort:
    """BreastMNIST: one 28 x 28 grayscale ultrasound image per sample, malignant vs normal/benign.

    Args:
        path: ``breastmnist.npz`` (keys ``{train,val,test}_images`` ``[n, 28, 28]`` uint8 and
            ``{split}_labels``) or its folder.
        split: ``None`` loads all 780 images; "train" (546), "val" (78) or "test" (156) only that split.

    Returns:
        A classification cohort whose only modality is ``images``: ``ImageBags.from_patches`` pixel bags of
        one image each, ``[1, 1, 28, 28]`` scaled to [0, 1]. Sample ids are ``<split>_<index>`` with the
        0-based row of the image in that split's array (``train_0000`` .. ``train_0545``, ``val_0000``,
        ``test_0000``), so the official split is recoverable from every id (:func:`breastmnist_split_ids`),
        also after ``subset``. Labels are the names in :data:`BREASTMNIST_CLASSES` ("malignant",
        "normal_benign").
        ``cohort.name`` is ``"BreastMNIST"`` or ``"BreastMNIST (<split>)"``.
    """
    if split is not None and split not in BREASTMNIST_SPLITS:
        raise ValueError(
            f"load_breastmnist: split must be None or one of {BREASTMNIST_SPLITS}, got {split!r}"
        )
    file = resolve(path, "breastmnist.npz", "load_breastmnist")
    images: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    with np.load(file) as npz:
        for name in BREASTMNIST_SPLITS if split is None else (split,):
            for key in (f"{name}_images", f"{name}_labels"):
                if key not in npz.files:
                    raise ValueError(
                        f"load_breastmnist: {str(file)!r} has no array {key!r}; found {npz.files}"
                    )
            x, y = npz[f"{name}_images"], npz[f"{name}_labels"].reshape(-1)  # official labels are [n, 1]
            if x.ndim != 3 or len(x) != len(y):
                raise ValueError(
                    f"load_breastmnist: {name}_images has shape {x.shape} for {len(y)} labels; "
                    "expected [n, H, W]"
                )
            bad = sorted(set(np.unique(y).tolist()) - set(BREASTMNIST_CLASSES))
            if bad:
                raise ValueError(
                    f"load_breastmnist: {name}_labels holds unknown label(s) {bad}; expected 0 or 1"
                )
            for i in range(len(x)):
                sid = f"{name}_{i:04d}"
                images[sid] = x[i][None, None]  # a bag of one [C=1, H, W] image
                labels[sid] = BREASTMNIST_CLASSES[int(y[i])]
    return Cohort(
        images=ImageBags.from_patches(images),
        labels=pd.Series(labels, name="label"),
        name="BreastMNIST" if split is None else f"BreastMNIST ({split})",
    )


def breastmnist_split_ids(cohort_or_ids) -> dict[str, list[str]]:
    """Official split -> sample ids (in cohort order), read from the ``<split>_`` prefix of the ids.

    Accepts a cohort from :func:`load_breastmnist` (or a subset of one) or a list of its sample ids; the
    result always has the keys "train", "val" and "test". An id without a known prefix is a ValueError.
    """
    ids = list(getattr(cohort_or_ids, "sample_ids", cohort_or_ids))
    out: dict[str, list[str]] = {name: [] for name in BREASTMNIST_SPLITS}
    for sid in ids:
        prefix = str(sid).split("_", 1)[0]
        if prefix not in out:
            raise ValueError(
                f"breastmnist_split_ids: sample id {sid!r} does not start with one of "
                f"{[s + '_' for s in BREASTMNIST_SPLITS]}; is this a BreastMNIST cohort?"
            )
        out[prefix].append(str(sid))
    return out
