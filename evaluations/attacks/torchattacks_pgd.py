"""torchattacks' PGD (L-inf), PGDL2 (L2) and EOTPGD (L-inf, expectation over transformation).

Each attacks ``defence.differentiable(...)``: the logits model of a deterministic defence, or the smoothed
soft classifier over m noise draws of a smoothed one (fixed draws for PGD/PGDL2, so the objective is
deterministic; fresh draws on every forward for EOTPGD, which averages ``eot_iter`` gradients per step,
from a generator seeded by the attack's seed, so the attack is reproducible).
torchattacks' random start draws from torch's global generator, so each call runs under :func:`seeded`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torchattacks

from ..reproducibility import seeded
from . import Attack

if TYPE_CHECKING:  # pragma: no cover
    from ..defences import Defence

__all__ = ["TorchattacksEOTPGD", "TorchattacksPGD", "TorchattacksPGDL2"]


class _TorchattacksBase(Attack):
    uses_differentiable = True
    fixed_noise = True

    def _make(self, module: torch.nn.Module, eps: float) -> torchattacks.attack.Attack:
        raise NotImplementedError

    def perturb(
        self, defence: Defence, x: np.ndarray, y: np.ndarray, *, norm: str, eps: float | np.ndarray, seed: int
    ) -> np.ndarray:
        self.check(norm, eps)
        eps = float(eps)
        if eps == 0 or len(x) == 0:
            return np.array(x, dtype=np.float32, copy=True)
        module = defence.differentiable(
            noise_samples=self.settings.noise_samples, noise_seed=seed, fixed_noise=self.fixed_noise
        )
        device = next(module.parameters()).device
        attack = self._make(module, eps)
        out = []
        size = self.batch_points(defence)
        with seeded(seed):
            for start in range(0, len(x), size):
                images = torch.as_tensor(x[start : start + size], dtype=torch.float32, device=device)
                labels = torch.as_tensor(y[start : start + size], dtype=torch.int64, device=device)
                out.append(attack(images, labels).detach().cpu().numpy())
        return np.clip(np.concatenate(out), 0.0, 1.0).astype(np.float32)


class TorchattacksPGD(_TorchattacksBase):
    name = "pgd"
    norms = ("linf",)
    description = "torchattacks PGD (L-inf, random start)"

    def _make(self, module, eps):
        return torchattacks.PGD(module, eps=eps, alpha=self.step_size(eps), steps=self.settings.steps)


class TorchattacksPGDL2(_TorchattacksBase):
    name = "pgdl2"
    norms = ("l2",)
    description = "torchattacks PGDL2 (L2, random start)"

    def _make(self, module, eps):
        return torchattacks.PGDL2(module, eps=eps, alpha=self.step_size(eps), steps=self.settings.steps)


class TorchattacksEOTPGD(_TorchattacksBase):
    name = "eotpgd"
    norms = ("linf",)
    description = "torchattacks EOTPGD (L-inf; fresh noise and eot_iter gradients per step)"
    fixed_noise = False

    def applies_to(self, defence: Defence) -> bool:
        return defence.randomized  # on a deterministic model EOT is plain PGD

    def _make(self, module, eps):
        return torchattacks.EOTPGD(
            module,
            eps=eps,
            alpha=self.step_size(eps),
            steps=self.settings.steps,
            eot_iter=self.settings.eot_iter,
        )
