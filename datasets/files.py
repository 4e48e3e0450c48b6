"""Reading the files a data config names: tables indexed by their id column, paths relative to the config.

:class:`DataSource` is what a :class:`~clinfuse.datasets.modalities.Modality` reads its files through
(``Modality.read_files``); the CLI's data config (``clinfuse.fusion.config``) builds one per cohort.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


def check_keys(found: Mapping[str, Any], valid: Mapping[str, Any], where: str) -> None:
    """``found`` must be a mapping whose keys are all in ``valid``; else an error naming them and the
    valid ones."""
    if not isinstance(found, Mapping):
        raise TypeError(f"{where} must be a mapping of keys to values, got {type(found).__name__}")
    unknown = [k for k in found if k not in valid]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are: {', '.join(valid)}")


def read_table(path: Path, id_column: str, what: str) -> pd.DataFrame:
    """A CSV / TSV / Parquet table indexed by its ``id_column`` (as str)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file {path} does not exist")
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        # ids as text, as written: parsed as numbers, "001" would become 1 and no longer match 001.npy
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype={id_column: str})
    else:
        raise ValueError(f"{what}: {path.name} must be a .csv, .tsv or .parquet file")
    if id_column not in frame.columns:
        raise ValueError(
            f"{what}: {path.name} has no id column {id_column!r} (columns: {list(frame.columns)}); "
            "set id_column in the data config"
        )
    frame[id_column] = frame[id_column].astype(str)
    return frame.set_index(id_column)


@dataclass
class DataSource:
    """A parsed data section being read: its ``spec`` (data key -> value), the folder relative paths start
    from, and the tables read so far (a table named twice, e.g. as features and as targets, is read once).

    Attributes:
        target_columns: columns of the targets table that are targets / groups / index times, not features.
        targets_key: the data key of the table holding them (``"targets"``, or a modality's own table).
    """

    spec: Mapping[str, Any]
    base: Path
    target_columns: list[str] = field(default_factory=list)
    targets_key: str | None = None
    _tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def id_column(self) -> str:
        return str(self.spec.get("id_column", "sample_id"))

    def path(self, key: str) -> Path:
        p = Path(str(self.spec[key])).expanduser()
        return p if p.is_absolute() else self.base / p

    def table(self, key: str) -> pd.DataFrame:
        """The table named by data key ``key``, indexed by the id column (read on first use)."""
        if key not in self._tables:
            self._tables[key] = read_table(self.path(key), self.id_column, f"data.{key}")
        return self._tables[key]

    def non_features(self, key: str) -> list[str]:
        """The target / group columns to keep out of the features of table ``key``."""
        return list(self.target_columns) if key == self.targets_key else []
