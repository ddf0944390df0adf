"""SmoothAdv (Salman, Li, Razenshteyn, Zhang, Zhang, Bubeck & Yang, NeurIPS 2019: "Provably Robust Deep
Learning via Adversarially Trained Smoothed Classifiers").

Adversarial training of the smoothed classifier. For each input, ``m`` noise draws ``delta_1..m`` are
fixed; an L2 PGD adversary finds

    x' = argmax_{||x' - x||_2 <= eps}  CE( mean_j softmax(f(x' + delta_j)), y )

on the smoothed soft classifier (``num_steps`` steps of length ``2 eps / num_steps`` along the normalised
gradient, accumulated, projected onto the ball and into ``clip_values``); the base model is then trained on
the same draws around the adversarial point,

    L(x, y) = (1/m) sum_j CE(f(x' + delta_j), y).

``eps`` grows linearly over the first ``warmup`` epochs: ``eps_e = min(eps, (e + 1) eps / warmup)``.
As in the authors' code, each batch is cut into ``m`` parts, one optimizer step each.

Hyper-parameters (the paper's; the values its authors and the Consistency paper use on MNIST in brackets):

* ``epsilon``: the L2 radius of the adversary, in the units of the input (0.25-2.0 on CIFAR-10; [1.0]).
* ``num_steps``: PGD steps T (1-10; [10]).
* ``num_noise_vec``: noise draws m per input (1-8; [4]).
* ``warmup``: epochs of linear warm-up of ``epsilon`` (10 on CIFAR-10; [10]); 1 means none.

Example::

    from art_smoothing_plugin.training import SmoothAdv, train
    train(SmoothAdv(epsilon=1.0, num_steps=10, num_noise_vec=4, warmup=10), model, x_train, y_train,
          sigma=0.5, optimizer=optimizer, nb_epochs=90, clip_values=(0.0, 1.0), seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._validation import check_int_at_least, check_nonnegative_float
from ._core import TrainingContext, TrainingMethod, smoothed_l2_pgd, warmup_factor

__all__ = ["SmoothAdv"]


@dataclass(frozen=True)
class SmoothAdv(TrainingMethod):
    """Salman et al.'s adversarial training of the smoothed classifier (L2 PGD on the smoothed soft
    classifier over ``num_noise_vec`` fixed draws, steps that accumulate and project, ``epsilon`` warm-up).

    :param epsilon: L2 radius of the adversary (>= 0; 0 is Gaussian augmentation with m draws).
    :param num_steps: PGD steps (>= 1); each has length ``2 * epsilon / num_steps``.
    :param num_noise_vec: noise draws per input, shared by the attack and the loss (>= 1).
    :param warmup: epochs over which the radius grows linearly to ``epsilon`` (>= 1, <= nb_epochs).
    """

    epsilon: float = 1.0
    num_steps: int = 10
    num_noise_vec: int = 4
    warmup: int = 10

    name: ClassVar[str] = "smoothadv"
    splits_batches: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_nonnegative_float("epsilon", self.epsilon))
        check_int_at_least("num_steps", self.num_steps, 1)
        check_int_at_least("num_noise_vec", self.num_noise_vec, 1)
        check_int_at_least("warmup", self.warmup, 1)

    def radius(self, epoch: int) -> float:
        """The adversary's radius in 0-based ``epoch`` (after warm-up, ``epsilon``)."""
        return self.epsilon * warmup_factor(epoch, self.warmup)

    def batch_loss(
        self, context: TrainingContext, x: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        noise = context.noise(x, self.num_noise_vec)
        radius = self.radius(epoch)
        if radius > 0:
            with context.attacking():
                x, _ = smoothed_l2_pgd(
                    context,
                    x,
                    y,
                    noise,
                    steps=self.num_steps,
                    step_size=2 * radius / self.num_steps,
                    max_norm=radius,
                )
        logits = context.noisy_logits(x, noise)
        return context.criterion(logits.flatten(0, 1), y.repeat_interleave(self.num_noise_vec))
