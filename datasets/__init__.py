"""clinfuse.datasets: the Cohort, the modality registry, preprocessing, batching, loaders, synthetic
cohorts."""

from .batch import MODALITIES, TOKEN_KIND, Batch, ModalityBatch
from .cohort import Cohort
from .images import ImageBag, ImageBags, slide_embeddings
from .loaders import (
    breastmnist_split_ids,
    load_breastmnist,
    load_gse7390,
    load_mil_benchmark,
    load_mimic3_demo,
)
from .loading import CohortDataset, collate_samples, make_loader
from .modalities import MODALITY_REGISTRY, Modality, ModalityPreprocessor, get_modality, register_modality
from .preprocess import Preprocessor
from .splits import make_splits, train_validation_split
from .synthetic import SyntheticTruth, make_synthetic_cohort

__all__ = ["MODALITIES", "TOKEN_KIND", "Batch", "Cohort", "ImageBag", "ImageBags", "ModalityBatch"]
__all__ += ["CohortDataset", "Preprocessor", "collate_samples", "make_loader", "make_splits",
            "train_validation_split"]
__all__ += ["SyntheticTruth", "make_synthetic_cohort", "slide_embeddings"]
__all__ += ["MODALITY_REGISTRY", "Modality", "ModalityPreprocessor", "get_modality", "register_modality"]
__all__ += ["breastmnist_split_ids", "load_breastmnist", "load_gse7390", "load_mil_benchmark",
            "load_mimic3_demo"]
