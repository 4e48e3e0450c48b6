"""Prediction on the model's ``accelerator`` (``clinfuse.fusion.inference_device``), checked on the CPU:
the device resolution, that every batch and the network go to the resolved device, and the errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from clinfuse.datasets.batch import Batch
from clinfuse.fusion import inference_device as D


def test_device_resolution(monkeypatch):
    assert D.inference_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.inference_device("auto") == torch.device("cpu")  # no CUDA: auto falls back to the CPU
    with pytest.raises(ValueError, match="accelerator='cuda' but CUDA is not available"):
        D.inference_device("cuda")
    with pytest.raises(ValueError, match="accelerator='gpu' but CUDA is not available"):
        D.inference_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.inference_device("auto") == torch.device("cuda")
    assert D.inference_device("gpu", [1, 2]) == torch.device("cuda", 1)  # the first of the listed GPUs
    assert D.inference_device("cuda", 2) == torch.device("cuda")


def test_predictions_and_explain_run_on_the_resolved_device(fitted_classifier, monkeypatch):
    model = copy.copy(fitted_classifier.model).set_params(accelerator="auto", devices=[0])
    asked, moved, seen = [], [], []
    cpu, to = torch.device("cpu"), Batch.to
    monkeypatch.setattr(D, "inference_device", lambda acc, dev: asked.append((acc, dev)) or cpu)
    monkeypatch.setattr(Batch, "to", lambda self, dev: moved.append(torch.device(dev)) or to(self, dev))
    hook = model.network_.register_forward_pre_hook(lambda net, args: seen.append(len(args[0])))
    try:
        proba = model.predict_proba(fitted_classifier.test)
        report = model.explain(fitted_classifier.test)
    finally:
        hook.remove()
    assert asked == [("auto", [0]), ("auto", [0])]
    assert moved == [torch.device("cpu")] * len(seen) and sum(seen) == 2 * len(fitted_classifier.test)
    assert isinstance(proba.to_numpy(), np.ndarray) and len(report.frame) > 0
    assert next(model.network_.parameters()).device == torch.device("cpu")  # back on the CPU afterwards
    reference = fitted_classifier.model.predict_proba(fitted_classifier.test)
    assert np.allclose(proba.to_numpy(), reference.to_numpy())


def test_an_explicit_gpu_without_cuda_raises_at_predict(fitted_classifier, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = copy.copy(fitted_classifier.model).set_params(accelerator="cuda")
    with pytest.raises(ValueError, match="set_params\\(accelerator='cpu'\\)"):
        model.predict_proba(fitted_classifier.test)
    with pytest.raises(ValueError, match="CUDA is not available"):
        model.explain(fitted_classifier.test)
