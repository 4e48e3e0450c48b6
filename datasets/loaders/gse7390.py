"""GSE7390 (TRANSBIG) breast cancer: clinical variables, 76 probes, time to distant metastasis."""

from __future__ import annotations

import os

import anndata as ad
import numpy as np
import pandas as pd

from ..cohort import Cohort
from ._common import note, resolve

_GSE7390_FILE = "breast_cancer_GSE7390-metastasis.arff"


def load_gse7390(path: str | os.PathLike) -> Cohort:
    """GSE7390 breast cancer: clinical + 76 probe expression values + time to distant metastasis.

    Args:
        path: ``breast_cancer_GSE7390-metastasis.arff`` (as shipped by scikit-survival) or its folder.

    Returns:
        A survival cohort of 198 samples ``GSE7390_001`` .. ``GSE7390_198`` (row order of the file; the
        file has no sample ids) with

        * ``clinical``: ``age`` (years), ``size`` (tumour size, cm) numeric; ``grade`` ("well
            differentiated", "intermediate", "poorly differentiated") and ``er`` ("negative", "positive")
            categorical. The file's grade level "unkown" (sic) becomes NaN, recorded in ``excluded``.
        * ``genomics``: AnnData ``[198, 76]`` of the expression values as given; ``var_names`` are the
            Affymetrix probe ids with the ``X`` prefix that R's ``make.names`` added removed
            (``X219340_s_at`` -> ``219340_s_at``); the original column names are in ``var["column"]``.
        * ``survival``: ``time`` = ``t.tdm`` (days), ``event`` = ``e.tdm`` (1 = distant metastasis;
            51 events).
    """
    from scipy.io import arff

    file = resolve(path, _GSE7390_FILE, "load_gse7390")
    data, _meta = arff.loadarff(file)
    df = pd.DataFrame(data)
    expected = {"age", "size", "grade", "er", "t.tdm", "e.tdm"}
    if not expected <= set(df.columns):
        raise ValueError(f"load_gse7390: {str(file)!r} lacks column(s) {sorted(expected - set(df.columns))}")
    for col in df.select_dtypes(include="object").columns:  # nominal ARFF attributes arrive as bytes
        df[col] = df[col].str.decode("utf-8")
    ids = [f"GSE7390_{i + 1:03d}" for i in range(len(df))]
    df.index = pd.Index(ids, name="sample_id")

    excluded = []
    unknown_grade = df["grade"] == "unkown"
    clinical = df[["age", "size", "grade", "er"]].copy()
    clinical["grade"] = clinical["grade"].where(~unknown_grade)
    if unknown_grade.any():
        excluded.append(
            note(
                "grade 'unkown' set to missing",
                "clinical",
                int(unknown_grade.sum()),
                "the file codes an unknown grade as the level 'unkown'; it is a missing value, "
                "not a category",
            )
        )

    probes = [c for c in df.columns if c not in expected]
    genomics = ad.AnnData(
        X=df[probes].to_numpy(dtype=np.float32),
        obs=pd.DataFrame(index=df.index.copy()),
        var=pd.DataFrame(
            {"column": probes},
            index=pd.Index([c.removeprefix("X") for c in probes], name="probe"),
        ),
    )
    survival = pd.DataFrame(
        {"time": df["t.tdm"].astype(float), "event": df["e.tdm"].astype(int)}, index=df.index.copy()
    )
    cohort = Cohort(
        clinical=clinical,
        genomics=genomics,
        survival=survival,
        clinical_types={"age": "numeric", "size": "numeric", "grade": "categorical", "er": "categorical"},
        name="GSE7390",
    )
    cohort.excluded.extend(excluded)
    return cohort
