"""Adaptive attacks on feature squeezing, as harness attacks around :mod:`evaluations.attacks.bpda`:
BPDA PGD through the defence's squeezer (Athalye et al. 2018) and PGD that also keeps Xu et al.'s detector
score under its threshold (He et al. 2017)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import Attack

if TYPE_CHECKING:  # pragma: no cover
    from ..defences import Defence

__all__ = ["BPDAAttack", "DetectorEvadingAttack"]


class BPDAAttack(Attack):
    name = "bpda"
    norms = ("linf", "l2")
    per_example = True
    description = "BPDA PGD through the squeezer (identity backward)"

    def applies_to(self, defence: Defence) -> bool:
        return getattr(defence, "squeeze", None) is not None

    def perturb(self, defence, x, y, *, norm, eps, seed) -> np.ndarray:
        from .bpda import bpda_pgd

        self.check(norm, eps)
        return bpda_pgd(
            defence.model,
            defence.squeeze,
            x,
            y,
            norm=norm,
            eps=eps,
            step_size=self.step_size(eps),
            steps=self.settings.steps,
            seed=seed,
        ).astype(np.float32)


class DetectorEvadingAttack(Attack):
    name = "detector_evading"
    norms = ("linf", "l2")
    per_example = True
    description = (
        "PGD that misclassifies while keeping the feature-squeezing detector's score under threshold"
    )

    def applies_to(self, defence: Defence) -> bool:
        return defence.has_detector

    def perturb(self, defence, x, y, *, norm, eps, seed) -> np.ndarray:
        from .bpda import detector_evading_pgd

        self.check(norm, eps)
        return detector_evading_pgd(
            defence.model,
            defence.detector,
            x,
            y,
            norm=norm,
            eps=eps,
            step_size=self.step_size(eps),
            steps=self.settings.steps,
            seed=seed,
            weight=self.settings.detector_weight,
        ).astype(np.float32)
