"""clinfuse.datasets: the Cohort, modality containers, preprocessing, batching, loaders, synthetic cohorts."""

from .batch import MODALITIES, TOKEN_KIND, Batch, ModalityBatch
from .cohort import Cohort
from .images import ImageBag, ImageBags
from .loading import CohortDataset, collate_samples, make_loader
from .preprocess import Preprocessor
from .splits import make_splits, train_validation_split

__all__ = ["MODALITIES", "TOKEN_KIND", "Batch", "ModalityBatch", "Cohort", "ImageBags", "ImageBag"]
__all__ += ["CohortDataset", "Preprocessor", "collate_samples", "make_loader", "make_splits", "train_validation_split"]
