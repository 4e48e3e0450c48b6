"""Loaders of the real development cohorts, each returning a :class:`~clinfuse.datasets.Cohort`.

* :func:`load_gse7390`: GSE7390 (TRANSBIG) breast cancer, 198 patients: 4 clinical variables, 76 probes,
  time to distant metastasis (scikit-survival's ARFF file).
* :func:`load_mimic3_demo`: MIMIC-III Clinical Database Demo v1.4, one sample per admission (129), timestamped
  EHR events up to a prediction time, in-hospital death.
* :func:`load_breastmnist`: BreastMNIST (MedMNIST v2), 780 breast ultrasound images of 28 x 28 pixels,
  malignant vs normal/benign.
* :func:`load_mil_benchmark`: Fox, Tiger, Elephant (Andrews et al. 2002), the classic multiple-instance
  benchmarks: 200 bags of 230-dimensional image-segment features each, positive vs negative.

The package never ships these files: every loader takes the path to a local copy. Everything a loader
changes or leaves out is recorded in ``cohort.excluded`` (shown by ``cohort.summary()``).
"""

from .breastmnist import BREASTMNIST_CLASSES, BREASTMNIST_SPLITS, breastmnist_split_ids, load_breastmnist
from .gse7390 import load_gse7390
from .mil_benchmarks import MIL_BENCHMARKS, MIL_CLASSES, load_mil_benchmark
from .mimic import load_mimic3_demo

__all__ = [
    "BREASTMNIST_CLASSES",
    "BREASTMNIST_SPLITS",
    "MIL_BENCHMARKS",
    "MIL_CLASSES",
    "breastmnist_split_ids",
    "load_breastmnist",
    "load_gse7390",
    "load_mil_benchmark",
    "load_mimic3_demo",
]
