"""ART's attacks and trainer, and torchattacks, run on the estimator and hit the smoothed classifier.

Accuracy is the smoothed accuracy of Cohen's PREDICT (abstention counts as wrong), on the first 100 test
digits. "The attack drives it down" is a paired sign test (McNemar): under "the attack changes nothing",
the digits it breaks and the digits it fixes are exchangeable, so broken ~ Binomial(broken + fixed, 1/2);
we require p < 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchattacks
from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
from art.attacks.evasion.projected_gradient_descent.projected_gradient_descent_numpy import (
    ProjectedGradientDescentNumpy,
)
from art.defences.trainer import AdversarialTrainer
from scipy import stats

from art_smoothing_plugin import ABSTAIN, RandomizedSmoothingClassifier
from art_smoothing_plugin.statistics import binomial_upper_tail

L2_EPS = 1.0  # about 4 sigma: well beyond the typical certified radius (~0.45) of the digits model
LINF_EPS = 0.15
STEPS = 10


def smoothed_correct(estimator: RandomizedSmoothingClassifier, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return estimator.predict_labels(x, n=100, alpha=0.001, seed=123) == y


def assert_attack_lowers_accuracy(estimator, x, y, x_adv, eps: float, norm: float) -> None:
    assert x_adv.shape == x.shape and np.isfinite(x_adv).all()
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0 + 1e-6  # clip_values respected
    distance = np.linalg.norm((x_adv - x).reshape(len(x), -1), ord=norm, axis=1)
    assert distance.max() <= eps * (1 + 1e-4)
    clean, attacked = smoothed_correct(estimator, x, y), smoothed_correct(estimator, x_adv, y)
    broken, fixed = int(np.sum(clean & ~attacked)), int(np.sum(~clean & attacked))
    pvalue = stats.binomtest(broken, broken + fixed, 0.5, alternative="greater").pvalue if broken else 1.0
    assert pvalue < 1e-3, f"clean {clean.mean():.2f} -> attacked {attacked.mean():.2f} (p = {pvalue:.3g})"
    assert clean.mean() > 0.85  # the model is worth attacking


class LossGradientSpy:
    """Records the type of x in each loss_gradient call, and forwards it."""

    def __init__(self, estimator: RandomizedSmoothingClassifier) -> None:
        self.types: list[type] = []
        self._forward = estimator.loss_gradient

    def __call__(self, x, y, **kwargs):
        self.types.append(type(x))
        return self._forward(x, y, **kwargs)


@pytest.mark.parametrize(("norm", "eps"), [(2, L2_EPS), (np.inf, LINF_EPS)])
def test_art_pgd_pytorch_path_passes_tensors_and_breaks_the_smoothed_model(
    trained_estimator, test_subset, norm, eps
) -> None:
    x, y = test_subset
    spy = LossGradientSpy(trained_estimator)
    trained_estimator.loss_gradient = spy
    attack = ProjectedGradientDescent(
        trained_estimator, norm=norm, eps=eps, eps_step=eps / 4, max_iter=STEPS, verbose=False
    )
    assert type(attack._attack).__name__ == "ProjectedGradientDescentPyTorch"
    x_adv = attack.generate(x, y=y)
    assert spy.types and all(issubclass(t, torch.Tensor) for t in spy.types)
    assert_attack_lowers_accuracy(trained_estimator, x, y, x_adv, eps, norm)


@pytest.mark.parametrize(("norm", "eps"), [(2, L2_EPS), (np.inf, LINF_EPS)])
def test_art_pgd_numpy_path(trained_estimator, test_subset, norm, eps) -> None:
    x, y = test_subset
    spy = LossGradientSpy(trained_estimator)
    trained_estimator.loss_gradient = spy
    attack = ProjectedGradientDescentNumpy(
        trained_estimator, norm=norm, eps=eps, eps_step=eps / 4, max_iter=STEPS, verbose=False
    )
    x_adv = attack.generate(x, y=y)
    assert spy.types and all(issubclass(t, np.ndarray) for t in spy.types)
    assert_attack_lowers_accuracy(trained_estimator, x, y, x_adv, eps, norm)


@pytest.mark.parametrize(("norm", "eps"), [(2, L2_EPS), (np.inf, LINF_EPS)])
def test_art_fast_gradient_method(trained_estimator, test_subset, norm, eps) -> None:
    x, y = test_subset
    x_adv = FastGradientMethod(trained_estimator, norm=norm, eps=eps).generate(x, y=y)
    assert_attack_lowers_accuracy(trained_estimator, x, y, x_adv, eps, norm)


@pytest.mark.parametrize(
    ("make_attack", "eps", "norm"),
    [
        (lambda m: torchattacks.PGD(m, eps=LINF_EPS, alpha=LINF_EPS / 4, steps=STEPS), LINF_EPS, np.inf),
        (lambda m: torchattacks.PGDL2(m, eps=L2_EPS, alpha=L2_EPS / 4, steps=STEPS), L2_EPS, 2),
        (
            lambda m: torchattacks.EOTPGD(m, eps=LINF_EPS, alpha=LINF_EPS / 4, steps=STEPS, eot_iter=2),
            LINF_EPS,
            np.inf,
        ),
    ],
    ids=["PGD", "PGDL2", "EOTPGD"],
)
def test_torchattacks_on_the_smoothed_module(trained_estimator, test_subset, make_attack, eps, norm) -> None:
    x, y = test_subset
    module = trained_estimator.smoothed_module(num_samples=32)
    assert not module.training and not any(m.training for m in module.modules())  # what torchattacks sees
    attack = make_attack(module)
    x_adv = attack(torch.from_numpy(x), torch.from_numpy(y)).detach().numpy()
    assert_attack_lowers_accuracy(trained_estimator, x, y, x_adv, eps, norm)


def test_adversarial_trainer_runs_on_the_estimator(trained_estimator, digits) -> None:
    x, y = digits.x_train[:256], digits.y_train[:256]
    before = [p.detach().clone() for p in trained_estimator.model.parameters()]
    trainer = AdversarialTrainer(trained_estimator, FastGradientMethod(trained_estimator, eps=0.1), ratio=0.5)
    trainer.fit(x, np.eye(10, dtype=np.float32)[y], nb_epochs=1, batch_size=64)
    after = list(trained_estimator.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert not trained_estimator.model.training
    # Still a working digit classifier after one epoch at a small eps.
    frequencies = trained_estimator.predict(digits.x_test[:100])
    assert np.mean(frequencies.argmax(1) == digits.y_test[:100]) > 0.8


def test_an_attack_inside_the_certified_radius_rarely_flips_predict(trained_estimator, test_subset) -> None:
    # The certificate's promise on a real model: where CERTIFY gave (c, r >= eps), an L2 attack of size
    # eps on the smoothed model makes PREDICT return another class only if the certificate is wrong
    # (probability <= alpha) or PREDICT is (probability <= alpha). eps = 2 sigma: PGD at this size flips
    # ~10% of the digits whose radius was inflated x2 (a mutation check), which this test rejects.
    x, y = test_subset
    eps, alpha = 0.5, 0.001
    labels, radii = trained_estimator.certify(x, n=2000, alpha=alpha, seed=4)
    inside = (labels != ABSTAIN) & (radii >= eps)
    assert inside.sum() >= 30
    attack = ProjectedGradientDescent(
        trained_estimator, norm=2, eps=eps, eps_step=eps / 4, max_iter=STEPS, verbose=False
    )
    x_adv = attack.generate(x[inside], y=labels[inside])
    predicted = trained_estimator.predict_labels(x_adv, n=2000, alpha=alpha, seed=5)
    flipped = int(np.sum((predicted != ABSTAIN) & (predicted != labels[inside])))
    assert binomial_upper_tail(flipped, int(inside.sum()), 2 * alpha) >= 1e-3, f"{flipped} flipped"


# -- gradients where the base model is flat ---------------------------------------------------------------
THRESHOLD, SIGMA = 0.6, 0.2


class FlatThenStep(torch.nn.Module):
    """Class 0 with a constant margin while x_0 < 0.6 (zero gradient: the ReLU is off), then a steep ramp
    to class 1 beyond x_0 = 0.61. At x_0 = 0.4 the boundary is one sigma away."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        ramp = 50.0 * torch.relu(z[:, 0] - THRESHOLD)
        return torch.stack([0.5 - ramp, ramp - 0.5], dim=1)


def flat_estimator(**kwargs) -> RandomizedSmoothingClassifier:
    return RandomizedSmoothingClassifier(
        FlatThenStep(),
        None,
        (4,),
        2,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        scale=SIGMA,
        seed=0,
        **kwargs,
    )


def test_smoothed_gradient_is_nonzero_where_the_base_gradient_is_zero() -> None:
    x = np.full((5, 4), 0.4, dtype=np.float32)
    x[:, 1:] = np.linspace(0.1, 0.9, 5)[:, None]  # other coordinates do not matter to the model
    y = np.zeros(5, dtype=np.int64)
    estimator = flat_estimator(sample_size=256)
    base = estimator.loss_gradient(x, y, sampling=False)
    assert np.all(base == 0.0)
    smoothed = estimator.loss_gradient(x, y)
    # Every draw beyond x_0 = 0.6 raises the loss of class 0 when x_0 grows, and none lowers it, so the
    # x_0 gradient is positive unless no draw of 256 lands a sigma away: probability 0.84^256 < 1e-19.
    assert np.all(smoothed[:, 0] > 0)
    assert np.all(smoothed[:, 1:] == 0.0)


def test_fgm_moves_toward_the_boundary_only_with_smoothed_gradients() -> None:
    x = np.full((1, 4), 0.4, dtype=np.float32)
    y = np.zeros(1, dtype=np.int64)
    smoothed = FastGradientMethod(flat_estimator(sample_size=256), norm=np.inf, eps=0.3).generate(x, y=y)
    base = FastGradientMethod(flat_estimator(smoothed_gradients=False), norm=np.inf, eps=0.3).generate(x, y=y)
    assert smoothed[0, 0] == pytest.approx(0.7, abs=1e-6)  # crossed the step at 0.61
    np.testing.assert_array_equal(base, x)  # a zero gradient moves nothing: ART's default behaviour
