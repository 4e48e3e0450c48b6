"""Selecting samples and folds in a config: the ``samples:`` data key and the ``split:`` run key.

``samples:`` keeps only the listed samples of the data (before any split)::

    samples: [P001, P002, P003]             # a list of ids
    samples: cases.txt                      # a file: one id per line (blank lines and # comments skipped)
    samples: cases.csv                      # a CSV / TSV: its id_column, else its only column
    samples: {file: cases.csv, column: case_id}

``split:`` picks the training, validation and test samples of one fold from a splits file in the
PORPOISE / CLAM layout: one column each ``train``, ``val`` (optional) and ``test`` (optional), the ids of
that part listed down the column and padded with empty cells (CLAM writes ``splits_<k>.csv`` with an unnamed
index column first; PORPOISE has ``train`` and ``val`` only)::

    split: {file: splits/splits_0.csv}       # one file per fold
    split: {file: splits/splits_{fold}.csv, fold: 2}
    split: {file: splits/, fold: 2}          # a folder: splits_<fold>.csv in it (CLAM's name)

An id of the splits file that is not a sample of the data, or one listed in two parts, is a ``ValueError``
naming it; samples of the data in no part are not used (and counted in the printed summary).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..datasets.files import check_keys
from ..datasets.validation import format_ids

SPLIT_KEYS: dict[str, str] = {
    "file": "splits CSV with columns train[, val][, test] (ids, empty-padded); {fold} is replaced by the "
            "fold, a folder means <folder>/splits_<fold>.csv",
    "fold": "the fold number (default 0)",
}
PARTS = ("train", "val", "test")


def _resolve(path: Any, base: Path) -> Path:
    p = Path(str(path)).expanduser()
    return p if p.is_absolute() else base / p


def read_samples(spec: Any, *, base: Path, id_column: str = "sample_id") -> list[str]:
    """The ids named by a ``samples:`` value (a list, a file path or ``{file, column}``), as strings."""
    if isinstance(spec, list | tuple):
        ids = [str(i) for i in spec]
    elif isinstance(spec, str | Mapping):
        if isinstance(spec, Mapping):
            check_keys(spec, {"file": "the ids file", "column": "its id column (CSV / TSV)"}, "samples")
            if "file" not in spec:
                raise ValueError("samples: a mapping needs key 'file' (and optionally 'column')")
        entry = dict(spec) if isinstance(spec, Mapping) else {"file": spec}
        path = _resolve(entry["file"], base)
        if not path.is_file():
            raise FileNotFoundError(f"samples: file {path} does not exist")
        if path.suffix.lower() in (".csv", ".tsv"):
            table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",", dtype=str)
            column = entry.get("column") or (id_column if id_column in table.columns else None)
            if column is None and len(table.columns) == 1:
                column = table.columns[0]
            if column not in table.columns:
                raise ValueError(f"samples: {path} has no column {column or id_column!r}; name it with "
                                 f"samples: {{file: ..., column: ...}} (columns: {list(table.columns)})")
            ids = table[column].dropna().str.strip().tolist()
        else:
            lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
            ids = [line for line in lines if line and not line.startswith("#")]
    else:
        raise TypeError(f"samples: expected a list of ids, a file or {{file, column}}, got "
                        f"{type(spec).__name__}")
    twice = sorted(i for i, n in Counter(ids).items() if n > 1)
    if twice:
        raise ValueError(f"samples: id(s) {format_ids(twice)} listed more than once")
    if not ids:
        raise ValueError("samples: no id given")
    return ids


def select_samples(cohort: Any, ids: list[str]) -> Any:
    """``cohort`` restricted to ``ids`` (data key ``samples``); unknown ids are a ValueError naming them."""
    unknown = [i for i in ids if i not in set(cohort.sample_ids)]
    if unknown:
        raise ValueError(f"samples: id(s) {format_ids(unknown)} are not samples of the data")
    return cohort.subset(ids)


@dataclass
class StudySplit:
    """One fold of a splits file: the ids of each part (``val`` / ``test`` may be empty)."""

    path: Path
    fold: int
    train: list[str]
    val: list[str]
    test: list[str]

    def cohorts(self, cohort: Any) -> tuple[Any, Any | None, Any | None]:
        """(train, validation or None, test or None) cohorts of ``cohort``; every id must be a sample."""
        known = set(cohort.sample_ids)
        for part in PARTS:
            unknown = [i for i in getattr(self, part) if i not in known]
            if unknown:
                raise ValueError(f"split: {self.path} column {part!r} has id(s) {format_ids(unknown)} "
                                 "that are not samples of the data")
        val = cohort.subset(self.val) if self.val else None
        test = cohort.subset(self.test) if self.test else None
        return cohort.subset(self.train), val, test

    def describe(self, n_samples: int) -> str:
        unused = n_samples - len(self.train) - len(self.val) - len(self.test)
        return (f"split {self.path.name} (fold {self.fold}): train {len(self.train)}, val {len(self.val)}, "
                f"test {len(self.test)}; {unused} sample(s) of the data in no part (not used)")

    def record(self) -> dict[str, Any]:
        """What the model's metrics.json keeps of the split."""
        return {"file": str(self.path), "fold": self.fold,
                **{f"n_{p}": len(getattr(self, p)) for p in PARTS}}


def check_split_keys(spec: Any) -> None:
    """A ``split:`` value must be a mapping with key ``file`` and optionally ``fold``."""
    if not isinstance(spec, Mapping):
        raise TypeError(f"split: expected a mapping {{file: ..., fold: ...}}, got {type(spec).__name__}")
    check_keys(spec, SPLIT_KEYS, "split")
    if "file" not in spec:
        raise ValueError(f"split: missing key 'file' ({SPLIT_KEYS['file']})")


def read_split(spec: Any, *, base: Path, fold: int | None = None) -> StudySplit:
    """Parse a ``split:`` value (``{file, fold}``) and read that fold's ids. ``fold`` overrides the YAML's."""
    check_split_keys(spec)
    k = spec.get("fold", 0) if fold is None else fold
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"split.fold: expected an integer >= 0, got {k!r}")
    path = _resolve(str(spec["file"]).replace("{fold}", str(k)), base)
    if path.is_dir():
        path = path / f"splits_{k}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"split: file {path} does not exist")
    table = pd.read_csv(path, dtype=str)
    table = table.drop(columns=[c for c in table.columns if str(c).startswith("Unnamed:")])  # CLAM's index
    if "train" not in table.columns:
        raise ValueError(f"split: {path} has no column 'train'; expected columns train[, val][, test] "
                         f"(columns: {list(table.columns)})")
    extra = sorted(set(table.columns) - set(PARTS))
    if extra:
        raise ValueError(f"split: {path} has column(s) {extra}; expected train[, val][, test]")
    parts = {p: table[p].dropna().str.strip().tolist() if p in table.columns else [] for p in PARTS}
    seen: dict[str, str] = {}
    for part, ids in parts.items():
        for i in ids:
            if i in seen:
                raise ValueError(f"split: {path}: id {i!r} is listed in {seen[i]!r} and in {part!r}")
            seen[i] = part
    if not parts["train"]:
        raise ValueError(f"split: {path} column 'train' lists no id")
    return StudySplit(path=path, fold=int(k), **parts)
