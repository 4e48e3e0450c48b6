"""Where attention and attribution agree: per sample, the rank correlation between them over the same tokens.

Attention is not attribution; this comparison shows users where the two disagree. The tokens must be the
same on both sides: clinical variables, genes, events, patches. When the genomics encoder's tokens are
gene *sets* (attention on sets) and the attributions are on genes (the inputs), each set gets the sum of
|attribution| of its member genes, with the model's own set definition (the gene-set encoder's members:
the schema's sets restricted to the kept genes), and the correlation is over sets.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...datasets.batch import TOKEN_KIND
from .report import AttentionReport

ATTRIBUTION_KINDS = ("shap", "attribution")


def model_gene_sets(model: Any) -> dict[str, list[str]] | None:
    """The fitted model's gene sets as its genomics encoder uses them (set -> member genes among the kept
    genes), or None when its genomics tokens are genes (or it has no genomics)."""
    encoders = getattr(getattr(model, "network_", None), "encoders", None)
    encoder = encoders["genomics"] if encoders is not None and "genomics" in encoders else None
    if encoder is None or not getattr(encoder, "use_gene_sets", False):
        return None
    return {str(s): [str(g) for g in genes] for s, genes in encoder.member_genes.items()}


def genes_to_sets(gene_values: pd.Series, gene_sets: Mapping[str, Sequence[str]]) -> pd.Series:
    """``(sample_id, gene) -> value`` summed per ``(sample_id, set)`` over each set's member genes (a gene
    in several sets counts in each); sets with no member among the genes are left out."""
    members = pd.DataFrame([(s, str(g)) for s, genes in gene_sets.items() for g in genes],
                           columns=["set", "token"])
    frame = gene_values.rename("value").reset_index().merge(members, on="token", how="inner")
    return frame.groupby(["sample_id", "set"], sort=False)["value"].sum().rename_axis(["sample_id", "token"])


def attention_attribution_agreement(attention: AttentionReport, attribution: AttentionReport, *,
                                    kind: str | None = None,
                                    gene_sets: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Per sample: Spearman correlation between attention and |attribution| over the same tokens.

    Args:
        attention: a report with the attention kind ``kind``.
        attribution: a report of kind ``shap`` or ``attribution`` over one modality (``shap_values``,
            ``attributions``).
        kind: the attention kind (default: the modality's token kind: ``feature``, ``gene``, ``event``,
            ``patch``).
        gene_sets: set -> genes, to compare attention on sets with attributions on genes (default: the
            sets the attribution report recorded from its model, ``attribution.gene_sets``).

    |attribution| is averaged over classes (attention too). Returns columns ``sample_id, n_tokens,
    spearman`` (NaN where either side is constant over the tokens); ``frame.attrs["tokens"]`` says
    ``"gene sets"`` when genes were mapped to sets, else ``"tokens"``; ``frame.attrs["left_out"]`` lists
    the samples found on one side only (not compared; a ``UserWarning`` names them).

    Raises:
        ValueError: when the two reports share no token of any sample (saying what each side has).
    """
    from scipy.stats import spearmanr

    present = [k for k in ATTRIBUTION_KINDS if k in attribution.kinds]
    if not present:
        raise ValueError(f"the attribution report has no rows of kind {ATTRIBUTION_KINDS} "
                         f"(its kinds: {attribution.kinds})")
    rows = attribution.to_frame(kinds=present)
    modalities = rows["modality"].unique().tolist()
    if len(modalities) != 1:
        raise ValueError(f"the attribution report must cover one modality, it covers {modalities}")
    modality = modalities[0]
    kind = kind or TOKEN_KIND[modality]
    att = attention.to_frame(kinds=[kind])
    att = att[att["modality"] == modality]
    if att.empty:
        raise ValueError(f"the attention report has no {kind!r} rows for modality {modality!r}")
    att = att.groupby(["sample_id", "token"], sort=False)["value"].mean()
    mag = rows.assign(value=rows["value"].abs()).groupby(["sample_id", "token"], sort=False)["value"].mean()
    level = "tokens"
    att_tokens = set(att.index.get_level_values("token"))
    sets = gene_sets if gene_sets is not None else getattr(attribution, "gene_sets", None)
    if modality == "genomics" and sets and not att_tokens & set(mag.index.get_level_values("token")):
        mag, level = genes_to_sets(mag, sets), "gene sets"
    joined = pd.concat([att.rename("attention"), mag.rename("attribution")], axis=1, join="inner")
    if joined.empty:
        a, b = sorted(att_tokens)[:3], sorted(set(mag.index.get_level_values("token")))[:3]
        hint = ("; attention is on gene sets and the attributions on genes: pass gene_sets= (set -> genes) "
                "or compute the attributions with shap_values / attributions, which record the model's sets"
                if modality == "genomics" and not sets else "")
        raise ValueError(f"attention ({kind!r}) and attribution share no {modality} token of any sample: "
                         f"attention tokens look like {a}, attribution tokens like {b}{hint}")
    # samples (or tokens) on one side only are not compared: say which, never drop them silently
    att_ids = set(att.index.get_level_values("sample_id"))
    mag_ids = set(mag.index.get_level_values("sample_id"))
    left_out = {"attention_only": sorted(att_ids - mag_ids), "attribution_only": sorted(mag_ids - att_ids)}
    sides = [f"{len(ids)} sample(s) have {have} but no {lack} (e.g. {ids[:3]})"
             for ids, have, lack in ((left_out["attention_only"], "attention", "attribution"),
                                     (left_out["attribution_only"], "attribution", "attention")) if ids]
    if sides:
        warnings.warn(f"attention/attribution agreement ({modality}): {'; '.join(sides)}; they are left out "
                      "(frame.attrs['left_out'])", UserWarning, stacklevel=2)
    out = []
    for sample, part in joined.reset_index().groupby("sample_id", sort=False):
        constant = part["attention"].nunique() < 2 or part["attribution"].nunique() < 2
        rho = np.nan if constant else float(spearmanr(part["attention"], part["attribution"]).statistic)
        out.append({"sample_id": sample, "n_tokens": len(part), "spearman": rho})
    frame = pd.DataFrame(out, columns=["sample_id", "n_tokens", "spearman"])
    frame.attrs["tokens"] = level
    frame.attrs["left_out"] = left_out
    return frame
