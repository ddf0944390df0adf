"""SmoothMix (Jeong, Park, Kim, Lee, Kim & Shin, NeurIPS 2021: "SmoothMix: Training Confidence-calibrated
Smoothed Classifiers for Certified Robustness").

Mixup between an input and an adversarial point of the smoothed classifier, with a target that moves
towards the uniform distribution, so that the smoothed classifier's confidence falls off gradually off
the data. For each input, ``m`` noise draws are fixed; ``num_steps`` L2 PGD steps of length ``step_size``
on the smoothed soft classifier (projected onto a ball of radius ``maxnorm`` if given, and into
``clip_values``) give ``x_adv``; the point after ``mix_step`` steps, pulled into a ball of radius
``maxnorm_s`` (default ``step_size * mix_step``) around ``x``, is the clean side ``x_0`` (``x`` itself when
``mix_step = 0``). With ``lam ~ U[0, 1/2]`` per input,

    x_mix = (1 - lam) x_0 + lam x_adv,    y_mix = (1 - lam) g(x_0) + lam / C,

``g(x_0) = mean_j softmax(f(x_0 + delta_j))`` (not detached, as in the authors' code) and

    L = (1/m) sum_j CE(f(x_0 + delta_j), y)
        + eta * w_e * (1/m) sum_j 1{argmax g(x_0) = y} KL(y_mix || softmax(f(x_mix + delta_j))),

the mixup term only on inputs the smoothed soft classifier gets right. ``w_e = min(1, (e + 1) / warmup)``
ramps ``eta`` and ``maxnorm_s`` up over the first ``warmup`` epochs. As in the authors' code, each batch is
cut into ``m`` parts, one optimizer step each.

Hyper-parameters (the authors' MNIST runs; CIFAR-10 in brackets):

* ``num_noise_vec``: noise draws m per input (4; [2]).
* ``num_steps``: PGD steps T (2 or 3 at sigma 0.25, 4 at 0.5, 8 at 1.0; [4]).
* ``step_size``: PGD step length alpha, in input units (1.0; [0.5, 1.0, 2.0 at sigma 0.25, 0.5, 1.0]).
* ``eta``: weight of the mixup term (1.0 or 5.0; [5.0]).
* ``mix_step``: 0 (clean side = x) or 1 ("one-step adversary").
* ``maxnorm_s``: radius of the clean side's ball (default ``step_size * mix_step``); ``maxnorm``: radius
  of the adversary's ball (default none).
* ``warmup``: epochs of linear ramp of ``eta`` and ``maxnorm_s`` (10).

Example::

    from art_smoothing_plugin.training import SmoothMix, train
    train(SmoothMix(num_steps=8, step_size=1.0, eta=5.0), model, x_train, y_train, sigma=1.0,
          optimizer=optimizer, nb_epochs=90, clip_values=(0.0, 1.0), seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._validation import check_int_at_least, check_nonnegative_float, check_positive_float
from ..smoothing import mean_softmax
from ._core import TrainingContext, TrainingMethod, project_l2, smoothed_l2_pgd, warmup_factor

__all__ = ["SmoothMix", "smoothmix_loss"]


def smoothmix_loss(
    logits_clean: torch.Tensor,
    logits_mix: torch.Tensor,
    y: torch.Tensor,
    lam: torch.Tensor,
    *,
    eta: float,
    criterion=None,
) -> torch.Tensor:
    """SmoothMix's loss from the base model's logits on ``m`` noisy copies of the clean side and of the
    mixed point, both ``(B, m, classes)``, and the mixing weights ``lam`` ``(B,)`` (``eta`` already
    ramped). ``criterion`` is the classification loss (default cross-entropy)."""
    count, copies, classes = logits_clean.shape
    criterion = criterion if criterion is not None else torch.nn.functional.cross_entropy
    classification = criterion(logits_clean.flatten(0, 1), y.repeat_interleave(copies))
    clean = mean_softmax(logits_clean)
    lam = lam.to(clean.dtype).unsqueeze(1)
    target = (1 - lam) * clean + lam / classes
    log_mixed = torch.log_softmax(logits_mix.float(), dim=-1)
    divergence = (target.unsqueeze(1) * (target.clamp_min(1e-20).log().unsqueeze(1) - log_mixed)).sum(dim=-1)
    correct = (clean.argmax(dim=1) == y).to(divergence.dtype).unsqueeze(1)
    return classification + eta * (correct * divergence).mean()


@dataclass(frozen=True)
class SmoothMix(TrainingMethod):
    """Jeong et al.'s mixup with adversarial points of the smoothed classifier.

    :param num_noise_vec: noise draws per input, shared by the attack and the loss (>= 1).
    :param num_steps: PGD steps (>= 1).
    :param step_size: PGD step length in input units (> 0). ART's ``PyTorchSmoothMix`` uses ``alpha``, the
        certification error probability, here; this is its own argument.
    :param eta: weight of the mixup term (>= 0; 0 is Gaussian augmentation at the clean side).
    :param mix_step: the PGD step whose point is the clean side (0 <= mix_step < num_steps).
    :param maxnorm_s: radius of the clean side's ball around ``x`` (>= 0; default ``step_size * mix_step``).
    :param maxnorm: radius of the adversary's ball (> 0; default none).
    :param warmup: epochs over which ``eta`` and ``maxnorm_s`` ramp up linearly (>= 1, <= nb_epochs).
    """

    num_noise_vec: int = 4
    num_steps: int = 8
    step_size: float = 1.0
    eta: float = 5.0
    mix_step: int = 0
    maxnorm_s: float | None = None
    maxnorm: float | None = None
    warmup: int = 10

    name: ClassVar[str] = "smoothmix"
    splits_batches: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int_at_least("num_noise_vec", self.num_noise_vec, 1)
        check_int_at_least("num_steps", self.num_steps, 1)
        object.__setattr__(self, "step_size", check_positive_float("step_size", self.step_size))
        object.__setattr__(self, "eta", check_nonnegative_float("eta", self.eta))
        check_int_at_least("mix_step", self.mix_step, 0)
        if self.mix_step >= self.num_steps:
            raise ValueError(
                f"mix_step must be smaller than num_steps (the PGD step whose point is the clean side); got "
                f"mix_step={self.mix_step}, num_steps={self.num_steps}"
            )
        if self.maxnorm_s is not None:
            object.__setattr__(self, "maxnorm_s", check_nonnegative_float("maxnorm_s", self.maxnorm_s))
        if self.maxnorm is not None:
            object.__setattr__(self, "maxnorm", check_positive_float("maxnorm", self.maxnorm))
        check_int_at_least("warmup", self.warmup, 1)

    def batch_loss(
        self, context: TrainingContext, x: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        noise = context.noise(x, self.num_noise_vec)
        ramp = warmup_factor(epoch, self.warmup)
        with context.attacking():
            adversarial, start = smoothed_l2_pgd(
                context,
                x,
                y,
                noise,
                steps=self.num_steps,
                step_size=self.step_size,
                max_norm=self.maxnorm,
                keep_step=self.mix_step,
            )
        start_radius = (
            self.maxnorm_s if self.maxnorm_s is not None else self.step_size * self.mix_step
        ) * ramp
        assert start is not None  # keep_step < steps
        start = context.clip(x + project_l2(start - x, start_radius))
        lam = 0.5 * context.uniform(len(x), x)
        lam_x = lam.reshape(-1, *([1] * (x.ndim - 1)))
        mixed = (1 - lam_x) * start + lam_x * adversarial
        return smoothmix_loss(
            context.noisy_logits(start, noise),
            context.noisy_logits(mixed, noise),
            y,
            lam,
            eta=self.eta * ramp,
            criterion=context.criterion,
        )
