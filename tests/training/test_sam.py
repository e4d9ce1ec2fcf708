import torch
from torch import nn

from training.learning.sam import SAM, frozen_bn_stats
from training.model.head import HeadConfig, MLPHead


def test_one_step_follows_the_two_pass_rule():
    """On f(w) = ½‖w‖² ... with SGD as the base: w' = w − lr · ∇f(w + ρ g/‖g‖)."""
    w0 = torch.tensor([3.0, -4.0])
    target = torch.tensor([1.0, 1.0])

    def f(w):
        return ((w - target) ** 4).sum()  # not quadratic: the gradient at w+ε differs in direction

    w = nn.Parameter(w0.clone())
    opt = SAM([w], torch.optim.SGD, rho=0.1, lr=0.01)

    def closure():
        opt.zero_grad()
        loss = f(w)
        loss.backward()
        return loss

    closure()
    opt.step(closure)

    g = 4 * (w0 - target) ** 3
    eps = 0.1 * g / g.norm()
    g_adv = 4 * (w0 + eps - target) ** 3
    assert torch.allclose(w.detach(), w0 - 0.01 * g_adv, atol=1e-5)
    assert not torch.allclose(w.detach(), w0 - 0.01 * g, atol=1e-3)  # not plain SGD


def test_bn_running_stats_unchanged_by_the_second_pass():
    torch.manual_seed(0)
    head = MLPHead(HeadConfig(input_dim=8)).train()
    x, y = torch.randn(16, 8), (torch.rand(16) > 0.5).float()
    opt = SAM(head.parameters(), torch.optim.AdamW, rho=0.05, lr=1e-3, weight_decay=0.01)
    loss_fn = nn.BCEWithLogitsLoss()
    loss_fn(head(x), y).backward()  # first pass updates running stats once
    bn = head.net[1]
    mean, var, count = (
        bn.running_mean.clone(),
        bn.running_var.clone(),
        bn.num_batches_tracked.clone(),
    )
    opt.first_step()
    with frozen_bn_stats(head):
        loss_fn(head(x), y).backward()
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    assert torch.equal(bn.num_batches_tracked, count)
    assert bn.momentum == 0.1  # restored
    before = [p.detach().clone() for p in head.parameters()]
    opt.second_step()
    assert any(not torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))
