"""clinfuse.datasets: the Cohort, modality containers, preprocessing, batching, loaders, synthetic cohorts."""

from .batch import MODALITIES, TOKEN_KIND, Batch, ModalityBatch

__all__ = ["MODALITIES", "TOKEN_KIND", "Batch", "ModalityBatch"]
