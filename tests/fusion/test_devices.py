"""The library on another device and in mixed precision: bfloat16 autocast on the CPU (runs here), and the
CUDA tests, which skip with the reason when torch sees no GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason=f"no CUDA device visible to torch {torch.__version__} "
                                                 f"(CUDA build: {torch.version.cuda})")
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _on(model, device: str):
    """Explain/predict with the fitted network on ``device`` (the paths follow the network's device)."""
    net = model.network_.to(device).eval()
    model._network_for_inference = lambda: net
    return model


@pytest.mark.slow
def test_bf16_autocast_runs_on_the_cpu_and_matches_fp32(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    fp32 = model.predict_proba(test).to_numpy()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        batch = next(iter(model.iter_attention(test)))[0]
        tokens = model.network_.encode(batch)
        bf16 = model.predict_proba(test).to_numpy()
        report = model.explain(test, contributions=True)
    # the patch projection really computed in bfloat16 (autocast was not a no-op) ...
    assert tokens["images"].values.dtype == torch.bfloat16
    assert not np.array_equal(bf16, fp32)
    # ... and the predictions stay close to fp32 (bf16 keeps ~3 significant digits)
    np.testing.assert_allclose(bf16, fp32, atol=3e-2)
    frame = report.to_frame()
    assert np.isfinite(frame["value"]).all() and frame["value"].dtype == np.float64
    sums = frame[frame["kind"] == "patch"].groupby("sample_id")["value"].sum()
    np.testing.assert_allclose(sums, 1.0, atol=2e-2)  # weights still sum to 1 per sample
    assert (frame["kind"] == "modality_contribution").any()


def test_benchmark_device_options_parse_and_autocast(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("common", None)
    import common

    parser = common.add_device_args(__import__("argparse").ArgumentParser())
    args = parser.parse_args(["--autocast", "bf16"])
    assert args.device == "cpu" and common.accelerator_of(args) == "cpu"
    with common.autocast(args):
        out = torch.nn.Linear(4, 3)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    assert common.device_info(args)["autocast"] == "bfloat16"
    plain = parser.parse_args([])
    with common.autocast(plain):
        assert torch.nn.Linear(4, 3)(torch.randn(2, 4)).dtype == torch.float32
    if not CUDA:
        with pytest.raises(SystemExit, match="no CUDA device"):
            common.device_of(parser.parse_args(["--device", "cuda"]))


@needs_cuda
def test_fit_predict_explain_on_cuda(fitted_classifier):
    from clinfuse.fusion import FusionModel

    params = {k: v for k, v in fitted_classifier.model.get_params().items() if k != "accelerator"}
    cuda = FusionModel(**params, accelerator="gpu").fit(fitted_classifier.train)
    test = fitted_classifier.test
    cpu_proba = cuda.predict_proba(test).to_numpy()
    cpu_report = cuda.explain(test, contributions=True).to_frame()
    _on(cuda, "cuda")
    assert next(cuda._network_for_inference().parameters()).is_cuda
    np.testing.assert_allclose(cuda.predict_proba(test).to_numpy(), cpu_proba, atol=1e-4)
    gpu_report = cuda.explain(test, contributions=True).to_frame()
    assert len(gpu_report) == len(cpu_report)
    np.testing.assert_allclose(gpu_report["value"], cpu_report["value"], atol=1e-4)


@needs_cuda
def test_bf16_autocast_on_cuda_matches_fp32(fitted_classifier):
    model, test = fitted_classifier.model, fitted_classifier.test
    fp32 = model.predict_proba(test).to_numpy()
    _on(model, "cuda")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model.predict_proba(test).to_numpy()
            report = model.explain(test)
        np.testing.assert_allclose(bf16, fp32, atol=3e-2)
        assert np.isfinite(report.to_frame()["value"]).all()
    finally:
        del model._network_for_inference
        model.network_.cpu()
