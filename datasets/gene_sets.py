"""Gene sets: read a GMT file or a mapping, keep only genes the expression matrix has.

Accepted inputs (``Cohort(gene_sets=...)``):

- a path to a GMT file: one set per line, tab separated ``name<TAB>description<TAB>gene<TAB>gene...``
  (blank lines and lines starting with ``#`` are skipped);
- a set -> genes mapping (``{"setA": ["G1", "G2"]}``);
- a gene -> set(s) mapping (``{"G1": "setA", "G2": ["setA", "setB"]}``) or a pandas Series gene -> set.

A mapping is read as gene -> set(s) when its values are plain strings, or when most of its keys are genes
of the expression matrix; otherwise as set -> genes. Genes absent from the matrix are dropped from their
sets and a set left empty is dropped; both are recorded (never silent).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .validation import format_ids


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Parse a GMT file into ``{set_name: [gene, ...]}`` (order kept, duplicates removed)."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"genomics: gene set file {str(path)!r} does not exist")
    sets: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            line = line.rstrip("\n\r")
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split("\t")
            if len(parts) < 3:
                raise ValueError(
                    f"genomics: {str(path)!r} line {lineno} has {len(parts)} tab-separated field(s); "
                    "expected name, description, gene, ... (GMT format)"
                )
            name = parts[0].strip()
            if name in sets:
                raise ValueError(f"genomics: gene set {name!r} appears twice in {str(path)!r}")
            sets[name] = list(dict.fromkeys(g.strip() for g in parts[2:] if g.strip()))
    if not sets:
        raise ValueError(f"genomics: gene set file {str(path)!r} holds no gene set")
    return sets


def _as_list(v: Any) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, Sequence | set | frozenset | pd.Index):
        return [str(x) for x in v]
    raise TypeError(f"genomics: gene set entries must be strings or lists of strings, got {type(v).__name__}")


def parse_gene_sets(source: Any, genes: Sequence[str]) -> tuple[dict[str, list[str]], list[dict[str, Any]]]:
    """Normalise ``source`` to ``{set: [gene, ...]}`` restricted to ``genes``.

    Returns:
        the gene sets, and ``excluded`` records (``what, modality, sample_id, count, reason``) for genes and
        sets that were dropped because the expression matrix lacks them.
    """
    if isinstance(source, str | os.PathLike):
        raw = read_gmt(source)
    elif isinstance(source, pd.Series):
        raw = _invert({str(k): _as_list(v) for k, v in source.dropna().items()})
    elif isinstance(source, Mapping):
        if not source:
            raise ValueError("genomics: gene_sets is empty; expected at least one set")
        known = set(genes)
        keys = [str(k) for k in source]
        gene_keyed = all(isinstance(v, str) for v in source.values()) or (
            sum(k in known for k in keys) > len(keys) / 2
        )
        as_lists = {str(k): _as_list(v) for k, v in source.items()}
        raw = _invert(as_lists) if gene_keyed else as_lists
    else:
        raise TypeError(
            "genomics: gene_sets must be a GMT file path, a set -> genes mapping or a gene -> set mapping, "
            f"got {type(source).__name__}"
        )
    known = set(genes)
    out: dict[str, list[str]] = {}
    excluded: list[dict[str, Any]] = []
    missing_genes: set[str] = set()
    empty_sets = []
    for name, members in raw.items():
        kept = [g for g in dict.fromkeys(members) if g in known]
        missing_genes.update(g for g in members if g not in known)
        if kept:
            out[name] = kept
        else:
            empty_sets.append(name)
    if missing_genes:
        excluded.append(
            {
                "what": "gene-set genes absent from the expression matrix",
                "modality": "genomics",
                "sample_id": None,
                "count": len(missing_genes),
                "reason": f"dropped from their sets: {format_ids(sorted(missing_genes))}",
            }
        )
    if empty_sets:
        excluded.append(
            {
                "what": "gene sets with no gene in the expression matrix",
                "modality": "genomics",
                "sample_id": None,
                "count": len(empty_sets),
                "reason": f"dropped: {format_ids(empty_sets)}",
            }
        )
    if not out:
        raise ValueError(
            f"genomics: no gene set shares a gene with the expression matrix (sets {format_ids(list(raw))}; "
            f"genes {format_ids(list(genes))}); expected set members to be var_names"
        )
    return out, excluded


def _invert(gene_to_sets: Mapping[str, list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for gene, sets in gene_to_sets.items():
        for s in sets:
            out.setdefault(s, []).append(gene)
    return out
