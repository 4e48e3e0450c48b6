"""Scale-out through Lightning: ``FusionModel(strategy="ddp", devices=2, accelerator="cpu")`` trains in two
processes; the saved model then predicts in this one, and scores clearly above chance on held-out samples.

``ddp`` re-launches the calling script for rank 1, so the training runs in a small script started as a
subprocess (pytest itself cannot be re-launched). The script builds its cohort with ``easy_cohort`` of this
file, so the test scores the very samples the training held out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from clinfuse.datasets import Cohort, make_synthetic_cohort, train_validation_split
from clinfuse.fusion import FusionModel

SEED = 0
EPOCHS = 15

SCRIPT = textwrap.dedent("""
    import importlib.util
    import sys
    import torch
    torch.set_num_threads(1)
    from clinfuse.fusion import FusionModel

    spec = importlib.util.spec_from_file_location("ddp_test", sys.argv[2])
    test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test)
    train, _ = test.easy_cohort()
    model = FusionModel(aggregator="self_attention", d_model=16, n_heads=2, max_epochs=test.EPOCHS, lr=3e-3,
                        batch_size=8, early_stopping_patience=None, validation_fraction=0.0, verbose=False,
                        strategy="ddp", devices=2, accelerator="cpu", seed=test.SEED)
    model.fit(train)
    rank = int(torch.distributed.get_rank())
    # one file per rank: both processes share the parent's stdout, so printed lines can interleave
    with open(f"rank{rank}.txt", "w") as handle:
        handle.write(f"rank={rank} world={model.world_size_} global_zero={model.is_global_zero_} "
                     f"epochs={len(model.history_)}\\n")
    model.save(sys.argv[1])  # only rank 0 writes
""")


def easy_cohort(seed: int = SEED) -> tuple[Cohort, Cohort]:
    """``(train, held_out)``: 160 synthetic samples (clinical + genomics, none missing) whose label is
    ``biomarker_level`` above its mean of 50, so a model that learned anything scores near 1."""
    synthetic, _ = make_synthetic_cohort(160, modalities=("clinical", "genomics"), n_genes=12,
                                         missing_rate=0.0, seed=seed)
    labels = (synthetic.clinical["biomarker_level"] > 50.0).astype(np.int64).rename("label")
    cohort = Cohort(clinical=synthetic.clinical, clinical_types=synthetic.clinical_types,
                    genomics=synthetic.genomics, labels=labels)
    train_ids, test_ids = train_validation_split(cohort, fraction=0.3, seed=seed)
    return cohort.subset(train_ids), cohort.subset(test_ids)


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_and_the_saved_model_predicts(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(script), str(tmp_path / "model"), str(Path(__file__).resolve())]
    result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp_path, env=env,
                            timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    rank0, rank1 = ((tmp_path / f"rank{r}.txt").read_text() for r in (0, 1))
    assert rank0.startswith(f"rank=0 world=2 global_zero=True epochs={EPOCHS}")
    assert rank1.startswith(f"rank=1 world=2 global_zero=False epochs={EPOCHS}")
    assert not list(tmp_path.glob("lightning_logs")) and not list(tmp_path.glob("checkpoints"))
    model = FusionModel.load(tmp_path / "model")
    _, held_out = easy_cohort()
    proba = model.predict_proba(held_out)
    assert proba.shape == (len(held_out), 2) and np.allclose(proba.sum(axis=1), 1.0)
    auc = model.score(held_out)  # from the DDP-trained weights, on samples the training never saw
    assert auc > 0.8, f"held-out AUC {auc:.3f}: the DDP-trained model did not learn an easy outcome"
