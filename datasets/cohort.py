"""The :class:`Cohort`: samples with any subset of the registered modalities, optional targets, validated on
construction. Each modality's own rules (its input format, sample ids, subset, summary) live in its module of
:mod:`clinfuse.datasets.modalities`; the cohort loops over the registry.

Sample rules (documented once, enforced here)
---------------------------------------------
- The cohort's samples are the union of the ids found in the modalities (clinical index, genomics
  ``obs_names``, image bag ids, event ``sample_id``); ids are compared and stored as ``str``.
- When targets are given (``labels=`` or ``survival=``), the target ids and the data ids must be the same set:
  a sample with data but no target is an error naming its modality (so events, genomics or images of a
  sample the targets do not know are "unknown samples"), and a target for a sample without any modality is
  an error. Without targets every sample with data is a cohort sample (predict / explain only).
- A clinical row that is all NaN means the sample has no clinical data: it is dropped and recorded. A column
  with no value is missing data: allowed to predict, refused when fitting (:meth:`Cohort.check_fittable`).
- Events after a sample's index time are removed and recorded in ``excluded``; a sample left with no data at
  all by that cut is removed from the cohort (with its target) and recorded too.
- ``classes`` is computed on construction and kept by :meth:`Cohort.subset`, so folds share one class list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from .batch import MODALITIES
from .id_forms import check_id_forms
from .images import ImageBags
from .modalities import MODALITY_REGISTRY, Modality, get_modality
from .modalities.clinical import check_columns_have_values
from .validation import check_unique, format_ids, indexed_frame, normalise_labels, normalise_survival, str_ids


class Cohort:
    """Samples (patients, admissions or specimens) with clinical, genomics, image and event data and targets.

    All arguments are keyword-only and optional except that at least one modality is required. See the module
    docstring for the sample rules and :mod:`clinfuse.datasets.modalities` for the per-modality formats. A
    registered fifth modality is passed (with its options) as a keyword of its name, and is an attribute too.

    Args:
        clinical: DataFrame indexed by sample id; NaN = missing value.
        genomics: AnnData, obs_names = sample ids, var_names = genes (``.X`` dense or scipy sparse).
        images: :class:`ImageBags` (a plain dict is passed to :meth:`ImageBags.from_features`).
        events: long DataFrame ``sample_id`` (or ``patient_id``), ``time``, ``code``[, ``value``,
            ``segment``].
        labels: Series sample -> class label (any hashable).  Exclusive with ``survival``.
        survival: DataFrame indexed by sample with ``time`` (> 0) and ``event`` (0/1), or a structured
            array (scikit-survival's ``Surv.from_arrays``: first bool field = event, first float field =
            time) whose rows follow the data's sample order (the ids a cohort without targets lists).
        groups: Series sample -> patient id (for grouped splits); every sample must be in it.
        clinical_types: ``{column: "numeric" | "categorical"}`` overriding the detection.
        genomics_layer: AnnData layer to use instead of ``.X``.
        gene_sets: GMT path, set -> genes mapping or gene -> set mapping (see :mod:`.gene_sets`).
        index_time: Series sample -> prediction time (days or datetimes, same axis as event times);
            samples absent from it (or NaN) use their latest event.
        name: a label for summaries.
        excluded: records of cuts made before the cohort was built (loaders pass theirs here); each a dict
            with ``what, modality, sample_id, count, reason``.
    """

    def __init__(
        self, *, clinical: pd.DataFrame | None = None, genomics: Any = None,
        images: ImageBags | Mapping | None = None, events: pd.DataFrame | None = None,
        labels: pd.Series | None = None, survival: pd.DataFrame | np.ndarray | None = None,
        groups: pd.Series | Mapping | None = None, clinical_types: Mapping[str, str] | None = None,
        genomics_layer: str | None = None, gene_sets: Any = None,
        index_time: pd.Series | Mapping | None = None, name: str | None = None,
        excluded: Iterable[Mapping[str, Any]] | None = None, **more: Any,
    ) -> None:
        given = {"clinical": clinical, "genomics": genomics, "images": images, "events": events,
                 "clinical_types": clinical_types, "genomics_layer": genomics_layer, "gene_sets": gene_sets,
                 "index_time": index_time, **more}
        known = {k for m in MODALITY_REGISTRY for k in (m.name, *m.options)}
        unknown = [k for k in more if k not in known]
        if unknown:
            raise TypeError(f"Cohort: unexpected keyword(s) {unknown}; the registered modalities are "
                            f"{MODALITIES}, with options {sorted(k for k in known if k not in MODALITIES)}")
        self.name = name
        self.excluded: list[dict[str, Any]] = [_check_excluded(e) for e in (excluded or [])]
        self._options = {m.name: {k: given.get(k) for k in m.options} for m in MODALITY_REGISTRY}
        self._present: dict[str, set[str]] = {m.name: set() for m in MODALITY_REGISTRY}
        for m in MODALITY_REGISTRY:
            for key, value in m.attribute_defaults().items():
                setattr(self, key, value)
            data = given.get(m.name)
            if data is None:
                m.check_options_without_data(self._options[m.name])
            else:
                data, attributes, cut = m.normalise(data, self._options[m.name])
                self._set(attributes)
                self.excluded += cut
            setattr(self, m.name, data)

        data_ids = self._data_ids()
        if not data_ids:
            raise ValueError("cohort: no sample has any modality; pass at least one of "
                             f"{', '.join(MODALITY_REGISTRY.names())}")
        self.labels: pd.Series | None = None
        self.survival: pd.DataFrame | None = None
        if labels is not None and survival is not None:
            raise ValueError("targets: pass labels= (classification) or survival= (survival), not both")
        targets = None
        if labels is not None:
            self.labels = targets = normalise_labels(labels)
        elif survival is not None:
            self.survival = targets = normalise_survival(survival, list(data_ids))
        ids = {m.name: self._modality_ids(m.name) for m in self._registered()}
        named = "labels" if labels is not None else "survival"
        check_id_forms(ids if targets is None else {**ids, named: targets.index})
        if targets is not None:
            self._check_targets(list(targets.index), data_ids)
            order = list(targets.index)
        else:
            order = list(data_ids)

        cut_by = self._restrict(set(order))
        left = self._data_ids()
        gone = [s for s in order if s not in left]
        if gone:
            why = " / ".join(m.cut_reason for m in cut_by if m.cut_reason) or "their data were cut"
            self.excluded.append({"what": "samples with no data left", "modality": None, "sample_id": None,
                                  "count": len(gone), "reason": f"{why}: {format_ids(gone)}"})
            order = [s for s in order if s in left]
            if not order:
                raise ValueError(next((m.cut_everything_error for m in cut_by if m.cut_everything_error),
                                      "cohort: no sample has any data left"))
            keep = set(left)
            for m in self._registered():
                self._set(m.subset_attributes(self._attributes(m), keep))
            if self.labels is not None:
                self.labels = self.labels.loc[order]
            if self.survival is not None:
                self.survival = self.survival.loc[order]
        self.sample_ids: list[str] = order
        self.groups: pd.Series = self._make_groups(groups)
        self.task: str | None = ("classification" if self.labels is not None
                                 else "survival" if self.survival is not None else None)
        self.classes: list | None = _sorted_unique(self.labels) if self.labels is not None else None
        self._index_presence()

    # ------------------------------------------------------------------ construction helpers
    def _registered(self) -> list[Modality]:
        """The registered modalities this cohort was built with, in canonical order."""
        return [m for m in MODALITY_REGISTRY if m.name in self._present]

    def _set(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            setattr(self, key, value)

    def _attributes(self, m: Modality) -> dict[str, Any]:
        return {key: getattr(self, key) for key in m.attribute_defaults()}

    def _restrict(self, keep: set[str]) -> list[Modality]:
        """Each modality's last pass once the samples are known (events: the index-time cut); returns the
        modalities that cut something."""
        cut_by = []
        for m in self._registered():
            data = getattr(self, m.name)
            if data is None:
                continue
            data, attributes, cut = m.restrict(data, self._options[m.name], keep)
            setattr(self, m.name, data)
            self._set(attributes)
            self.excluded += cut
            if cut:
                cut_by.append(m)
        return cut_by

    def _data_ids(self) -> dict[str, None]:
        """Ordered set of every sample id found in a modality."""
        ids: dict[str, None] = {}
        for m in self._registered():
            ids.update(dict.fromkeys(self._modality_ids(m.name)))
        return ids

    def _modality_ids(self, modality: str) -> list[str]:
        data = getattr(self, modality, None)
        return get_modality(modality).sample_ids(data) if data is not None else []

    def _check_targets(self, target_ids: list[str], data_ids: Mapping[str, None]) -> None:
        what = "labels" if self.labels is not None else "survival"
        known = set(target_ids)
        orphans = [s for s in target_ids if s not in data_ids]
        if orphans:
            raise ValueError(
                f"{what}: target(s) for sample(s) {format_ids(orphans)} that have no modality at all "
                f"(no {_either(m.noun for m in self._registered())}); expected data for every target"
            )
        for modality in self._present:
            ids = self._modality_ids(modality)
            unknown = [s for s in ids if s not in known]
            if not unknown:
                continue
            if len(unknown) == len(ids):
                raise ValueError(
                    f"{modality}: none of its sample ids matches a {what} sample (e.g. "
                    f"{format_ids(ids, limit=3)} vs "
                    f"{format_ids(target_ids, limit=3)}); expected the same sample ids in every input"
                )
            raise ValueError(
                f"{modality}: sample(s) {format_ids(unknown)} have data but no target in {what}; "
                "every sample needs a target when targets are given"
            )

    def _make_groups(self, groups: Any) -> pd.Series:
        if groups is None:
            return pd.Series(self.sample_ids, index=pd.Index(self.sample_ids, name="sample_id"), name="group")
        g = indexed_frame(pd.Series(groups) if isinstance(groups, Mapping) else groups, what="groups")
        if isinstance(g, pd.DataFrame):
            raise TypeError("groups: expected a Series sample -> patient id, got a DataFrame")
        missing = [s for s in self.sample_ids if s not in g.index]
        if missing:
            raise ValueError(
                f"groups: sample(s) {format_ids(missing)} have no patient in groups; expected one "
                "entry per sample"
            )
        g = g.loc[self.sample_ids]
        if g.isna().any():
            raise ValueError(
                f"groups: missing (NaN) patient id for sample(s) {format_ids(g.index[g.isna()])}"
            )
        return pd.Series(str_ids(g, what="groups"), index=g.index, name="group")

    def _index_presence(self) -> None:
        self._present = {m: set(self._modality_ids(m)) for m in self._present}
        self._position = {s: i for i, s in enumerate(self.sample_ids)}
        self._event_slices: dict[str, slice] | None = None  # built on the first events_of call

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.sample_ids)

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        return f"Cohort({name}samples={len(self)}, modalities={list(self.modalities)}, task={self.task!r})"

    @property
    def patients(self) -> list[str]:
        """Unique patient ids (``groups`` values) in order of first appearance."""
        return list(dict.fromkeys(self.groups.tolist()))

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities the cohort holds, in canonical order."""
        return tuple(m for m, ids in self._present.items() if ids)

    @property
    def targets(self) -> pd.Series | pd.DataFrame | None:
        """``labels`` or ``survival`` (whichever is given)."""
        return self.labels if self.labels is not None else self.survival

    def _check_sample(self, sample_id: str) -> None:
        if sample_id not in self._position:
            raise ValueError(f"cohort: unknown sample id {sample_id!r}")

    def has(self, sample_id: str, modality: str) -> bool:
        """Whether ``sample_id`` has data of ``modality``."""
        if modality not in MODALITIES:
            raise ValueError(f"cohort: unknown modality {modality!r}; expected one of {MODALITIES}")
        self._check_sample(str(sample_id))
        return str(sample_id) in self._present.get(modality, ())

    def presence(self) -> pd.DataFrame:
        """Bool DataFrame samples x present modalities (True = the sample has data of that modality)."""
        return pd.DataFrame(
            {m: [s in self._present[m] for s in self.sample_ids] for m in self.modalities},
            index=pd.Index(self.sample_ids, name="sample_id"),
            dtype=bool,
        )

    def events_of(self, sample_id: str) -> pd.DataFrame:
        """The sample's events (rows of ``events`` sorted by time; empty when it has none)."""
        self._check_sample(sample_id)
        if self.events is None:
            raise ValueError("events: the cohort has no events")
        if self._event_slices is None:
            self._event_slices = get_modality("events").sample_slices(self.events)
        sl = self._event_slices.get(sample_id)
        return self.events.iloc[sl] if sl is not None else self.events.iloc[0:0]

    def subset(self, ids: Iterable[Any]) -> Cohort:
        """A cohort of ``ids`` (in that order) with every modality, target, group, gene set and exclusion
        record restricted consistently. No re-validation: a subset of a valid cohort is valid.

        Unknown or duplicated ids raise ``ValueError``. ``classes`` is kept from the parent cohort.
        """
        ids = [str(i) for i in ids]
        check_unique(ids, what="subset")
        unknown = [i for i in ids if i not in self._position]
        if unknown:
            raise ValueError(f"cohort: subset of unknown sample id(s) {format_ids(unknown)}")
        keep = set(ids)
        new = object.__new__(Cohort)
        new.name, new.sample_ids = self.name, ids
        new.task, new.classes = self.task, self.classes
        new._options, new._present = self._options, {key: set() for key in self._present}
        for m in self._registered():
            data, with_data = getattr(self, m.name), [i for i in ids if i in self._present[m.name]]
            setattr(new, m.name, m.subset(data, with_data) if data is not None and with_data else None)
            new._set(m.subset_attributes(self._attributes(m), keep))
        new.labels = self.labels.loc[ids] if self.labels is not None else None
        new.survival = self.survival.loc[ids] if self.survival is not None else None
        new.groups = self.groups.loc[ids]
        new.excluded = [
            dict(e) for e in self.excluded if e.get("sample_id") is None or e["sample_id"] in keep
        ]
        new._index_presence()
        return new

    def check_fittable(self) -> None:
        """Raise ``ValueError`` unless a model can be fitted on this cohort (targets with >= 2 classes, or
        survival with at least one event)."""
        check_columns_have_values(self.clinical)  # blank columns can be predicted (missing), not fitted
        if self.task is None:
            raise ValueError(
                "cohort: no targets; pass labels= or survival= to fit (a cohort without targets can "
                "only be predicted and explained)"
            )
        if self.labels is not None:
            present = _sorted_unique(self.labels)
            if len(present) < 2:
                raise ValueError(
                    f"labels: only one class ({present[0]!r}) among {len(self)} samples; fitting a "
                    "classifier needs at least two classes"
                )
        if self.survival is not None and int(self.survival["event"].sum()) == 0:
            raise ValueError(
                f"survival: no event among {len(self)} samples (all censored); fitting needs events"
            )

    def summary(self) -> str:
        """A human-readable description: samples per modality, missingness, bag sizes, events, targets,
        cuts."""
        return _describe(self)


def _either(nouns: Iterable[str]) -> str:
    """``"a, b or c"``."""
    nouns = list(nouns)
    return nouns[0] if len(nouns) == 1 else f"{', '.join(nouns[:-1])} or {nouns[-1]}"


def _sorted_unique(labels: pd.Series) -> list:
    values = list(dict.fromkeys(labels.tolist()))
    try:
        return sorted(values)
    except TypeError:  # mixed types: a stable order that still sorts
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _check_excluded(entry: Mapping[str, Any]) -> dict[str, Any]:
    required = {"what", "modality", "sample_id", "count", "reason"}
    if not isinstance(entry, Mapping) or not required <= set(entry):
        raise ValueError(f"excluded: each record needs keys {sorted(required)}, got {entry!r}")
    return dict(entry)


def _describe(c: Cohort) -> str:
    lines = [
        f"Cohort {c.name!r}" if c.name else "Cohort",
        (f"  samples: {len(c)}   patients: {len(c.patients)}   task: "
        f"{c.task or 'none (predict/explain only)'}"),
    ]
    pres = c.presence()
    for m in c.modalities:
        lines.append(f"  {m:<9} {int(pres[m].sum()):>6} / {len(c)} samples")
    if c.modalities:
        patterns = pres.apply(lambda r: "+".join(m for m in c.modalities if r[m]) or "none", axis=1)
        counts = patterns.value_counts()
        lines.append("  missingness patterns: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
    for m in c._registered():
        data = getattr(c, m.name)
        if data is not None:
            lines += m.summary_lines(data, c)
    if c.labels is not None:
        counts = c.labels.value_counts()
        lines.append(
            "  labels: "
            + ", ".join(f"{k!r}: {v} ({100 * v / len(c.labels):.0f}%)" for k, v in counts.items())
        )
    if c.survival is not None:
        n_ev = int(c.survival["event"].sum())
        lines.append(
            f"  survival: {n_ev} events, {len(c.survival) - n_ev} censored "
            f"({100 * (1 - n_ev / max(len(c.survival), 1)):.0f}% censoring), median time "
            f"{float(c.survival['time'].median()):g}"
        )
    if c.excluded:
        lines.append(f"  excluded ({len(c.excluded)} records):")
        for e in c.excluded:
            where = [f"[{e['modality']}]"] if e.get("modality") else []
            where += [f"sample {e['sample_id']!r}"] if e.get("sample_id") is not None else []
            lines.append("    " + " ".join([*where, f"{e['what']}: {e['count']} ({e['reason']})"]))
    else:
        lines.append("  excluded: nothing")
    return "\n".join(lines)
