"""YAML configs of the CLI: ``run.yaml`` (data + task + model keywords) and ``data.yaml`` (data only).

A run config::

    task: survival                       # or classification
    data:                                # a mapping as below, or the path of a data.yaml
      clinical: clinical.csv             # CSV / TSV / Parquet, one row per sample
      id_column: sample_id               # the sample id column of every table (default: sample_id)
      time: time_days                    # survival: time and event columns (of `targets`, default: clinical)
      event: relapse
      genomics: expression.h5ad
      images: features/                  # folder of <sample>.npy|.pt|.h5 (or <sample>/ with one file per slide),
                                         # or a manifest CSV with columns sample_id, path[, slide_id]
      events: events.csv                 # long table: id column, time, code[, value]
    model:                               # FusionModel keywords
      aggregator: persam
      max_epochs: 20

Relative paths are relative to the YAML file. Unknown keys at any level are a ``ValueError`` naming the
key and listing the valid ones. Target and group columns are taken out of the clinical features.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

DATA_KEYS: dict[str, str] = {
    "name": "cohort name (shown in summaries)",
    "id_column": "sample id column of every table (default: sample_id)",
    "clinical": "clinical table (CSV, TSV or Parquet), one row per sample",
    "clinical_columns": "clinical columns to use (default: all but the id, target and group columns)",
    "drop_columns": "clinical columns not to use as features",
    "clinical_types": "mapping column -> numeric | categorical (overrides detection)",
    "targets": "table holding the target / group columns (default: the clinical table)",
    "label": "class label column (classification)",
    "time": "survival time column (survival)",
    "event": "event indicator column, 1 = event seen (survival)",
    "group": "patient id column, when samples are admissions, slides or specimens",
    "index_time": "column with each sample's prediction time on the events' time axis",
    "genomics": "AnnData .h5ad file (obs_names = sample ids)",
    "genomics_layer": "AnnData layer to use instead of X",
    "gene_sets": "GMT file, or a mapping set -> genes",
    "images": "folder of per-sample feature files, or a manifest CSV (sample_id, path[, slide_id])",
    "image_kind": "features (default) or patches (raw tiles for the cnn / vit encoders)",
    "patch_size": "tile size that patch images are resized to (image_kind: patches)",
    "events": "long events table (CSV / Parquet): id column, time, code[, value]",
    "event_columns": "mapping time / code / value -> the events table's column names",
}
RUN_KEYS: dict[str, str] = {
    "task": "classification or survival",
    "data": "the data: a mapping of data keys, or the path of a data.yaml",
    "model": "FusionModel keywords (aggregator, max_epochs, ...)",
}


def _check_keys(found: Mapping[str, Any], valid: Mapping[str, str], where: str) -> None:
    if not isinstance(found, Mapping):
        raise TypeError(f"{where} must be a mapping of keys to values, got {type(found).__name__}")
    unknown = [k for k in found if k not in valid]
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are: {', '.join(valid)}")


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


def read_table(path: Path, id_column: str, what: str) -> pd.DataFrame:
    """A CSV / TSV / Parquet table indexed by its ``id_column`` (as str)."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file {path} does not exist")
    if suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(path)
    elif suffix in (".csv", ".tsv", ".txt"):
        frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    else:
        raise ValueError(f"{what}: {path.name} must be a .csv, .tsv or .parquet file")
    if id_column not in frame.columns:
        raise ValueError(f"{what}: {path.name} has no id column {id_column!r} (columns: {list(frame.columns)}); "
                         "set id_column in the data config")
    frame[id_column] = frame[id_column].astype(str)
    return frame.set_index(id_column)


def _column(frame: pd.DataFrame, name: str, key: str, what: str) -> pd.Series:
    if name not in frame.columns:
        raise ValueError(f"data.{key}: column {name!r} is not in the {what} table (columns: {list(frame.columns)})")
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
        _check_keys(data, DATA_KEYS, "data")
        if not any(k in data for k in ("clinical", "genomics", "images", "events")):
            raise ValueError("data: name at least one of clinical, genomics, images, events")
        if data.get("image_kind", "features") not in ("features", "patches"):
            raise ValueError(f"data.image_kind must be 'features' or 'patches', got {data['image_kind']!r}")
        if "event_columns" in data:
            _check_keys(data["event_columns"], {"time": "", "code": "", "value": ""}, "data.event_columns")
        return cls(spec=dict(data), base=base)

    def path(self, key: str) -> Path:
        p = Path(str(self.spec[key])).expanduser()
        return p if p.is_absolute() else self.base / p

    def to_cohort(self, *, task: str | None, require_targets: bool):
        """Build the ``Cohort``. ``task`` picks the target columns (label, or time + event); with
        ``require_targets=False`` (predict / explain) targets are read only when their columns are named."""
        from ..datasets import Cohort, ImageBags

        s, idc = self.spec, str(self.spec.get("id_column", "sample_id"))
        clinical = read_table(self.path("clinical"), idc, "data.clinical") if "clinical" in s else None
        targets = read_table(self.path("targets"), idc, "data.targets") if "targets" in s else clinical
        target_cols = [s[k] for k in ("label", "time", "event", "group", "index_time") if k in s]
        if target_cols and targets is None:
            raise ValueError("data: target/group columns are named but there is no clinical or targets table")
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
        if clinical is not None:
            clinical = self._clinical_features(clinical, target_cols if targets is clinical else [])
        genomics = None
        if "genomics" in s:
            import anndata

            path = self.path("genomics")
            if not path.is_file():
                raise FileNotFoundError(f"data.genomics: file {path} does not exist")
            genomics = anndata.read_h5ad(path)
        images = None
        if "images" in s:
            source: Any = self.path("images")
            if source.suffix.lower() in (".csv", ".tsv", ".parquet"):
                manifest = pd.read_parquet(source) if source.suffix == ".parquet" else pd.read_csv(source)
                manifest["path"] = [str(p if Path(p).is_absolute() else source.parent / p) for p in manifest["path"]]
                source = manifest
            elif not source.exists():
                raise FileNotFoundError(f"data.images: {source} does not exist")
            if s.get("image_kind", "features") == "features":
                images = ImageBags.from_features(source)
            else:
                images = ImageBags.from_patches(source, patch_size=s.get("patch_size"))
        events = None
        if "events" in s:
            raw = read_table(self.path("events"), idc, "data.events").reset_index()
            rename = {v: k for k, v in (s.get("event_columns") or {}).items()}
            events = raw.rename(columns={**rename, idc: "sample_id"})
        gene_sets = s.get("gene_sets")
        if isinstance(gene_sets, str):
            gene_sets = str(self.path("gene_sets"))
        return Cohort(clinical=clinical, genomics=genomics, images=images, events=events, labels=labels,
                      survival=survival, groups=groups, clinical_types=s.get("clinical_types"),
                      genomics_layer=s.get("genomics_layer"), gene_sets=gene_sets, index_time=index_time,
                      name=s.get("name"))

    def _clinical_features(self, clinical: pd.DataFrame, target_cols: list[str]) -> pd.DataFrame:
        s = self.spec
        if "clinical_columns" in s:
            cols = list(s["clinical_columns"])
            missing = [c for c in cols if c not in clinical.columns]
            if missing:
                raise ValueError(f"data.clinical_columns: {missing} not in the clinical table "
                                 f"(columns: {list(clinical.columns)})")
            clash = [c for c in cols if c in target_cols]
            if clash:
                raise ValueError(f"data.clinical_columns: {clash} are target/group columns, not features")
            return clinical[cols]
        drop = [*target_cols, *s.get("drop_columns", [])]
        missing = [c for c in s.get("drop_columns", []) if c not in clinical.columns]
        if missing:
            raise ValueError(f"data.drop_columns: {missing} not in the clinical table (columns: {list(clinical.columns)})")
        return clinical.drop(columns=[c for c in drop if c in clinical.columns])


@dataclass
class RunConfig:
    task: str
    data: DataConfig
    model: dict[str, Any]


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
    return RunConfig(task=raw["task"], data=DataConfig.parse(raw["data"], base=path.parent), model=model)


def load_data_config(path: str | Path) -> DataConfig:
    """Parse a ``data.yaml`` (the data keys at the top level, or under ``data:``)."""
    path = Path(path)
    raw = read_yaml(path)
    if set(raw) <= set(RUN_KEYS) and "data" in raw:
        raw = raw["data"]
    return DataConfig.parse(raw, base=path.parent)


def write_cohort_files(cohort: Any, folder: str | Path) -> dict[str, Any]:
    """Write ``cohort`` as the files a data config reads (clinical.csv with the targets, expression.h5ad,
    features/<sample>.npy, events.csv) and return the matching data section (paths relative to ``folder``).

    Used by the examples and tests to show the file-based route; feature bags are written per sample.
    """
    import numpy as np

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"id_column": "sample_id"}
    ids = [str(s) for s in cohort.sample_ids]
    table = pd.DataFrame(index=pd.Index(ids, name="sample_id"))
    if cohort.clinical is not None:
        table = table.join(cohort.clinical)
        spec["clinical_types"] = dict(cohort.clinical_types)
    if cohort.labels is not None:
        table["label"] = cohort.labels.loc[ids]
        spec["label"] = "label"
    if cohort.survival is not None:
        table["time"], table["event"] = cohort.survival.loc[ids, "time"], cohort.survival.loc[ids, "event"]
        spec["time"], spec["event"] = "time", "event"
    if cohort.events is not None and getattr(cohort, "index_time", None) is not None:
        table["index_time"] = cohort.index_time.reindex(ids).to_numpy(float)
        spec["index_time"] = "index_time"
    if cohort.clinical is not None or len(table.columns):
        # Samples without clinical data keep their targets here; their clinical cells are all NaN, which
        # the Cohort reads as "no clinical data" for that sample.
        table.reset_index().to_csv(folder / "clinical.csv", index=False)
        spec["clinical" if cohort.clinical is not None else "targets"] = "clinical.csv"
    if cohort.genomics is not None:
        cohort.genomics.write_h5ad(folder / "expression.h5ad")
        spec["genomics"] = "expression.h5ad"
    if cohort.images is not None and cohort.images.kind == "features":
        (folder / "features").mkdir(exist_ok=True)
        for sid in cohort.images.sample_ids:
            np.save(folder / "features" / f"{sid}.npy", cohort.images.load(sid).data)
        spec["images"] = "features"
    if cohort.events is not None:
        cols = [c for c in ("sample_id", "time", "code", "value", "segment") if c in cohort.events.columns]
        cohort.events[cols].to_csv(folder / "events.csv", index=False, float_format="%.17g")
        spec["events"] = "events.csv"
    return spec
