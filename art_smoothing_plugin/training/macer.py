"""MACER (Zhai, Dan, He, Zhang, Gong, Ravikumar, Hsieh & Wang, ICLR 2020: "MACER: Attack-free and Scalable
Robust Training via Maximizing Certified Radius").

Attack-free: it maximises a differentiable surrogate of the certified radius directly. With ``k`` noise
draws per input, ``g(x) = mean_j softmax(f(x + delta_j))`` (the smoothed soft classifier) and
``g_beta(x) = mean_j softmax(beta * f(x + delta_j))`` (at inverse temperature ``beta``), the loss of a batch
of ``B`` inputs is

    L = (1/B) sum_i [ -log g(x_i)_{y_i}  +  lmbda * (sigma / 2) * max(gamma - xi_i, 0) * 1{i correct} ]

    xi_i = Phi^-1(g_beta(x_i)_{y_i}) - Phi^-1(max_{c != y_i} g_beta(x_i)_c),

where "correct" means ``argmax_c g_beta(x_i)_c = y_i``: the hinge on the soft radius ``sigma * xi / 2``
applies only to correctly classified points, and only those within the margin ``gamma`` move it (points
where ``xi`` is not finite have a zero hinge and are left out). The classification term is on the smoothed
soft output, not the base model's, so the estimator's ``loss`` is not used by this method.

Hyper-parameters (the paper's CIFAR-10 values; in brackets those of the MNIST runs in Jeong & Shin 2020
and Jeong et al. 2021):

* ``gaussian_samples``: noise draws k per input (16; [16]).
* ``beta``: inverse temperature of the hinge's soft output (16.0; [16.0]).
* ``gamma``: hinge margin on ``xi`` (8.0; [8.0]).
* ``lmbda``: weight of the robustness term (12.0 at sigma 0.25 and 0.5, 4.0 at 1.0; [16.0, 16.0, 6.0]).

Example::

    from art_smoothing_plugin.training import MACER, train
    train(MACER(lmbda=6.0), model, x_train, y_train, sigma=1.0, optimizer=optimizer, nb_epochs=90, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .._validation import check_int_at_least, check_nonnegative_float, check_positive_float
from ..smoothing import mean_softmax
from ._core import TrainingContext, TrainingMethod

__all__ = ["MACER", "macer_loss"]


def macer_loss(
    logits: torch.Tensor, y: torch.Tensor, *, sigma: float, beta: float, gamma: float, lmbda: float
) -> torch.Tensor:
    """MACER's loss from the base model's logits on ``k`` noisy copies of each input, ``(B, k, classes)``
    (see the module docstring), averaged over the ``B`` inputs."""
    count = logits.shape[0]
    probabilities = mean_softmax(logits)
    classification = torch.nn.functional.nll_loss(probabilities.clamp_min(1e-10).log(), y, reduction="sum")
    tempered = mean_softmax(beta * logits)
    top_two = tempered.topk(2, dim=1)
    with torch.no_grad():  # which points the hinge sees: correct ones with a finite margin
        margins = torch.special.ndtri(top_two.values[:, 0]) - torch.special.ndtri(top_two.values[:, 1])
        hinged = (top_two.indices[:, 0] == y) & torch.isfinite(margins)
    first, second = top_two.values[hinged, 0], top_two.values[hinged, 1]
    margin = torch.special.ndtri(first) - torch.special.ndtri(second)
    robustness = (gamma - margin).clamp_min(0.0).sum() * sigma / 2
    return (classification + lmbda * robustness) / count


@dataclass(frozen=True)
class MACER(TrainingMethod):
    """Zhai et al.'s certified-radius maximisation: cross-entropy of the smoothed soft classifier plus a
    hinge on the soft certified radius of correctly classified points, over ``gaussian_samples`` draws.

    :param gaussian_samples: noise draws per input, k (>= 1).
    :param beta: inverse temperature of the soft output in the hinge (> 0).
    :param gamma: hinge margin on ``Phi^-1(top) - Phi^-1(runner-up)`` (>= 0).
    :param lmbda: weight of the robustness term (>= 0; 0 is the smoothed soft classifier's cross-entropy).
    """

    gaussian_samples: int = 16
    beta: float = 16.0
    gamma: float = 8.0
    lmbda: float = 12.0

    name: ClassVar[str] = "macer"

    def __post_init__(self) -> None:
        check_int_at_least("gaussian_samples", self.gaussian_samples, 1)
        object.__setattr__(self, "beta", check_positive_float("beta", self.beta))
        object.__setattr__(self, "gamma", check_nonnegative_float("gamma", self.gamma))
        object.__setattr__(self, "lmbda", check_nonnegative_float("lmbda", self.lmbda))

    @property
    def noise_draws(self) -> int:
        return self.gaussian_samples

    def batch_loss(
        self, context: TrainingContext, x: torch.Tensor, y: torch.Tensor, epoch: int
    ) -> torch.Tensor:
        logits = context.noisy_logits(x, context.noise(x, self.gaussian_samples))
        return macer_loss(logits, y, sigma=context.sigma, beta=self.beta, gamma=self.gamma, lmbda=self.lmbda)
