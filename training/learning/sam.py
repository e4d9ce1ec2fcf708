"""Sharpness-aware minimisation (Foret et al., 2021) around any base optimiser.

One SAM step takes two forward/backward passes:

1. at w, compute the gradient g and climb to the worst nearby point
   w + ε, ε = ρ · g / ‖g‖ (first_step);
2. at w + ε, compute the gradient again, step back to w and let the base
   optimiser (AdamW here) apply *that* gradient (second_step).

The second pass sees the same batch a second time; BatchNorm layers must not
count it again in their running statistics, so `frozen_bn_stats(model)`
wraps it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn


class SAM(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
        rho: float = 0.05,
        **kwargs,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = (
            self.base_optimizer.param_groups
        )  # one set of groups, for schedulers too
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        norm = self._grad_norm()
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                e_w = p.grad * scale
                p.add_(e_w)  # climb to w + ε
                self.state[p]["e_w"] = e_w
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "e_w" in self.state[p]:
                    p.sub_(self.state[p].pop("e_w"))  # back to w
        self.base_optimizer.step()  # with the gradient taken at w + ε
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> None:  # type: ignore[override]
        """Full SAM step; `closure` must zero grads, run forward and backward, and return the loss."""
        if closure is None:
            raise ValueError("SAM needs a closure that recomputes the loss")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            closure()
        self.second_step()

    def state_dict(self) -> dict:  # type: ignore[override]
        """The base optimiser's state (AdamW's moments, step counts, learning rates): all there
        is between steps, since ε lives only from first_step to second_step."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # loading replaced the groups

    def _grad_norm(self) -> torch.Tensor:
        norms = [
            p.grad.norm(p=2) for g in self.param_groups for p in g["params"] if p.grad is not None
        ]
        if not norms:
            return torch.tensor(0.0)
        return torch.norm(torch.stack(norms), p=2)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalise with batch statistics but leave running_mean/var
    (and their batch counter) untouched: momentum 0 for the duration."""
    saved = []
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            saved.append(
                (
                    m,
                    m.momentum,
                    m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None,
                )
            )
            m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
