"""Each method's loss on a tiny input against a computation by hand (math on the listed numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from art_smoothing_plugin.sampling import make_generator
from art_smoothing_plugin.training import (
    Consistency,
    GaussianAugmentation,
    SmoothAdv,
    TrainingContext,
    consistency_regularizer,
    macer_loss,
    smoothmix_loss,
)

LN3 = math.log(3.0)


def test_consistency_regularizer_by_hand() -> None:
    # One input, two draws: softmax (1/2, 1/2) and (3/4, 1/4); their mean is (5/8, 3/8).
    logits = torch.tensor([[[0.0, 0.0], [LN3, 0.0]]], dtype=torch.float64)
    kl_first = 0.625 * math.log(0.625 / 0.5) + 0.375 * math.log(0.375 / 0.5)
    kl_second = 0.625 * math.log(0.625 / 0.75) + 0.375 * math.log(0.375 / 0.25)
    entropy = -(0.625 * math.log(0.625) + 0.375 * math.log(0.375))
    value = consistency_regularizer(logits, lmbda=2.0, eta=0.5)
    assert float(value.detach()) == pytest.approx(2.0 * (kl_first + kl_second) / 2 + 0.5 * entropy, rel=1e-6)
    # Identical draws: no divergence, only the entropy of their common prediction.
    same = torch.tensor([[[LN3, 0.0], [LN3, 0.0]]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(consistency_regularizer(same, lmbda=5.0, eta=0.5)) == pytest.approx(0.5 * h, rel=1e-6)


def _macer_inputs() -> tuple[torch.Tensor, torch.Tensor, float, float]:
    # Input 0 (label 0): draws with logits (2, 0, 0) and (0, 0, 0): classified correctly.
    # Input 1 (label 0): both draws (0, 1, 0): classified as 1, wrong.
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]]])
    e2, e = math.exp(2.0), math.exp(1.0)
    g0 = [(e2 / (e2 + 2) + 1 / 3) / 2, (1 / (e2 + 2) + 1 / 3) / 2]  # top, runner-up of input 0
    g1_label = 1 / (2 + e)
    return logits.requires_grad_(True), torch.tensor([0, 0]), g0, g1_label


def test_macer_loss_by_hand() -> None:
    logits, y, g0, g1_label = _macer_inputs()
    sigma, gamma, lmbda = 0.5, 8.0, 3.0
    xi = stats.norm.ppf(g0[0]) - stats.norm.ppf(g0[1])
    assert 0 < xi < gamma  # the hinge is active on input 0
    classification = -math.log(g0[0]) - math.log(g1_label)
    expected = (classification + lmbda * sigma / 2 * (gamma - xi)) / 2
    value = macer_loss(logits, y, sigma=sigma, beta=1.0, gamma=gamma, lmbda=lmbda)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-5)
    # A margin beyond gamma leaves only the classification term.
    value = macer_loss(logits, y, sigma=sigma, beta=1.0, gamma=0.5 * xi, lmbda=lmbda)
    assert float(value.detach()) == pytest.approx(classification / 2, rel=1e-5)


def test_macer_hinge_acts_only_on_correctly_classified_points() -> None:
    logits, y, _, _ = _macer_inputs()

    def gradient(lmbda: float) -> torch.Tensor:
        value = macer_loss(logits, y, sigma=0.5, beta=1.0, gamma=8.0, lmbda=lmbda)
        (grad,) = torch.autograd.grad(value, logits)
        return grad

    with_hinge, without = gradient(3.0), gradient(0.0)
    torch.testing.assert_close(with_hinge[1], without[1])  # the misclassified input: classification only
    assert not torch.allclose(with_hinge[0], without[0])  # the correct one: the hinge pushes too
    # Relabel input 1 so that it is correct: now the hinge reaches it as well.
    y_both = torch.tensor([0, 1])
    value = macer_loss(logits, y_both, sigma=0.5, beta=1.0, gamma=8.0, lmbda=3.0)
    zero = macer_loss(logits, y_both, sigma=0.5, beta=1.0, gamma=8.0, lmbda=0.0)
    (g_hinge,) = torch.autograd.grad(value, logits)
    (g_plain,) = torch.autograd.grad(zero, logits)
    assert not torch.allclose(g_hinge[1], g_plain[1])


def test_macer_ignores_points_whose_margin_is_infinite() -> None:
    # beta makes the tempered top class's probability exactly 1 in float32: xi is infinite, the hinge 0,
    # and the gradient stays finite.
    logits = torch.tensor([[[30.0, 0.0, 0.0]]], requires_grad=True)
    value = macer_loss(logits, torch.tensor([0]), sigma=0.5, beta=16.0, gamma=8.0, lmbda=12.0)
    (grad,) = torch.autograd.grad(value, logits)
    assert torch.isfinite(value) and torch.isfinite(grad).all()


def test_smoothmix_loss_by_hand() -> None:
    # Input 0 (label 0): clean draw (3/4, 1/4), correct; mixed draw (1/2, 1/2), lam = 0.2.
    # Input 1 (label 0): clean draw (1/4, 3/4), wrong: no mixup term; lam = 0.4.
    logits_clean = torch.tensor([[[LN3, 0.0]], [[0.0, LN3]]])
    logits_mix = torch.tensor([[[0.0, 0.0]], [[5.0, -5.0]]])
    lam = torch.tensor([0.2, 0.4])
    target = (0.8 * 0.75 + 0.2 * 0.5, 0.8 * 0.25 + 0.2 * 0.5)  # (0.7, 0.3)
    kl = target[0] * math.log(target[0] / 0.5) + target[1] * math.log(target[1] / 0.5)
    classification = (-math.log(0.75) - math.log(0.25)) / 2
    eta = 3.0
    value = smoothmix_loss(logits_clean, logits_mix, torch.tensor([0, 0]), lam, eta=eta)
    assert float(value.detach()) == pytest.approx(classification + eta * kl / 2, rel=1e-5)


class Linear(torch.nn.Module):
    """logits = W flatten(z) + b with fixed small weights: known, differentiable, input-dependent."""

    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.weight = torch.nn.Parameter(torch.randn(classes, features, generator=generator))
        self.bias = torch.nn.Parameter(torch.randn(classes, generator=generator))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z.flatten(1) @ self.weight.T + self.bias


def _by_hand_cross_entropy(model: Linear, points: np.ndarray, labels: np.ndarray) -> float:
    w, b = model.weight.detach().double().numpy(), model.bias.detach().double().numpy()
    logits = points.reshape(len(points), -1) @ w.T + b
    logits -= logits.max(axis=1, keepdims=True)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(points)), labels].mean())


def test_gaussian_augmentation_by_hand_noise_in_raw_units_preprocessing_after() -> None:
    x = torch.tensor([[[0.2, 0.9], [0.4, 0.1]], [[0.7, 0.3], [0.5, 0.5]]])  # two 2x2 inputs
    y = torch.tensor([1, 0])
    model = Linear(4, 3)
    context = TrainingContext(model, 0.5, make_generator(3), preprocess=lambda z: (z - 0.5) / 0.25)
    value = GaussianAugmentation().batch_loss(context, x, y, epoch=0)
    noise = 0.5 * torch.randn((2, 1, 2, 2), generator=make_generator(3)).numpy()[:, 0]
    points = (x.numpy() + noise - 0.5) / 0.25  # noise added to the raw input, then standardised
    assert float(value.detach()) == pytest.approx(_by_hand_cross_entropy(model, points, y.numpy()), rel=1e-5)


def test_smoothadv_at_zero_radius_and_consistency_at_zero_weights_are_the_mean_cross_entropy() -> None:
    x = torch.tensor([[0.2, 0.9, 0.4], [0.7, 0.3, 0.5]])
    y = torch.tensor([2, 0])
    model = Linear(3, 3)
    noise = 0.25 * torch.randn((2, 3, 3), generator=make_generator(5)).numpy()
    points = (x.numpy()[:, None] + noise).reshape(6, 3)  # input-major: copies of input 0, then input 1
    expected = _by_hand_cross_entropy(model, points, np.repeat(y.numpy(), 3))
    for method in (SmoothAdv(epsilon=0.0, num_noise_vec=3, warmup=1), Consistency(3, lmbda=0.0, eta=0.0)):
        context = TrainingContext(model, 0.25, make_generator(5))
        assert float(method.batch_loss(context, x, y, epoch=0).detach()) == pytest.approx(expected, rel=1e-5)
