"""The classic multiple-instance benchmarks Fox, Tiger, Elephant (Andrews et al. 2002) from PRTools files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..cohort import Cohort
from ..images import ImageBags

MIL_BENCHMARKS: tuple[str, ...] = ("fox", "tiger", "elephant")
"""File stems of the three Corel image sets (``<name>.mat``)."""

MIL_CLASSES: dict[int, str] = {1: "negative", 2: "positive"}
"""PRTools ``nlab`` -> class name (the sets' ``lablist`` is ``negative``, ``positive`` in this order)."""


def _field(struct: Any, name: str, file: Path) -> Any:
    if not hasattr(struct, name):
        have = list(getattr(struct, "_fieldnames", []))
        raise ValueError(f"load_mil_benchmark: {str(file)!r}: the PRTools struct 'x' has no field {name!r}; "
                         f"found {have}")
    return getattr(struct, name)


def _mil_file(path: str | os.PathLike, name: str | None) -> Path:
    p = Path(path)
    if p.is_dir():
        if name is None:
            raise ValueError(f"load_mil_benchmark: {str(p)!r} is a folder; pass name= one of "
                             f"{MIL_BENCHMARKS} or the path of a .mat file")
        if name not in MIL_BENCHMARKS:
            raise ValueError(f"load_mil_benchmark: name must be one of {MIL_BENCHMARKS}, got {name!r}")
        p = p / f"{name}.mat"
    if not p.is_file():
        raise ValueError(f"load_mil_benchmark: no file at {str(p)!r}; pass a PRTools .mat file or its folder")
    return p


def load_mil_benchmark(path: str | os.PathLike, *, name: str | None = None) -> Cohort:
    """A PRTools multiple-instance dataset (Fox, Tiger, Elephant): one feature bag per MIL bag.

    Args:
        path: the ``.mat`` file, or its folder together with ``name``.
        name: "fox", "tiger" or "elephant" when ``path`` is a folder (the file is ``<name>.mat``).

    The file holds a PRTools dataset struct ``x`` (read with ``scipy.io.loadmat(squeeze_me=True,
    struct_as_record=False)``): ``x.data`` ``[instances, D]`` features, ``x.nlab`` the label of each
    instance's bag (1 = negative, 2 = positive) and ``x.ident.milbag`` the bag id of each instance.

    Returns:
        A classification cohort whose only modality is ``images``: ``ImageBags.from_features`` bags
        ``[n_instances, D]`` float32 (no coordinates), one per bag id, instances in file order. Sample ids
        are ``<stem>_<bag id>`` (``fox_001`` .. ``fox_200``, zero-padded to the widest id) in order of
        first appearance; labels "negative" / "positive". ``cohort.name`` is the struct's ``name`` (e.g.
        "Fox (Andrews)") or the file stem. Nothing is dropped: a bag whose instances disagree on the label,
        a label other than 1 / 2, non-finite features or mismatched lengths are ValueErrors.
    """
    from scipy import io, sparse

    file = _mil_file(path, name)
    try:
        mat = io.loadmat(file, squeeze_me=True, struct_as_record=False)
    except Exception as err:  # scipy raises MatReadError, IndexError, ValueError... on a foreign file
        raise ValueError(f"load_mil_benchmark: cannot read {str(file)!r} as a MATLAB file: {err}") from err
    if "x" not in mat:
        found = [k for k in mat if not k.startswith("__")]
        raise ValueError(f"load_mil_benchmark: {str(file)!r} has no PRTools struct 'x'; found {found}")
    x = mat["x"]
    data = _field(x, "data", file)
    data = data.toarray() if sparse.issparse(data) else np.asarray(data)
    data = np.atleast_2d(data).astype(np.float32)
    nlab = np.atleast_1d(np.asarray(_field(x, "nlab", file))).astype(np.int64)
    bags = np.atleast_1d(np.asarray(_field(_field(x, "ident", file), "milbag", file)))
    if data.ndim != 2 or not len(data) == len(nlab) == len(bags):
        raise ValueError(f"load_mil_benchmark: {str(file)!r}: x.data has shape {data.shape}, x.nlab "
                         f"{len(nlab)} and x.ident.milbag {len(bags)} entries; expected one row per instance")
    bad = sorted(set(np.unique(nlab).tolist()) - set(MIL_CLASSES))
    if bad:
        raise ValueError(f"load_mil_benchmark: {str(file)!r}: x.nlab holds {bad}; expected 1 (negative) "
                         "or 2 (positive)")
    rows = np.flatnonzero(~np.isfinite(data).all(axis=1))
    if rows.size:
        raise ValueError(f"load_mil_benchmark: {str(file)!r}: {rows.size} instance(s) with non-finite "
                         f"features, first at row {int(rows[0])}")
    try:
        bag_ids = [str(int(b)) if float(b).is_integer() else str(b) for b in bags]
    except (TypeError, ValueError):
        bag_ids = [str(b).strip() for b in bags]
    order = list(dict.fromkeys(bag_ids))
    width = max(len(b) for b in order) if all(b.isdigit() for b in order) else 0
    stem = file.stem
    features: dict[str, np.ndarray] = {}
    labels: dict[str, str] = {}
    index = pd.Series(np.arange(len(bag_ids))).groupby(np.asarray(bag_ids), sort=False).indices
    for bag in order:
        where = index[bag]
        sid = f"{stem}_{bag.zfill(width)}"
        labs = np.unique(nlab[where])
        if labs.size != 1:
            raise ValueError(f"load_mil_benchmark: {str(file)!r}: bag {bag!r} (sample {sid!r}) has instances "
                             f"labelled {labs.tolist()}; a bag has one label")
        features[sid] = np.ascontiguousarray(data[where])
        labels[sid] = MIL_CLASSES[int(labs[0])]
    title = getattr(x, "name", None)
    return Cohort(images=ImageBags.from_features(features), labels=pd.Series(labels, name="label"),
                  name=title if isinstance(title, str) and title.strip() else stem)
