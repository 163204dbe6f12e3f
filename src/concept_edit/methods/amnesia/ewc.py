"""The elastic weight consolidation (EWC) term of Selective Amnesia (paper 004, eq. 1-4).

Eq. 4 subtracts lambda * sum_i F_i / 2 (theta_i - theta*_i)^2 from the objective. The official code
(clear-nus/selective-amnesia, `train_forget.py` and `ddpm_forget.py`) adds lambda * sum_i F_i (theta_i -
theta*_i)^2 to the loss, the 1/2 absorbed into lambda; this follows the code so that its lambda values (VAE
100, SD 50) mean the same here.

The penalty is quadratic, so its gradient is known in closed form, 2 lambda F (theta - theta*): it is added
to the parameters' gradients one parameter at a time, on the training device (the only temporary is one
tensor), instead of building the penalty into the autograd graph (the official code moves F and theta* to the
device and sums the penalty parameter by parameter at every step, keeping its terms for backward).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class EWCPenalty:
    """lambda * sum_i F_i (theta_i - theta*_i)^2 over `params`, with theta* their values at construction."""

    def __init__(self, params: Sequence[torch.nn.Parameter], fisher: Sequence[torch.Tensor], lam: float,
                 anchors: Sequence[torch.Tensor] | None = None):  # fmt: skip
        if lam < 0:
            raise ValueError(f"lambda must be >= 0, got {lam}")
        self.params = list(params)
        if len(fisher) != len(self.params):
            raise ValueError(f"{len(fisher)} Fisher tensors for {len(self.params)} parameters")
        for p, f in zip(self.params, fisher, strict=True):
            if tuple(f.shape) != tuple(p.shape):
                raise ValueError(f"a Fisher tensor has shape {tuple(f.shape)}, its parameter {tuple(p.shape)}")
        self.lam = float(lam)
        # theta*: the given original values (trainable()'s kept copy, not another one), else a float32 copy
        self.anchors = list(anchors) if anchors is not None else [p.detach().to(torch.float32, copy=True)
                                                                   for p in self.params]  # fmt: skip
        self.fisher = [f.detach().to(p.device, torch.float32) for p, f in zip(self.params, fisher, strict=True)]

    def _diff(self, p: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        return p.detach().float() - anchor.float()

    @torch.no_grad()
    def value(self) -> float:
        """The penalty at the current parameters."""
        total = 0.0
        for p, anchor, f in zip(self.params, self.anchors, self.fisher, strict=True):
            d = self._diff(p, anchor)
            total += float(d.mul_(d).mul_(f).sum())
        return self.lam * total

    @torch.no_grad()
    def add_gradient_(self) -> None:
        """grad += 2 lambda F (theta - theta*), for every parameter (a missing grad counts as zero).

        One parameter at a time: the temporary is one tensor, not a float32 copy of every trained tensor at
        once (the same operations, in the same order, as the fused `torch._foreach_*` form).
        """
        if self.lam == 0:
            return
        for index in range(len(self.params)):
            self.add_gradient_of_(index)

    @torch.no_grad()
    def add_gradient_of_(self, index: int) -> None:
        """grad += 2 lambda F (theta - theta*) for the parameter `index` (the form stepped inside backward)."""
        if self.lam == 0:
            return
        p, anchor, f = self.params[index], self.anchors[index], self.fisher[index]
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        d = self._diff(p, anchor).mul_(f)
        p.grad.add_(d if p.grad.dtype == torch.float32 else d.to(p.grad.dtype), alpha=2 * self.lam)
