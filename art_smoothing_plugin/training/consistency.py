"""Consistency regularization (Jeong & Shin, NeurIPS 2020: "Consistency Regularization for Certified
Robustness of Smoothed Classifiers").

Gaussian augmentation with ``m`` draws per input plus a term that makes the base model's predictions agree
across the draws. With ``p_j = softmax(f(x + delta_j))`` and their mean ``p_bar`` (the smoothed soft
output),

    L(x, y) = (1/m) sum_j CE(f(x + delta_j), y)  +  lmbda * (1/m) sum_j KL(p_bar || p_j)  +  eta * H(p_bar),

``H`` the entropy. ``p_bar`` is not detached: the regulariser pulls it towards the draws as well. As in
the authors' code, each batch is cut into ``m`` parts, one optimizer step each. With ``m = 1``, ``lmbda = 0``
and ``eta = 0`` it is Gaussian augmentation, draw for draw.

Hyper-parameters (the paper's; MNIST values in brackets, from the authors' scripts):

* ``num_noise_vec``: noise draws m per input (2; [2]).
* ``lmbda``: weight of the KL term (5, 10 or 20 on CIFAR-10; [10 at sigma 0.25, 5 at 0.5 and 1.0 in the
  SmoothMix comparison, 20 in the paper's own MNIST runs]).
* ``eta``: weight of the entropy term (0.5; [0.5]).

Example::

    from art_smoothing_plugin.training import Consistency, train
    train(Consistency(num_noise_vec=2, lmbda=10.0, eta=0.5), model, x_train, y_train, sigma=0.25,
          optimizer=optimizer, nb_epochs=90, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._validation import check_int_at_least, check_nonnegative_float
from ..smoothing import mean_softmax
from ._core import TrainingContext, TrainingMethod

__all__ = ["Consistency", "consistency_regularizer"]


def consistency_regularizer(logits: torch.Tensor, *, lmbda: float, eta: float) -> torch.Tensor:
    """``mean_i [lmbda * (1/m) sum_j KL(p_bar_i || p_ij) + eta * H(p_bar_i)]`` from the base model's
    logits on ``m`` noisy copies of each input, ``(B, m, classes)``."""
    log_draws = torch.log_softmax(logits.float(), dim=-1)
    average = mean_softmax(logits)
    log_average = average.clamp_min(1e-20).log()
    divergence = (average.unsqueeze(1) * (log_average.unsqueeze(1) - log_draws)).sum(dim=-1).mean(dim=1)
    entropy = -(average * log_average).sum(dim=-1)
    return (lmbda * divergence + eta * entropy).mean()


@dataclass(frozen=True)
class Consistency(TrainingMethod):
    """Jeong & Shin's consistency regularisation on top of Gaussian augmentation with ``num_noise_vec``
    draws per input.

    :param num_noise_vec: noise draws per input, m (>= 1).
    :param lmbda: weight of the mean KL divergence from the draws' mean prediction (>= 0).
    :param eta: weight of the entropy of the mean prediction (>= 0).
    """

    num_noise_vec: int = 2
    lmbda: float = 10.0
    eta: float = 0.5

    name: ClassVar[str] = "consistency"
    splits_batches: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int_at_least("num_noise_vec", self.num_noise_vec, 1)
        object.__setattr__(self, "lmbda", check_nonnegative_float("lmbda", self.lmbda))
        object.__setattr__(self, "eta", check_nonnegative_float("eta", self.eta))

    def batch_loss(
        self, context: TrainingContext, x: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        logits = context.noisy_logits(x, context.noise(x, self.num_noise_vec))
        classification = context.criterion(logits.flatten(0, 1), y.repeat_interleave(self.num_noise_vec))
        return classification + consistency_regularizer(logits, lmbda=self.lmbda, eta=self.eta)
