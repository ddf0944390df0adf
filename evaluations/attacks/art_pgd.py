"""ART's ProjectedGradientDescent (L-inf and L2) on the defence's own ART estimator.

It uses whatever ``loss_gradient`` the estimator defines: the smoothed soft classifier's gradient over
``sample_size`` = m fresh noise draws for smoothed estimators (so ART's attack attacks ``g``), the base
model's for plain classifiers, and the identity through non-differentiable preprocessing defences
(ART's own BPDA for feature squeezing). It starts at the clean input (no random start), which makes it a
different attack from torchattacks' PGD, not a copy. ART draws from NumPy's global generator, so each call
runs under :func:`seeded`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from art.attacks.evasion import ProjectedGradientDescent

from ..reproducibility import seeded
from . import Attack

if TYPE_CHECKING:  # pragma: no cover
    from ..defences import Defence

__all__ = ["ArtProjectedGradientDescent"]


class ArtProjectedGradientDescent(Attack):
    name = "art_pgd"
    norms = ("linf", "l2")
    description = "ART ProjectedGradientDescent on the defence's estimator (its loss_gradient)"

    def perturb(
        self, defence: Defence, x: np.ndarray, y: np.ndarray, *, norm: str, eps: float | np.ndarray, seed: int
    ) -> np.ndarray:
        self.check(norm, eps)
        eps = float(eps)
        if eps == 0 or len(x) == 0:
            return np.array(x, dtype=np.float32, copy=True)
        attack = ProjectedGradientDescent(
            defence.estimator,
            norm=np.inf if norm == "linf" else 2,
            eps=eps,
            eps_step=self.step_size(eps),
            max_iter=self.settings.steps,
            num_random_init=0,
            batch_size=self.batch_points(defence),
            verbose=False,
        )
        defence.reseed(seed)  # a smoothed estimator's loss_gradient draws from its own stream
        with seeded(seed):
            adversarial = attack.generate(np.asarray(x, dtype=np.float32), y=np.asarray(y, dtype=np.int64))
        return np.clip(adversarial, 0.0, 1.0).astype(np.float32)
