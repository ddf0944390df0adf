"""SmoothAdv (Salman et al. 2019): the adaptive L2 attack on a smoothed classifier.

m noise draws are fixed for the whole attack (``defence.differentiable(noise_samples=m, noise_seed=seed)``,
i.e. ``estimator.smoothed_module(num_samples=m, noise_seed=...)``); the loss is the cross-entropy of the
mean softmax over those draws; each step moves ``step`` along the L2-normalised gradient and projects back
onto the L2 ball of radius ``eps`` and the [0, 1] box. The attacked input is then judged by the defence's
PREDICT with fresh noise (done by the pipeline, not here). ``eps`` may differ per example: the certificate
check attacks each certified point at its own certified radius.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from . import Attack, per_example_eps

if TYPE_CHECKING:  # pragma: no cover
    from ..defences import Defence

__all__ = ["SmoothAdv", "smoothadv_l2"]


def smoothadv_l2(
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: torch.Tensor,
    steps: int,
    step: torch.Tensor,
) -> torch.Tensor:
    """L2 PGD on ``nll(module(x'), y)`` (``module`` returns log-probabilities or logits), per-example
    budgets ``eps`` and step sizes ``step`` (shape ``(N,)``); returns the final iterate, clipped to [0, 1]."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    eps, step = eps.reshape(shape), step.reshape(shape)
    delta = torch.zeros_like(x)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            loss = torch.nn.functional.cross_entropy(module(x + delta), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
        grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(shape)
        delta = delta.detach() + step * grad / grad_norm
        delta_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).reshape(shape)
        delta = delta * torch.clamp(eps / delta_norm, max=1.0)
        delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


class SmoothAdv(Attack):
    uses_differentiable = True
    name = "smoothadv"
    norms = ("l2",)
    per_example = True
    description = "SmoothAdv: L2 PGD on the CE of the mean softmax over m fixed noise draws"

    def applies_to(self, defence: Defence) -> bool:
        return defence.smoothed

    def perturb(
        self,
        defence: Defence,
        x: np.ndarray,
        y: np.ndarray,
        *,
        norm: str,
        eps: float | np.ndarray,
        seed: int,
        steps: int | None = None,
    ) -> np.ndarray:
        self.check(norm, eps)
        budgets = per_example_eps(eps, len(x))
        steps = steps or self.settings.steps
        module = defence.differentiable(noise_samples=self.settings.noise_samples, noise_seed=seed)
        device = next(module.parameters()).device
        out = []
        size = self.batch_points(defence)
        for start in range(0, len(x), size):
            images = torch.as_tensor(x[start : start + size], dtype=torch.float32, device=device)
            labels = torch.as_tensor(y[start : start + size], dtype=torch.int64, device=device)
            eps_t = torch.as_tensor(budgets[start : start + size], dtype=torch.float32, device=device)
            step_t = self.settings.relative_step * eps_t / steps
            out.append(smoothadv_l2(module, images, labels, eps_t, steps, step_t).cpu().numpy())
        if not out:
            return np.array(x, dtype=np.float32, copy=True)
        return np.concatenate(out).astype(np.float32)
