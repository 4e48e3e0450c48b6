"""clinfuse.datasets: the Cohort, modality containers, preprocessing, batching, loaders, synthetic cohorts."""

from .batch import MODALITIES, TOKEN_KIND, Batch, ModalityBatch
from .cohort import Cohort
from .images import ImageBag, ImageBags

__all__ = ["MODALITIES", "TOKEN_KIND", "Batch", "ModalityBatch", "Cohort", "ImageBags", "ImageBag"]
