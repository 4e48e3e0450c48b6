"""YAML configs of the CLI: ``run.yaml`` (data + task + model keywords) and ``data.yaml`` (data only).

A run config::

    task: survival                       # or classification
    data:                                # a mapping as below, or the path of a data.yaml
      clinical: clinical.csv             # CSV / TSV / Parquet, one row per sample
      id_column: sample_id               # the sample id column of every table (default: sample_id)
      time: time_days                    # survival: time and event columns (of `targets`, default: clinical)
      event: relapse
      genomics: expression.h5ad
      images: features/                  # folder of <sample>.npy|.pt|.h5 (or <sample>/ with one file per
                                         # slide), or a manifest CSV with columns sample_id, path[, slide_id]
      events: events.csv                 # long table: id column, time, code[, value]
      samples: cases.txt                 # optional: keep these ids (a list, a file, {file, column})
    split: {file: splits/splits_{fold}.csv, fold: 0}   # optional: train / val / test ids of one fold
    model:                               # FusionModel keywords
      aggregator: persam
      max_epochs: 20

``samples`` and ``split`` are described in :mod:`clinfuse.fusion.study_split`. Relative paths are
relative to the YAML file. Unknown keys at any level are a ``ValueError`` naming the
key and listing the valid ones. Target and group columns are taken out of the clinical features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..datasets.files import DataSource, read_table  # noqa: F401  read_table: re-exported, its old home
from ..datasets.files import check_keys as _check_keys
from ..datasets.modalities import MODALITY_REGISTRY
from .study_split import StudySplit, check_split_keys, read_samples, read_split, select_samples

_GENERAL_KEYS: dict[str, str] = {
    "name": "cohort name (shown in summaries)",
    "id_column": "sample id column of every table (default: sample_id)",
}
_SELECTION_KEYS: dict[str, str] = {
    "samples": "keep only these samples: a list of ids, a file (one id per line, or a CSV column), or "
               "{file, column}",
}
_TARGET_KEYS: dict[str, str] = {
    "targets": "table holding the target / group columns (default: the clinical table)",
    "label": "class label column (classification)",
    "time": "survival time column (survival)",
    "event": "event indicator column, 1 = event seen (survival)",
    "group": "patient id column, when samples are admissions, slides or specimens",
    "index_time": "column with each sample's prediction time on the events' time axis",
}
TABLE_FILE = "clinical.csv"
"""The per-sample table :func:`write_cohort_files` writes: the table modality's columns plus the targets."""


def data_keys() -> dict[str, str]:
    """Every valid key of a data section -> its help: the general keys, each registered modality's own
    (``Modality.data_keys``), the target keys, then ``samples``."""
    keys = dict(_GENERAL_KEYS)
    for m in MODALITY_REGISTRY:
        keys.update(m.data_keys)
    return {**keys, **_TARGET_KEYS, **_SELECTION_KEYS}


RUN_KEYS: dict[str, str] = {
    "task": "classification or survival",
    "data": "the data: a mapping of data keys, or the path of a data.yaml",
    "model": "FusionModel keywords (aggregator, max_epochs, ...)",
    "split": "train / validation / test samples of one fold: {file: splits.csv, fold: 0} (columns train, "
             "val, test; the CLAM / PORPOISE layout)",
    "tune": "clinfuse tune only: n_trials, folds, seed, space (param: [kind, ...], see clinfuse.fusion.tune)",
}
TUNE_KEYS: dict[str, str] = {
    "n_trials": "Optuna trials (default 20)",
    "folds": "inner cross-validation folds (default 3)",
    "seed": "seed of the sampler and the folds (default 0)",
    "space": "param: [kind, low, high] or [categorical, [choices]]; default: the aggregator's space",
}


def read_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TypeError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _column(frame: pd.DataFrame, name: str, key: str, what: str) -> pd.Series:
    if name not in frame.columns:
        raise ValueError(f"data.{key}: column {name!r} is not in the {what} table "
                         f"(columns: {list(frame.columns)})")
    return frame[name]


@dataclass
class DataConfig:
    """A parsed data section; :meth:`to_cohort` reads the files."""

    spec: dict[str, Any]
    base: Path

    @classmethod
    def parse(cls, data: Mapping[str, Any] | str | Path, *, base: Path) -> DataConfig:
        if isinstance(data, str | Path):
            path = (base / data) if not Path(data).is_absolute() else Path(data)
            return cls.parse(read_yaml(path), base=path.parent)
        _check_keys(data, data_keys(), "data")
        files = [next(iter(m.data_keys)) for m in MODALITY_REGISTRY if m.data_keys]
        if not any(k in data for k in files):
            raise ValueError(f"data: name at least one of {', '.join(files)}")
        for m in MODALITY_REGISTRY:
            m.check_config(data)
        return cls(spec=dict(data), base=base)

    def to_cohort(self, *, task: str | None, require_targets: bool):
        """Build the ``Cohort``. ``task`` picks the target columns (label, or time + event); with
        ``require_targets=False`` (predict / explain) targets are read only when their columns are named.
        Each registered modality reads its own files (``Modality.read_files``)."""
        from ..datasets import Cohort

        s = self.spec
        source = DataSource(spec=s, base=self.base)
        if "targets" in s:
            source.targets_key = "targets"
        else:
            source.targets_key = next((next(iter(m.data_keys)) for m in MODALITY_REGISTRY
                                       if m.holds_targets and next(iter(m.data_keys)) in s), None)
        targets = source.table(source.targets_key) if source.targets_key is not None else None
        target_cols = [s[k] for k in ("label", "time", "event", "group", "index_time") if k in s]
        if target_cols and targets is None:
            raise ValueError("data: target/group columns are named but there is no clinical or targets table")
        source.target_columns = target_cols
        labels = survival = groups = index_time = None
        if task == "classification" and ("label" in s or require_targets):
            if "label" not in s:
                raise ValueError("data.label: name the label column for a classification task")
            labels = _column(targets, s["label"], "label", "targets")
        if task == "survival" and (("time" in s and "event" in s) or require_targets):
            missing = [k for k in ("time", "event") if k not in s]
            if missing:
                raise ValueError(f"data: name the {' and '.join(missing)} column(s) for a survival task")
            survival = pd.DataFrame({"time": _column(targets, s["time"], "time", "targets"),
                                     "event": _column(targets, s["event"], "event", "targets")})
        if "group" in s:
            groups = _column(targets, s["group"], "group", "targets").astype(str)
        if "index_time" in s:
            index_time = _column(targets, s["index_time"], "index_time", "targets")
        inputs: dict[str, Any] = {}
        for m in MODALITY_REGISTRY:
            if m.data_keys and next(iter(m.data_keys)) in s:
                inputs.update(m.read_files(source))
            else:  # options without the data: passed on, so that the Cohort names the mistake
                inputs.update({k: s[k] for k in m.options if k in s and k in m.data_keys})
        cohort = Cohort(**inputs, labels=labels, survival=survival, groups=groups, index_time=index_time,
                        name=s.get("name"))
        if "samples" in s:
            ids = read_samples(s["samples"], base=self.base, id_column=source.id_column)
            cohort = select_samples(cohort, ids)
        return cohort

    def path(self, key: str) -> Path:
        return DataSource(spec=self.spec, base=self.base).path(key)


@dataclass
class RunConfig:
    task: str
    data: DataConfig
    model: dict[str, Any]
    tune: dict[str, Any] = field(default_factory=dict)
    split: dict[str, Any] | None = None
    base: Path = Path()

    def study_split(self, *, fold: int | None = None) -> StudySplit | None:
        """The ``split:`` fold's ids (``fold`` overrides the YAML's), None without a ``split:`` key."""
        return None if self.split is None else read_split(self.split, base=self.base, fold=fold)


def load_run_config(path: str | Path) -> RunConfig:
    """Parse ``run.yaml``: checks every key, including the model keywords against ``FusionModel``."""
    from .model import TASKS, FusionModel

    path = Path(path)
    raw = read_yaml(path)
    _check_keys(raw, RUN_KEYS, str(path.name))
    for key in ("task", "data"):
        if key not in raw:
            raise ValueError(f"{path.name}: missing key {key!r} ({RUN_KEYS[key]})")
    if raw["task"] not in TASKS:
        raise ValueError(f"{path.name}: task must be one of {TASKS}, got {raw['task']!r}")
    model = dict(raw.get("model") or {})
    valid = {k: "" for k in FusionModel().get_params() if k != "task"}
    if "task" in model:
        raise ValueError(f"{path.name}: give task at the top level, not under model")
    _check_keys(model, valid, "model")
    tune = dict(raw.get("tune") or {})
    _check_keys(tune, TUNE_KEYS, "tune")
    if isinstance(tune.get("space"), dict):  # YAML has lists only; a spec is a tuple
        tune["space"] = {k: tuple(v) if isinstance(v, list) else v for k, v in tune["space"].items()}
    split = raw.get("split")
    if split is not None:
        check_split_keys(split)
    return RunConfig(task=raw["task"], data=DataConfig.parse(raw["data"], base=path.parent), model=model,
                     tune=tune, split=split, base=path.parent)


def load_data_config(path: str | Path) -> DataConfig:
    """Parse a ``data.yaml`` (the data keys at the top level, or under ``data:``)."""
    path = Path(path)
    raw = read_yaml(path)
    if set(raw) <= set(RUN_KEYS) and "data" in raw:
        raw = raw["data"]
    return DataConfig.parse(raw, base=path.parent)


def write_cohort_files(cohort: Any, folder: str | Path) -> dict[str, Any]:
    """Write ``cohort`` as the files a data config reads (clinical.csv with the targets, expression.h5ad,
    features/<sample>.npy, events.csv: each modality writes its own, ``Modality.write_files``) and return
    the matching data section (paths relative to ``folder``).

    Used by the examples and tests to show the file-based route; feature bags are written per sample,
    under safe file names (``file_stem``) with a manifest mapping them to the ids where an id is not one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"id_column": "sample_id"}
    ids = [str(s) for s in cohort.sample_ids]
    table = pd.DataFrame(index=pd.Index(ids, name="sample_id"))
    table_key = None
    present = [m for m in MODALITY_REGISTRY if getattr(cohort, m.name, None) is not None]
    for m in present:
        columns, entries = m.table_columns(getattr(cohort, m.name), cohort)
        if columns is not None:
            table, table_key = table.join(columns), next(iter(m.data_keys))
        spec.update(entries)
    if cohort.labels is not None:
        table["label"] = cohort.labels.loc[ids]
        spec["label"] = "label"
    if cohort.survival is not None:
        table["time"], table["event"] = cohort.survival.loc[ids, "time"], cohort.survival.loc[ids, "event"]
        spec["time"], spec["event"] = "time", "event"
    index_time = getattr(cohort, "index_time", None)
    if index_time is not None and len(index_time):
        table["index_time"] = index_time.reindex(ids).to_numpy(float)
        spec["index_time"] = "index_time"
    if table_key is not None or len(table.columns):
        # Samples without clinical data keep their targets here; their clinical cells are all NaN, which
        # the Cohort reads as "no clinical data" for that sample.
        table.reset_index().to_csv(folder / TABLE_FILE, index=False)
        spec[table_key or "targets"] = TABLE_FILE
    for m in present:
        spec.update(m.write_files(getattr(cohort, m.name), cohort, folder))
    return spec
