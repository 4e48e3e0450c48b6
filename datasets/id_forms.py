"""Sample ids that match only after a conversion: ``"001"`` and ``"1"``, ``"1.0"`` and ``"1"``, ``" 7"`` and
``"7"``.

Ids are compared as text, so such ids are different samples: a table read with numeric ids (``001`` parsed
as ``1``) next to feature files named ``001.npy`` would split every patient in two. The cohort refuses a
modality whose ids meet another input's ids only in such a converted form, naming them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

from .validation import MAX_SHOWN

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def id_form(sample_id: str) -> str:
    """The id as a number would print it (``"001"``, ``"1.0"``, ``" 1"`` -> ``"1"``); other text stripped."""
    text = sample_id.strip()
    if not _NUMBER.fullmatch(text):
        return text
    value = float(text)
    if not math.isfinite(value):
        return text
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)


def id_form_clashes(ids: Mapping[str, Iterable[str]]) -> list[tuple[str, str, str, str]]:
    """``(input a, id in a, input b, id in b)`` for ids of ``a`` absent from ``b`` whose converted form
    (:func:`id_form`) is an id of ``b`` that ``a`` lacks."""
    sets = {name: dict.fromkeys(v) for name, v in ids.items()}  # ordered: messages follow the input order
    forms = {name: {} for name in sets}  # name -> form -> ids of that form
    for name, values in sets.items():
        for i in values:
            forms[name].setdefault(id_form(i), []).append(i)
    clashes = []
    names = list(sets)
    for k, a in enumerate(names):
        for b in names[k + 1:]:
            for form in [f for f in forms[a] if f in forms[b]]:
                only_a = [i for i in forms[a][form] if i not in sets[b]]
                only_b = [i for i in forms[b][form] if i not in sets[a]]
                if only_a and only_b:
                    clashes.append((a, only_a[0], b, only_b[0]))
    return clashes


def check_id_forms(ids: Mapping[str, Iterable[str]]) -> None:
    """``ValueError`` when an input's ids match another's only after a conversion (see the module
    docstring); ``ids`` maps input names (modalities, ``labels``) to their sample ids."""
    clashes = id_form_clashes(ids)
    if not clashes:
        return
    a, b = clashes[0][0], clashes[0][2]
    pairs = [f"{ia!r} ({na}) vs {ib!r} ({nb})" for na, ia, nb, ib in clashes[:MAX_SHOWN]]
    more = f", ... ({len(clashes)} in total)" if len(clashes) > MAX_SHOWN else ""
    raise ValueError(
        f"sample ids of {a} and {b} match only after a conversion: {', '.join(pairs)}{more}"
        "; ids are compared as text, so these are different samples. Write every input's ids the same way "
        "(read id columns as text, e.g. pd.read_csv(..., dtype={'sample_id': str}))"
    )
