"""Slides to patients: regroup per-slide bags so that a patient's several slides form one bag.

``ImageBags.from_features(folder, patient_of=...)`` reads one bag per slide (a file ``<slide>.h5`` etc., or
a manifest row), then :func:`group_by_patient` maps each slide id (the file stem, or the manifest's
``slide_id``) to its patient. ``patient_of`` is

- a mapping slide id -> patient id (a dict, or a pandas Series indexed by slide id);
- a callable slide id -> patient id, or ``None`` when the slide belongs to no patient;
- ``"tcga"``: the TCGA barcode rule, the patient is the first 12 characters (``TCGA-XX-XXXX``) of a slide
  id such as ``TCGA-A1-A0SB-01Z-00-DX1.<uuid>``.

A slide that matches no patient (absent from the mapping, ``None`` from the callable, not a TCGA barcode)
is never dropped silently: it is left out of the bags, a ``UserWarning`` names it, and
``ImageBags.unmatched_slides`` (shown by ``Cohort.summary()``) lists it. ``unmatched="raise"`` makes it a
``ValueError`` instead. A patient's slides keep the order they were read in (sorted file names).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

from ..validation import format_ids

TCGA_PATIENT = re.compile(r"^TCGA-[A-Za-z0-9]{2}-[A-Za-z0-9]{4}")
"""The patient part of a TCGA barcode: project ``TCGA``, tissue source site, participant (12 characters)."""

UNMATCHED = ("warn", "raise")


def tcga_patient(slide_id: str) -> str | None:
    """The patient of a TCGA slide id (its first 12 characters), None when it is not a TCGA barcode."""
    match = TCGA_PATIENT.match(slide_id)
    return match.group(0) if match else None


def patient_rule(patient_of: Any) -> Callable[[str], str | None]:
    """``patient_of`` (mapping, callable or ``"tcga"``) as a function slide id -> patient id or None."""
    if isinstance(patient_of, str):
        if patient_of.lower() != "tcga":
            raise ValueError(
                f"images: patient_of={patient_of!r} is not a known rule; expected 'tcga', a mapping "
                "slide id -> patient id, or a callable"
            )
        return tcga_patient
    if isinstance(patient_of, pd.Series):
        patient_of = patient_of.to_dict()
    if isinstance(patient_of, Mapping):
        table = {str(k): v for k, v in patient_of.items()}
        return lambda sid: table.get(sid)
    if callable(patient_of):
        return patient_of
    raise TypeError(
        "images: patient_of must be 'tcga', a mapping slide id -> patient id or a callable, got "
        f"{type(patient_of).__name__}"
    )


def group_by_patient(
    per_sample: dict[str, list[tuple[str, Any]]], patient_of: Any, *, unmatched: str = "warn"
) -> tuple[dict[str, list[tuple[str, Any]]], list[str]]:
    """Regroup ``sample -> [(slide_id, item), ...]`` by patient.

    Returns ``(patient -> [(slide_id, item), ...], unmatched slide ids)``. Patients appear in the order of
    their first slide. Raises ``ValueError`` when a slide id occurs twice (two files would be merged under
    one name) or, with ``unmatched="raise"``, when a slide matches no patient.
    """
    if unmatched not in UNMATCHED:
        raise ValueError(f"images: unmatched must be one of {UNMATCHED}, got {unmatched!r}")
    rule = patient_rule(patient_of)
    grouped: dict[str, list[tuple[str, Any]]] = {}
    seen: dict[str, str] = {}
    missing: list[str] = []
    for sample, items in per_sample.items():
        for sid, item in items:
            if sid in seen:
                raise ValueError(
                    f"images: slide id {sid!r} occurs twice (under {seen[sid]!r} and {sample!r}); slide ids "
                    "must be unique to be mapped to patients"
                )
            seen[sid] = sample
            patient = rule(sid)
            if patient is None or (isinstance(patient, float) and pd.isna(patient)):
                missing.append(sid)
                continue
            grouped.setdefault(str(patient), []).append((sid, item))
    if missing:
        message = (
            f"images: {len(missing)} slide(s) matched no patient in patient_of: {format_ids(missing)}"
        )
        if unmatched == "raise" or not grouped:
            raise ValueError(message + ("" if grouped else "; no slide matched any patient"))
        warnings.warn(message + "; they are left out of the bags (ImageBags.unmatched_slides)", UserWarning,
                      stacklevel=3)
    return grouped, missing
