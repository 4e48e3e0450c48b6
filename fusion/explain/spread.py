"""How spread out attention is: the effective number of tokens per sample, and whether it says anything.

For one sample, attention kind, class and modality, with weights ``p`` normalised over the sample's N real
tokens (the report's ``value``), the entropy is ``H = -sum_i p_i log p_i`` and the effective number of
tokens is ``N_eff = exp(H)``: N for uniform attention, 1 for all weight on one token. ``ratio = N_eff / N``
(in (0, 1]) and ``peak_ratio = max(p) * N`` (1 for uniform) describe its concentration independently of
the bag size. The ``modality`` kind counts the sample's present modalities (those with weight, or with
rows of another kind; an absent modality is listed with weight exactly 0). Kinds whose values are not a
distribution over the sample's tokens (``phi``, normalised over the classes; ``shap``, signed
attributions) are not judged: the table's ``attrs["not_judged"]`` names them and why.

**The uniform flag.** A row is ``uniform`` when its attention is as flat as attention that learned nothing:

* with a null (:func:`untrained_null`: the same samples through freshly initialised copies of the fitted
  network, same configuration, encoders and preprocessor; or :func:`null_from_report`, e.g. a refit on
  permuted labels), the row is uniform when ``ratio >= max(q, 0.95)``, q the 5% quantile (``quantile``)
  of the null's ratios of the same modality, kind and class, pooled over the null's samples and draws:
  attention at least as flat as 95% of the null's cannot be told from attention that learned nothing.
  The 0.95 floor (``fallback_ratio``) keeps a null that is itself far from uniform (an untrained
  network can put all its modality weight on one modality: q = 0.5 for two) from calling concentrated
  attention uniform. Untrained attention over patches is usually almost exactly uniform (scores start near
  0, q ~ 0.9995), so the null is the stricter bound there: a row is flagged only when it is that flat;
* without a null, the deterministic fallback: uniform when ``ratio >= 0.95`` (``fallback_ratio``).

The ``rule`` column says which rule judged each row, ``threshold`` the ratio it was compared with. Rows
of a single token (weight 1 whatever the model does) and rows whose weights are all 0 have ``uniform``
NA and say so in ``rule``.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ...datasets.missingness import DataWarning
from .contributions import network_device

FALLBACK_RATIO = 0.95
NULL_QUANTILE = 0.05
NULL_DRAWS = 5  # untrained copies by default: the spread of an untrained network varies from init to init
MIN_NULL_VALUES = 20  # and at least this many null ratios per group
KEYS = ["sample_id", "modality", "kind", "target_class"]
SPREAD_COLUMNS = (*KEYS, "n_tokens", "effective_tokens", "ratio", "peak_ratio", "threshold", "uniform",
                  "rule")
_TIE = 1e-6
_SUM_TOLERANCE = 1e-2  # float32 weights of a large bag sum to 1 within ~1e-4; "classes" kinds are far off


def effective_tokens(weights: np.ndarray) -> float:
    """``exp(H)`` of non-negative ``weights`` ``[N]`` (renormalised to sum 1): N if uniform, 1 if one-hot."""
    p = np.asarray(weights, dtype=float)
    if p.ndim != 1 or not len(p) or (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError(f"effective_tokens needs finite non-negative weights [N] with a positive sum, "
                         f"got shape {p.shape}")
    p = p / p.sum()
    nz = p[p > 0]
    return float(np.exp(-(nz * np.log(nz)).sum()))


def _frame_of(report: Any) -> pd.DataFrame:
    frame = getattr(report, "frame", report)
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected an AttentionReport or its tidy DataFrame, got {type(report).__name__}")
    missing = [c for c in (*KEYS, "token", "value") if c not in frame]
    if missing:
        raise ValueError(f"the attention table lacks the column(s) {missing}")
    return frame


def _text_classes(frame: pd.DataFrame) -> pd.DataFrame:
    """``target_class`` as text with None for class-free kinds (a groupby over only None keys gives NaN)."""
    frame["target_class"] = frame["target_class"].astype(object).where(frame["target_class"].notna(), None)
    return frame


def _group_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Per ``KEYS`` group of tidy rows: n_tokens, the weights' sum, sum p log p and max p (p renormalised)."""
    value = frame["value"].to_numpy(float)
    total = frame.groupby(KEYS, dropna=False, sort=False)["value"].transform("sum").to_numpy(float)
    p = np.divide(value, total, out=np.zeros_like(value), where=total > 0)
    frame = frame.assign(_plogp=np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), _p=p)
    return frame.groupby(KEYS, dropna=False, sort=False).agg(
        n_tokens=("value", "size"), _sum=("value", "sum"), _plogp=("_plogp", "sum"),
        _max=("_p", "max")).reset_index()


def spread_table(report: Any) -> pd.DataFrame:
    """The unflagged spread rows (``KEYS``, n_tokens, effective_tokens, ratio, peak_ratio) of ``report``
    (an AttentionReport or its tidy frame); ``attrs["not_judged"]``: kind -> why it has no rows."""
    frame = _frame_of(report)
    frame = _text_classes(frame[KEYS + ["token", "value"]].copy())
    not_judged: dict[str, str] = {}
    if (frame["kind"] == "shap").any():
        not_judged["shap"] = "signed attributions, not a distribution over tokens"
        frame = frame[frame["kind"] != "shap"]
    if frame["value"].isna().any() or (frame["value"] < 0).any():
        bad = frame[frame["value"].isna() | (frame["value"] < 0)].iloc[0]
        raise ValueError(f"sample {bad['sample_id']!r}, kind {bad['kind']!r}: attention weights must be "
                         f"non-negative numbers, got {bad['value']}")
    is_modality = (frame["kind"] == "modality").to_numpy()
    tokens = _group_stats(frame[~is_modality])
    # kinds whose weights sum to 1 over the classes, not the tokens (phi): no spread over tokens
    off = ~((tokens["_sum"] - 1).abs() <= _SUM_TOLERANCE) & (tokens["_sum"] != 0)
    for kind in tokens.loc[off, "kind"].unique():
        not_judged[str(kind)] = "weights not normalised over the sample's tokens (e.g. over the classes)"
    tokens = tokens[~tokens["kind"].isin(list(not_judged))]
    # An absent modality is listed with weight exactly 0: it is not one of the sample's tokens. A modality
    # is present when it has weight, or tokens of a judged kind for the sample (present with weight 0);
    # phi has a clinical token even without clinical data, so it does not count.
    modality = frame[is_modality]
    seen = pd.MultiIndex.from_frame(tokens[["sample_id", "modality"]])
    named = pd.MultiIndex.from_arrays([modality["sample_id"], modality["token"]])
    modality = modality[(modality["value"] > 0).to_numpy() | named.isin(seen)]
    out = pd.concat([tokens, _group_stats(modality)], ignore_index=True) if len(modality) else tokens
    zero = out["_sum"] == 0
    out["effective_tokens"] = np.where(zero, np.nan, np.exp(-out["_plogp"]))
    out["ratio"] = out["effective_tokens"] / out["n_tokens"]
    out["peak_ratio"] = np.where(zero, np.nan, out["_max"] * out["n_tokens"])
    out = out.drop(columns=["_sum", "_plogp", "_max"]).reset_index(drop=True)
    out["n_tokens"] = out["n_tokens"].astype(int)
    out = _text_classes(out)
    out.attrs["not_judged"] = not_judged
    return out


def records_spread(sample_ids: list[str], records: list[Any]) -> pd.DataFrame:
    """:func:`spread_table`'s rows straight from one batch's attention records (``value [B, C, T]`` over
    ``mask [B, T]``), without building the tidy rows: what :func:`untrained_null` takes per batch.
    Records normalised over the classes are left out (``attrs["not_judged"]``)."""
    import torch

    parts, not_judged = [], {}
    for r in records:
        if r.normalised_over != "tokens":
            not_judged[r.kind] = "weights not normalised over the sample's tokens (e.g. over the classes)"
            continue
        real = r.mask.bool()
        p = r.value.double() * real[:, None, :]
        total = p.sum(-1, keepdim=True)
        p = p / total.clamp_min(torch.finfo(torch.float64).tiny)
        plogp = torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)  # [B, C]
        n = real.sum(-1)[:, None].expand_as(plogp)
        zero = total[..., 0] == 0
        b_idx, c_idx = torch.nonzero(n > 0, as_tuple=True)  # a sample without tokens has no rows
        n_sel, z_sel = n[b_idx, c_idx].numpy(), zero[b_idx, c_idx].numpy()
        eff = np.where(z_sel, np.nan, torch.exp(-plogp[b_idx, c_idx]).numpy())
        classes = [None] if r.class_names is None else [str(c) for c in r.class_names]
        parts.append(pd.DataFrame({
            "sample_id": [str(sample_ids[i]) for i in b_idx.tolist()], "modality": r.modality, "kind": r.kind,
            "target_class": [classes[i] for i in c_idx.tolist()], "n_tokens": n_sel.astype(int),
            "effective_tokens": eff, "ratio": eff / n_sel,
            "peak_ratio": np.where(z_sel, np.nan, p.max(-1).values[b_idx, c_idx].numpy() * n_sel)}))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(SPREAD_COLUMNS[:8]))
    out = _text_classes(out)
    out.attrs["not_judged"] = not_judged
    return out


@dataclass(frozen=True)
class SpreadNull:
    """The spread of attention that learned nothing, to judge a report's spread against.

    Attributes:
        spread: :func:`spread_table` rows of the null (a ``draw`` column numbers the copies).
        method: what the null is (``"untrained"``, or the description given to :func:`null_from_report`).
        n_draws: how many null models the rows come from.
    """

    spread: pd.DataFrame
    method: str
    n_draws: int = 1

    def thresholds(self, quantile: float = NULL_QUANTILE) -> pd.DataFrame:
        """Per (modality, kind, target_class): the ``quantile`` of the null's ratios and how many there
        were (rows of more than one token with some weight)."""
        if not 0 < quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {quantile}")
        usable = self.spread[(self.spread["n_tokens"] >= 2) & self.spread["ratio"].notna()]
        grouped = usable.groupby(["modality", "kind", "target_class"], dropna=False, sort=False)["ratio"]
        limits = grouped.agg(threshold=lambda r: float(np.quantile(r, quantile)), n_null="size")
        return _text_classes(limits.reset_index())


def null_from_report(report: Any, *, method: str = "report", n_draws: int = 1) -> SpreadNull:
    """A null from the attention of a model that should say nothing, e.g. one refitted on permuted labels."""
    return SpreadNull(spread_table(report).assign(draw=0), method=method, n_draws=n_draws)


def untrained_copy(model: Any, *, seed: int = 0) -> Any:
    """A copy of fitted ``model`` whose network is freshly initialised (same configuration, encoders and
    preprocessor); ``model`` itself and the global random generators are left untouched."""
    import torch

    from ..build import build_network
    from ..rng import preserved_rng

    model._check_fitted()
    with preserved_rng():
        torch.manual_seed(int(seed))
        network = build_network(model.schema_, model.network_config_).eval()
    clone = copy.copy(model)  # shares the fitted preprocessor (read only); its own network attribute
    clone.network_ = network
    return clone


def untrained_null(model: Any, cohort: Any, *, n_draws: int | None = None, seed: int = 0,
                   batch_size: int | None = None) -> SpreadNull:
    """The spread of attention of ``cohort`` under ``n_draws`` freshly initialised copies of ``model``.

    ``n_draws=None``: :data:`NULL_DRAWS` (5) copies, more for a cohort under 4 samples (at least 20 null
    ratios per kind and class). Several copies, because how flat an untrained network's attention is
    varies from one initialisation to the next; one copy would make the null too narrow. Costs one
    network pass per copy over the cohort, which is read once; the spread comes straight from the records,
    batch by batch (memory stays flat over the cohort, no tidy rows are built).
    """
    import torch

    from ...datasets.loading import make_loader
    from ..hyperparameters import BATCH_SIZE

    n = len(cohort)
    draws = max(NULL_DRAWS, math.ceil(MIN_NULL_VALUES / max(n, 1))) if n_draws is None else int(n_draws)
    if draws < 1:
        raise ValueError(f"n_draws must be at least 1, got {n_draws}")
    networks = [untrained_copy(model, seed=seed + draw)._network_for_inference() for draw in range(draws)]
    model._check_cohort(cohort)
    size = int(batch_size or model.batch_size or BATCH_SIZE)
    loader = make_loader(cohort, model.preprocessor_, batch_size=size, shuffle=False, train=False)
    parts = []
    # the cohort is read once: every copy sees the same batch
    with warnings.catch_warnings(), torch.no_grad():  # the cohort's DataWarnings are the explain pass's
        warnings.simplefilter("ignore", DataWarning)
        for batch in loader:
            for draw, network in enumerate(networks):
                records = [r.detach() for r in network(batch.to(network_device(network))).records]
                parts.append(records_spread(batch.sample_ids, records).assign(draw=draw))
    return SpreadNull(pd.concat(parts, ignore_index=True), method="untrained", n_draws=draws)


def attention_spread(report: Any, *, null: SpreadNull | Any | None = None, quantile: float = NULL_QUANTILE,
                     fallback_ratio: float = FALLBACK_RATIO) -> pd.DataFrame:
    """Per sample, modality, kind and class: N, N_eff, their ratio, ``max(p) * N`` and the uniform flag.

    Args:
        report: an AttentionReport (or its tidy frame).
        null: a :class:`SpreadNull` (:func:`untrained_null`), or a report to use as one
            (:func:`null_from_report`); None: the fallback rule for every row.
        quantile: a row is uniform when its ratio is at least this quantile of the null's ratios.
        fallback_ratio: without a null (or without null rows for a kind / class), uniform when
            ``ratio >= fallback_ratio``.

    Returns columns :data:`SPREAD_COLUMNS`; ``uniform`` is a nullable boolean (NA for one-token and
    all-zero rows); ``attrs["not_judged"]`` names the kinds left out and why.
    """
    if not 0 < fallback_ratio <= 1:
        raise ValueError(f"fallback_ratio must be in (0, 1], got {fallback_ratio}")
    table = spread_table(report)
    table["threshold"] = float(fallback_ratio)
    table["rule"] = f"fallback: ratio >= {fallback_ratio:g}"
    if null is not None:
        null = null if isinstance(null, SpreadNull) else null_from_report(null)
        limits = null.thresholds(quantile)
        keyed = table.merge(limits, on=["modality", "kind", "target_class"], how="left")
        have = keyed["threshold_y"].notna().to_numpy()
        table.loc[have, "threshold"] = np.maximum(keyed.loc[have, "threshold_y"].to_numpy(), fallback_ratio)
        draws = f"{null.n_draws} draw{'s' if null.n_draws > 1 else ''}"
        table.loc[have, "rule"] = [f"null: ratio >= max(q{quantile:g} of {int(k)} {null.method} ratios "
                                   f"({draws}), {fallback_ratio:g})" for k in keyed.loc[have, "n_null"]]
        table.loc[~have, "rule"] = f"fallback (no {null.method} null rows): ratio >= {fallback_ratio:g}"
    # a hair of tolerance: a ratio computed from float32 weights equal to the null's (exactly uniform) ties
    uniform = pd.array(table["ratio"] >= table["threshold"] - _TIE, dtype="boolean")
    single, empty = table["n_tokens"] < 2, table["effective_tokens"].isna()
    uniform[(single | empty).to_numpy()] = pd.NA
    table["uniform"] = uniform
    table.loc[single, "rule"] = "one token: weight 1 whatever the model does"
    table.loc[empty & ~single, "rule"] = "every weight 0"
    return table[list(SPREAD_COLUMNS)]


def uniform_note(n_tokens: int, effective: float) -> str:
    """What a figure says of attention flagged uniform: ``≈ uniform (N_eff = 24.7 of 25)``."""
    return f"≈ uniform (N_eff = {effective:.1f} of {int(n_tokens)})"


def spread_summary(spread: pd.DataFrame) -> list[str]:
    """One line per kind (and modality, if a kind weighs several): how many samples are uniform, the median
    ratio, and how many samples could not be judged (one token, or no weight). A sample counts as uniform
    when every class of the kind is flagged."""
    lines = []
    for (kind, modality), rows in spread.groupby(["kind", "modality"], sort=False):
        judged = rows[rows["uniform"].notna()]
        per_sample = judged.groupby("sample_id", sort=False)["uniform"].all()
        where = "" if spread["kind"].eq(kind).sum() == len(rows) else f" ({modality})"
        null = judged["rule"].str.startswith("null")
        rule = "null rule" if null.all() else "fallback rule" if not null.any() else "null / fallback rules"
        line = (f"{kind}{where}: {int(per_sample.sum())} of {len(per_sample)} samples indistinguishable "
                f"from uniform ({rule}); median N_eff/N {judged['ratio'].median():.2f}")
        unjudged = rows["sample_id"].nunique() - len(per_sample)
        lines.append(line + (f"; {unjudged} sample(s) not judged (one token or no weight)" * bool(unjudged)))
    for kind, why in spread.attrs.get("not_judged", {}).items():
        lines.append(f"{kind}: not judged ({why})")
    return lines


def figure_notes(rows: pd.DataFrame, spread: pd.DataFrame | None = None) -> dict[tuple[str, str | None], str]:
    """(kind, target_class) -> :func:`uniform_note` for the attention in ``rows`` (one sample's tidy rows,
    what one figure draws) that is flagged uniform: by ``spread`` (an :func:`attention_spread` table, e.g.
    judged against a null) where it has the row, else by the fallback rule."""
    own = attention_spread(rows)
    if spread is not None and len(own):
        given = own[KEYS].merge(spread[list(SPREAD_COLUMNS)].drop_duplicates(KEYS), on=KEYS, how="left",
                                indicator=True)
        found = (given["_merge"] == "both").to_numpy()
        own = pd.concat([given.loc[found, list(SPREAD_COLUMNS)], own.loc[~found]], ignore_index=True)
    flagged = own[own["uniform"].fillna(False).astype(bool)]
    return {(str(r.kind), None if pd.isna(r.target_class) else str(r.target_class)):
            uniform_note(r.n_tokens, r.effective_tokens) for r in flagged.itertuples()}


def write_spread(model: Any, cohort: Any, report: Any, out: Any, *, csv: bool = False, null: bool = True
                 ) -> tuple[pd.DataFrame, list[str], list[str]]:
    """What the CLI writes: ``attention_spread.parquet`` (``.csv`` too with ``csv``) of ``report`` judged
    against :func:`untrained_null` of ``model`` on ``cohort`` (``null=False``: by the fallback rule, which
    skips the null's passes); returns (table, file names, summary lines)."""
    from ..commands import write_table

    spread = attention_spread(report, null=untrained_null(model, cohort) if null else None)
    files = write_table(spread, out, "attention_spread", csv=csv)
    return spread, files, spread_summary(spread)
