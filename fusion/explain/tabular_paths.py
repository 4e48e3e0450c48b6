"""The integrated-gradients paths of the clinical and genomic inputs (see :mod:`.attributions`).

Each ``*_path(network, batch, tokens, reference, task)`` returns ``build(alphas)``: for the nodes
``alphas [n]`` it runs the network on the path points and returns ``(outputs [n, C], leaves, deltas,
reduce)``, where ``reduce`` turns the per-leaf integrals into ``[C, K]``, one value per input (the
modality's token order: genes; numeric then categorical clinical columns).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...datasets.batch import Batch, ModalityBatch
from .gradients import EmbeddingPaths, expand_batch, expand_tokens, explained_outputs, outputs_from_tokens


def background_baseline(model: Any, background: Any, modality: str, *, neutral: bool
                        ) -> dict[str, torch.Tensor]:
    """The baseline inputs ``x'`` of ``modality``: the background's mean values (and most frequent codes),
    or the neutral values (0, the training mean of standardised values; code 0, "missing")."""
    from ...datasets.loading import make_loader

    schema = model.preprocessor_.schema_[modality]
    if neutral:
        if modality == "genomics":
            return {"values": torch.zeros(len(schema["genes"]))}
        return {"numeric": torch.zeros(len(schema["numeric"])),
                "categorical": torch.zeros(len(schema["categorical"]), dtype=torch.long)}
    ids = [s for s in background.sample_ids if background.has(s, modality)]
    if not ids:
        raise ValueError(f"attributions: the background cohort has no sample with {modality!r} data "
                         "(its mean is the baseline); pass another background or baseline='neutral'")
    rows = [batch.modalities[modality].tensors
            for batch in make_loader(background.subset(ids), model.preprocessor_, batch_size=64)]
    if modality == "genomics":
        return {"values": torch.cat([r["values"] for r in rows]).float().mean(0)}
    numeric = torch.cat([r["numeric"] for r in rows]).float()
    observed = ~torch.cat([r["numeric_missing"] for r in rows])
    mean = (numeric * observed).sum(0) / observed.sum(0).clamp_min(1)  # a never-observed column: 0
    codes = torch.cat([r["categorical"] for r in rows])
    mode = codes.mode(dim=0).values if codes.shape[1] else codes.new_zeros(0)
    return {"numeric": mean, "categorical": mode}


def _with(batch: Batch, modality: str, tensors: dict[str, torch.Tensor]) -> Batch:
    mb = batch.modalities[modality]
    mods = dict(batch.modalities)
    mods[modality] = ModalityBatch(mb.modality, mb.mask, mb.present, {**mb.tensors, **tensors}, mb.names,
                                   mb.meta)
    return Batch(batch.sample_ids, batch.patient_ids, mods)


def _run(network: nn.Module, big: Batch, tokens: dict, modality: str, task: str) -> torch.Tensor:
    n = len(big.sample_ids) // len(next(iter(tokens.values())).values)  # path points per sample
    toks = {m: expand_tokens(t, n) for m, t in tokens.items() if m != modality}
    toks[modality] = network.encoders[modality](big.modalities[modality])
    toks = {m: toks[m] for m in tokens}  # the network's modality order
    return explained_outputs(task, outputs_from_tokens(network, toks, big))


def genomics_path(network: nn.Module, batch: Batch, tokens: dict, reference: dict, task: str) -> Callable:
    """Gene values on the line from the baseline's to the sample's."""
    x = batch.modalities["genomics"].tensors["values"].float()  # [B, G]
    b = reference["values"].to(x.dtype)

    def build(alphas: torch.Tensor):
        n, rows = len(alphas), len(x)
        a = alphas.repeat(rows)[:, None]
        leaf = (b + a * (x.repeat_interleave(n, 0) - b)).requires_grad_(True)  # [B * n, G]
        big = _with(expand_batch(batch, n), "genomics", {"values": leaf})
        out = _run(network, big, tokens, "genomics", task)
        return out, [leaf], [x - b], lambda parts: parts[0]

    return build


def _embeddings(network: nn.Module) -> list[tuple[str, nn.Embedding]]:
    """The embedding tables that read clinical codes: the clinical encoder's and the wide term's."""
    found = [("encoder", m) for m in network.encoders["clinical"].modules() if isinstance(m, nn.Embedding)]
    wide = getattr(network, "wide", None)
    if wide is not None:
        found += [("wide", m) for m in wide.categorical]
    return found


def clinical_path(network: nn.Module, batch: Batch, tokens: dict, reference: dict, task: str) -> Callable:
    """Numeric values on the line from the baseline's (the sample's missing values stay missing); codes
    at the embedding level (:class:`~.gradients.EmbeddingPaths`, whose baseline rows come from one
    lookup pass over the baseline codes)."""
    t = batch.modalities["clinical"].tensors
    x, missing, codes = t["numeric"].float(), t["numeric_missing"], t["categorical"]  # [B, Kn], [B, Kc]
    b = torch.where(missing, x, reference["numeric"].to(x.dtype))  # missing: no path, delta 0
    b_codes = reference["categorical"].to(codes.dtype)
    rows, kc = len(x), codes.shape[1]
    tables = _embeddings(network)
    mb = batch.modalities["clinical"]
    one = ModalityBatch("clinical", mb.mask[:1], mb.present[:1],
                        {**{k: v[:1] for k, v in mb.tensors.items()}, "categorical": b_codes[None]},
                        mb.names[:1], {})
    base = Batch(batch.sample_ids[:1], batch.patient_ids[:1], {"clinical": one})

    def lookups() -> None:  # every module that looks clinical codes up, in the network's order
        network.encoders["clinical"](one)
        if network.wide is not None:
            network.wide(base)

    def build(alphas: torch.Tensor):
        n = len(alphas)
        paths = EmbeddingPaths(tables, alphas, rows)
        paths.record(lookups)
        a = alphas.repeat(rows)[:, None]
        x_rep, b_rep = x.repeat_interleave(n, 0), b.repeat_interleave(n, 0)
        leaf = (b_rep + a * (x_rep - b_rep)).requires_grad_(True)  # [B * n, Kn]
        big = _with(expand_batch(batch, n), "clinical", {"numeric": leaf})
        with paths:
            out = _run(network, big, tokens, "clinical", task)
        calls = [c for c in paths.calls if c[1] is not None]

        def reduce(parts: list[torch.Tensor]) -> torch.Tensor:
            per_column = parts[0].new_zeros(*parts[0].shape[:2], kc)  # [C, B, Kc]
            seen: dict[str, int] = {}
            for (owner, _, delta), part in zip(calls, parts[1:]):
                part = part.sum(-1)  # [C, B, *index shape]: summed over the embedding width
                if tuple(part.shape[2:]) == (kc,):
                    per_column = per_column + part
                elif part.dim() == 2:  # one column per call (a table per column), in column order
                    j = seen.get(owner, 0)
                    seen[owner] = j + 1
                    per_column[:, :, j % max(kc, 1)] += part
                elif bool(delta.ne(0).any()):
                    raise ValueError("attributions: the clinical encoder looks codes up in a layout "
                                     f"({tuple(part.shape[2:])}) that is not one row per categorical column; "
                                     "use method='permutation'")
            return torch.cat([parts[0], per_column], dim=2)  # [C, B, Kn + Kc]

        return out, [leaf, *(leaf_e for _, leaf_e, _ in calls)], [x - b, *(d for _, _, d in calls)], reduce

    return build
