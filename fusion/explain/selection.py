"""Which samples the CLI draws: informative ones, each with the reason it was picked.

Classification: the most confident sample of each class in turn (the highest predicted probability of that
class), then the next most confident, ...; survival: the highest and the lowest predicted risk in turn.
Bags of a single patch are left out of patch maps (one patch has weight 1 whatever the model does).
"""

from __future__ import annotations

from typing import NamedTuple

import pandas as pd


class Pick(NamedTuple):
    sample_id: str
    reason: str


def patch_counts(frame: pd.DataFrame, kind: str) -> pd.Series:
    """Tokens per sample in the rows of ``kind`` (of one class, for a per-class kind)."""
    rows = frame[frame["kind"] == kind]
    first = rows["target_class"].dropna()
    if len(first):
        rows = rows[rows["target_class"] == first.iloc[0]]
    return rows.groupby("sample_id", sort=False).size()


def informative_samples(predictions: pd.DataFrame, candidates: list[str], n: int) -> list[Pick]:
    """Up to ``n`` of ``candidates`` (sample ids present in ``predictions``'s index), with why each.

    ``predictions`` is :func:`~clinfuse.fusion.predictions.prediction_frame`'s: ``proba_<class>`` columns
    (classification) or ``risk`` (survival).
    """
    pred = predictions.loc[[c for c in candidates if c in predictions.index]]
    if pred.empty or n <= 0:
        return []
    if "risk" in pred:
        ranked = pred["risk"].astype(float).sort_values(ascending=False, kind="stable")
        queues = [[(s, f"highest predicted risk no. {i + 1} (risk {v:.3g})")
                   for i, (s, v) in enumerate(ranked.items())],
                  [(s, f"lowest predicted risk no. {i + 1} (risk {v:.3g})")
                   for i, (s, v) in enumerate(ranked[::-1].items())]]
    else:
        queues = []
        for column in [c for c in pred.columns if str(c).startswith("proba_")]:
            cls = str(column)[len("proba_"):]
            ranked = pred[column].astype(float).sort_values(ascending=False, kind="stable")
            queues.append([(s, f"most confident for class {cls} no. {i + 1} (p = {v:.3f})")
                           for i, (s, v) in enumerate(ranked.items())])
    picks: list[Pick] = []
    seen: set[str] = set()
    depth = max(len(q) for q in queues)
    for i in range(depth):
        for queue in queues:  # round robin: every class (or both ends of the risk) before the next rank
            if i < len(queue) and queue[i][0] not in seen and len(picks) < n:
                seen.add(queue[i][0])
                picks.append(Pick(str(queue[i][0]), queue[i][1]))
    return picks
