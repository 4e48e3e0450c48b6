"""Task heads and losses, checked against hand computations and lifelines."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from clinfuse.fusion import (
    ClassificationHead,
    CoxHead,
    DiscreteTimeHead,
    classification_loss,
    cox_partial_nll,
    discrete_time_nll,
    hazards_to_survival,
    make_time_bins,
    risk_from_survival,
)

# ------------------------------------------------------------------------------------------------ heads


@pytest.mark.parametrize("make, n_out", [
    (lambda: ClassificationHead(d_model=8, n_classes=3), 3),
    (lambda: DiscreteTimeHead(d_model=8, n_bins=4), 4),
    (lambda: CoxHead(d_model=8), 1),
])
def test_heads_accept_pooled_and_per_class_inputs(make, n_out):
    torch.manual_seed(0)
    head = make().eval()
    pooled = torch.randn(5, 8)
    out = head(pooled)
    assert out.shape == ((5,) if n_out == 1 else (5, n_out))
    # per-class input with every class vector equal to the pooled one gives the same scores
    same = head(pooled.unsqueeze(1).expand(5, n_out, 8))
    torch.testing.assert_close(same, out)
    # class c is scored from its own vector only
    per_class = torch.randn(5, n_out, 8)
    base = head(per_class)
    changed = per_class.clone()
    changed[:, 0, 0] += 1.0
    moved = head(changed)
    if n_out > 1:
        torch.testing.assert_close(moved[:, 1:], base[:, 1:])
    assert not torch.allclose(moved.reshape(5, -1)[:, 0], base.reshape(5, -1)[:, 0])
    out.sum().backward()


@pytest.mark.parametrize("make, n_out", [
    (lambda: ClassificationHead(d_model=8, n_classes=3), 3),
    (lambda: DiscreteTimeHead(d_model=8, n_bins=4), 4),
    (lambda: CoxHead(d_model=8), 1),
])
@pytest.mark.parametrize("per_class", [False, True])
def test_part_scores_split_the_scores_exactly(make, n_out, per_class):
    """Parts that sum to the pooled vector get shares that sum to the score minus b_c + w_c . beta."""
    torch.manual_seed(1)
    head = make().eval()
    with torch.no_grad():
        head.body[0].weight.normal_()  # a non-trivial LayerNorm affine
        head.body[0].bias.normal_()
    shape = (5, n_out, 8) if per_class else (5, 8)
    parts = {"a": torch.randn(shape), "b": torch.randn(shape) * 3, "c": torch.randn(shape) + 2}
    pooled = sum(parts.values())
    shares = head.part_scores(pooled, parts)
    assert set(shares) == set(parts) and all(v.shape == (5, n_out) for v in shares.values())
    constant = head.score.bias + head.score.weight @ head.body[0].bias  # [C]
    torch.testing.assert_close(sum(shares.values()) + constant, head.scores(pooled), atol=1e-5, rtol=1e-5)
    size = {} if n_out == 1 else {"n_classes" if isinstance(head, ClassificationHead) else "n_bins": n_out}
    hidden = type(head)(d_model=8, hidden=4, **size)
    assert hidden.part_scores(pooled, parts) is None  # no exact split through a hidden layer


def test_heads_with_hidden_layer_and_bad_arguments():
    head = ClassificationHead(d_model=8, n_classes=2, hidden=16, dropout=0.2)
    assert head(torch.randn(3, 8)).shape == (3, 2)
    with pytest.raises(ValueError, match="n_classes"):
        ClassificationHead(d_model=8, n_classes=1)
    with pytest.raises(ValueError, match="n_bins"):
        DiscreteTimeHead(d_model=8, n_bins=0)
    with pytest.raises(ValueError, match="d_model"):
        CoxHead(d_model=0)
    with pytest.raises(ValueError, match="dropout"):
        CoxHead(d_model=4, dropout=1.5)
    with pytest.raises(ValueError, match=r"\[B, 8\]"):
        ClassificationHead(d_model=8, n_classes=2)(torch.randn(3, 7))
    with pytest.raises(ValueError, match="one per output"):
        CoxHead(d_model=8)(torch.randn(3, 2, 8))
    with pytest.raises(TypeError):
        CoxHead(d_model=8)(np.zeros((3, 8)))


# --------------------------------------------------------------------------------------------- classification


def test_classification_loss_multiclass_with_class_weights_by_hand():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 1.0, 3.0]])
    labels = torch.tensor([0, 1, 2])
    w = [1.0, 2.0, 0.5]
    nll = [-(logits[i, labels[i]] - torch.logsumexp(logits[i], 0)).item() for i in range(3)]
    expected = sum(w[y] * n for y, n in zip(labels.tolist(), nll)) / sum(w[y] for y in labels.tolist())
    assert classification_loss(logits, labels, class_weights=w).item() == pytest.approx(expected, rel=1e-6)
    assert classification_loss(logits, labels).item() == pytest.approx(sum(nll) / 3, rel=1e-6)


def test_classification_loss_single_binary_logit_by_hand():
    logits = torch.tensor([1.5, -0.5, 0.2])
    labels = torch.tensor([1, 0, 0])
    p = torch.sigmoid(logits)
    per = [-math.log(p[0]), -math.log(1 - p[1]), -math.log(1 - p[2])]
    assert classification_loss(logits, labels).item() == pytest.approx(sum(per) / 3, rel=1e-6)
    w = [1.0, 3.0]
    expected = (w[1] * per[0] + w[0] * per[1] + w[0] * per[2]) / (w[1] + 2 * w[0])
    loss = classification_loss(logits[:, None], labels, class_weights=w)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_classification_loss_bad_input():
    with pytest.raises(ValueError, match="class indices"):
        classification_loss(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="class_weights"):
        classification_loss(torch.zeros(2, 3), torch.tensor([0, 1]), class_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="labels"):
        classification_loss(torch.zeros(2, 3), torch.tensor([0, 1, 1]))


# ---------------------------------------------------------------------------------------------- discrete time


def test_make_time_bins_uses_event_time_quantiles_only():
    time = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0, 200.0])
    event = np.array([1, 1, 1, 1, 1, 1, 0, 0])
    edges = make_time_bins(time, event, 3)
    assert edges[0] == 0 and edges[-1] == 200.0 and len(edges) == 4  # the last bin ends at follow-up end
    np.testing.assert_allclose(edges[1:-1], np.quantile([1, 2, 3, 4, 5, 6], [1 / 3, 2 / 3]))
    # tied event times fall back to quantiles of the distinct times: still strictly increasing
    tied = make_time_bins([1, 1, 1, 1, 1, 2, 3], [1, 1, 1, 1, 1, 1, 1], 3)
    assert np.all(np.diff(tied) > 0)
    with pytest.raises(ValueError, match="distinct event times"):
        make_time_bins([1, 2, 3], [1, 1, 0], 3)
    with pytest.raises(ValueError, match="> 0"):
        make_time_bins([0.0, 2.0], [1, 1], 1)


def test_discrete_time_nll_by_hand():
    logits = torch.tensor([[0.3, -0.2, 0.1], [1.0, 0.0, -1.0]])
    edges = [0.0, 10.0, 20.0, math.inf]
    time = torch.tensor([15.0, 25.0])  # bins 1 and 2
    event = torch.tensor([1.0, 0.0])
    h = torch.sigmoid(logits)
    ll0 = math.log(h[0, 1]) + math.log(1 - h[0, 0])  # event in bin 1
    ll1 = math.log(1 - h[1, 0]) + math.log(1 - h[1, 1]) + math.log(1 - h[1, 2])  # survived bin 2
    assert discrete_time_nll(logits, time, event, edges).item() == pytest.approx(-(ll0 + ll1) / 2, rel=1e-6)
    # a time exactly at an edge belongs to the later bin
    at_edge = discrete_time_nll(logits[:1], torch.tensor([10.0]), torch.tensor([1.0]), edges).item()
    assert at_edge == pytest.approx(-ll0, rel=1e-6)
    with pytest.raises(ValueError, match="K \\+ 1"):
        discrete_time_nll(logits, time, event, [0.0, 1.0, math.inf])


def test_survival_curve_and_risk_by_hand():
    logits = torch.tensor([[0.0, math.log(1 / 3)]])  # hazards 0.5, 0.25
    s = hazards_to_survival(logits)
    torch.testing.assert_close(s, torch.tensor([[0.5, 0.375]]))
    torch.testing.assert_close(risk_from_survival(s), torch.tensor([-0.875]))
    assert torch.all(torch.diff(hazards_to_survival(torch.randn(4, 6)), dim=1) <= 0)


# ------------------------------------------------------------------------------------------------ Cox


def test_cox_partial_nll_with_breslow_ties_by_hand():
    risk = torch.tensor([0.5, -0.2, 1.0, 0.0, 0.3])
    time = torch.tensor([2.0, 2.0, 3.0, 5.0, 1.0])
    event = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    e = risk.exp()
    ll = (risk[4] - torch.log(e.sum()))  # t=1: everyone at risk
    ll += risk[0] - torch.log(e[[0, 1, 2, 3]].sum())  # t=2, tie: both share the same risk set
    ll += risk[1] - torch.log(e[[0, 1, 2, 3]].sum())
    ll += risk[3] - torch.log(e[3])  # t=5
    assert cox_partial_nll(risk, time, event).item() == pytest.approx(-ll.item() / 4, rel=1e-6)
    no_events = cox_partial_nll(risk.requires_grad_(True), time, torch.zeros(5))
    assert no_events.item() == 0.0
    no_events.backward()


def test_cox_partial_likelihood_matches_lifelines():
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(0)
    n = 40
    x = rng.normal(size=n)
    t = rng.exponential(np.exp(-0.8 * x)) + rng.random(n) * 1e-3  # continuous: no ties (Efron == Breslow)
    e = (rng.random(n) < 0.7).astype(int)
    df = pd.DataFrame({"x": x, "T": t, "E": e})
    cph = lifelines.CoxPHFitter().fit(df, "T", "E")
    beta = float(cph.params_["x"])
    risk = torch.tensor(beta * x, dtype=torch.float64)
    ours = cox_partial_nll(risk, torch.tensor(t), torch.tensor(e, dtype=torch.float64)).item() * e.sum()
    assert -ours == pytest.approx(cph.log_likelihood_, rel=1e-6)
    # and our loss is minimised at lifelines' estimate
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([b], max_iter=50)

    def closure():
        opt.zero_grad()
        loss = cox_partial_nll(b * torch.tensor(x), torch.tensor(t), torch.tensor(e, dtype=torch.float64))
        loss.backward()
        return loss

    opt.step(closure)
    assert b.item() == pytest.approx(beta, abs=1e-3)
