"""Scale-out through Lightning: ``FusionModel(strategy="ddp", devices=2, accelerator="cpu")`` trains in two
processes; the saved model then predicts in this one.

``ddp`` re-launches the calling script for rank 1, so the training runs in a small script started as a
subprocess (pytest itself cannot be re-launched).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
from clinfuse.datasets import make_synthetic_cohort
from clinfuse.fusion import FusionModel

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)
    from clinfuse.datasets import make_synthetic_cohort
    from clinfuse.fusion import FusionModel

    cohort, _ = make_synthetic_cohort(32, modalities=("clinical", "genomics"), n_genes=12, seed=3)
    model = FusionModel(aggregator="self_attention", d_model=16, n_heads=2, max_epochs=1, batch_size=4,
                        verbose=False, strategy="ddp", devices=2, accelerator="cpu", seed=0)
    model.fit(cohort)
    rank = int(torch.distributed.get_rank())
    # one file per rank: both processes share the parent's stdout, so printed lines can interleave
    with open(f"rank{rank}.txt", "w") as handle:
        handle.write(f"rank={rank} world={model.world_size_} global_zero={model.is_global_zero_} "
                     f"epochs={len(model.history_)}\\n")
    model.save(sys.argv[1])  # only rank 0 writes
""")


def test_ddp_on_two_cpu_processes_trains_and_the_saved_model_predicts(tmp_path):
    script = tmp_path / "train_ddp.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "model")], capture_output=True, text=True, check=False,
                            cwd=tmp_path, env=env, timeout=400)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (tmp_path / "rank0.txt").read_text().startswith("rank=0 world=2 global_zero=True epochs=1")
    assert (tmp_path / "rank1.txt").read_text().startswith("rank=1 world=2 global_zero=False epochs=1")
    assert not list(tmp_path.glob("lightning_logs")) and not list(tmp_path.glob("checkpoints"))
    model = FusionModel.load(tmp_path / "model")
    cohort, _ = make_synthetic_cohort(32, modalities=("clinical", "genomics"), n_genes=12, seed=3)
    proba = model.predict_proba(cohort)
    assert proba.shape == (32, 2) and np.allclose(proba.sum(axis=1), 1.0)
    assert model.score(cohort) > 0  # a real AUC, computed from the DDP-trained weights
