"""Gaussian noise augmentation (Cohen, Rosenfeld & Kolter, ICML 2019): the baseline.

Loss: the base model's classification loss (cross-entropy by default) at one noisy copy of each input,

    L(x, y) = CE(f(x + delta), y),    delta ~ N(0, sigma^2 I),

noise in the units of the raw input, unclipped, with preprocessing applied after it. No hyper-parameters
beyond sigma (the paper trains at the sigma it certifies at). This is what
:meth:`RandomizedSmoothingClassifier.fit <art_smoothing_plugin.RandomizedSmoothingClassifier.fit>` has
always done; with the same seed it gives the same weights.

Example::

    from art_smoothing_plugin.training import GaussianAugmentation, train
    train(GaussianAugmentation(), model, x_train, y_train, sigma=0.25,
          optimizer=torch.optim.Adam(model.parameters()), nb_epochs=10, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ._core import TrainingContext, TrainingMethod

__all__ = ["GaussianAugmentation"]


@dataclass(frozen=True)
class GaussianAugmentation(TrainingMethod):
    """Cohen et al.'s recipe: the classification loss at ``x + N(0, sigma^2 I)``, one draw per input."""

    name: ClassVar[str] = "gaussian"

    def batch_loss(
        self, context: TrainingContext, x: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        logits = context.noisy_logits(x, context.noise(x, 1))[:, 0]
        return context.criterion(logits, y)
