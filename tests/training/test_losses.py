import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from training.learning.losses import auc_pairwise, cvar, robust_loss


def cvar_by_lambda(losses: torch.Tensor, alpha: float) -> float:
    """min over λ of λ + mean((ℓ − λ)+)/α; the minimum sits at one of the losses."""
    return min(float(lam + torch.clamp(losses - lam, min=0).mean() / alpha) for lam in losses)


@pytest.mark.parametrize("n", [1, 5, 10, 37])
@pytest.mark.parametrize("alpha", [1.0, 0.8, 0.5, 0.33, 0.1, 0.01])
def test_cvar_matches_the_definition(n, alpha):
    torch.manual_seed(n)
    losses = torch.rand(n) * 3
    got = float(cvar(losses, alpha))
    assert got == pytest.approx(cvar_by_lambda(losses, alpha), rel=1e-5, abs=1e-6)
    k = alpha * n
    top = sorted(losses.tolist(), reverse=True)
    whole = math.floor(k + 1e-9)
    manual = (sum(top[:whole]) + ((k - whole) * top[whole] if whole < n else 0)) / k
    assert got == pytest.approx(manual, rel=1e-6)


def test_cvar_limits():
    losses = torch.tensor([0.1, 2.0, 0.5, 0.7])
    assert float(cvar(losses, 1.0)) == pytest.approx(float(losses.mean()))
    assert float(cvar(losses, 1e-4)) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        cvar(losses, 0.0)


def test_cvar_gradient_reaches_exactly_the_tail():
    losses = torch.tensor([0.1, 2.0, 0.5, 0.7, 1.5], requires_grad=True)
    cvar(losses, 0.5).backward()  # k = 2.5: 2.0 and 1.5 fully, 0.7 with weight 0.5
    assert losses.grad.tolist() == pytest.approx([0.0, 1 / 2.5, 0.0, 0.5 / 2.5, 1 / 2.5])


@pytest.mark.parametrize("seed", range(4))
def test_auc_loss_matches_the_double_loop(seed):
    torch.manual_seed(seed)
    scores = torch.randn(13)
    labels = (torch.rand(13) > 0.4).float()
    if labels.sum() in (0, 13):
        labels[0], labels[1] = 1.0, 0.0
    pos = [s for s, y in zip(scores.tolist(), labels.tolist(), strict=True) if y == 1]
    neg = [s for s, y in zip(scores.tolist(), labels.tolist(), strict=True) if y == 0]
    for margin, power in [(0.6, 2), (1.0, 1), (0.2, 3)]:
        terms = [max(0.0, margin - (p - n)) ** power for p, n in itertools.product(pos, neg)]
        assert float(auc_pairwise(scores, labels, margin, power)) == pytest.approx(
            sum(terms) / len(terms), rel=1e-5
        )


def test_auc_loss_is_zero_not_nan_for_one_class():
    scores = torch.randn(5, requires_grad=True)
    loss = auc_pairwise(scores, torch.ones(5))
    assert float(loss) == 0.0
    loss.backward()
    assert torch.equal(scores.grad, torch.zeros(5))


def test_robust_loss_combines_the_two_terms():
    torch.manual_seed(0)
    logits = torch.randn(20)
    labels = (torch.rand(20) > 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    for gamma in (0.0, 0.3, 1.0):
        expect = gamma * cvar(bce, 0.8) + (1 - gamma) * auc_pairwise(logits, labels)
        assert float(robust_loss(logits, labels, gamma=gamma)) == pytest.approx(float(expect))
    assert float(robust_loss(logits, labels, gamma=1.0, alpha=1.0)) == pytest.approx(
        float(bce.mean())
    )
