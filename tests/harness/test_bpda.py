"""BPDA and the generic PGD loop: budgets and projections, seeds, and BPDA breaking feature squeezing
used as an input transformation where a gradient attack through the squeezer itself sees no gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from evaluations.attacks.bpda import bpda_pgd, pgd
from evaluations.data import load_dataset
from evaluations.defences.feature_squeezing import squeezed_classifier, squeezer, torch_squeeze
from evaluations.models import train_cross_entropy
from evaluations.zoo import build_model

EPS, STEPS = 0.2, 20


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    dataset = load_dataset("digits")
    model = build_model("small_cnn", dataset.input_shape, dataset.nb_classes, seed=1)
    train_cross_entropy(
        model, dataset.x_train, dataset.y_train, epochs=10, batch_size=64, learning_rate=0.003, seed=1
    )
    return dataset, model


def _correct(model: nn.Module, x: np.ndarray, y: np.ndarray, squeeze=None) -> np.ndarray:
    inputs = torch.as_tensor(x)
    with torch.no_grad():
        return model(squeeze(inputs) if squeeze else inputs).argmax(1).numpy() == y


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_perturbations_stay_in_the_ball_and_in_range(digits, norm):
    dataset, model = digits
    x, y = dataset.x_test[:40], dataset.y_test[:40]
    eps = np.linspace(0.05, 0.3, 40) if norm == "linf" else np.linspace(0.2, 1.5, 40)
    x_adv = bpda_pgd(model, lambda z: z, x, y, norm=norm, eps=eps, step_size=eps / 4, steps=10, seed=3)
    assert x_adv.dtype == np.float32 and x_adv.shape == x.shape
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    delta = (x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= eps + 1e-5), (size - eps).max()
    # Seeded: the same seed gives the same result; another seed another random start.
    again = bpda_pgd(model, lambda z: z, x, y, norm=norm, eps=eps, step_size=eps / 4, steps=10, seed=3)
    np.testing.assert_array_equal(x_adv, again)
    other = bpda_pgd(model, lambda z: z, x, y, norm=norm, eps=eps, step_size=eps / 4, steps=0, seed=4)
    assert not np.array_equal(other, bpda_pgd(model, lambda z: z, x, y, norm=norm, eps=eps, step_size=eps / 4,
                                              steps=0, seed=3))  # fmt: skip


def test_bad_arguments_are_refused(digits):
    dataset, model = digits
    x, y = dataset.x_test[:2], dataset.y_test[:2]
    with pytest.raises(ValueError, match="norm"):
        bpda_pgd(model, lambda z: z, x, y, norm="l1", eps=0.1, step_size=0.01, steps=1, seed=0)
    with pytest.raises(ValueError, match="eps"):
        bpda_pgd(model, lambda z: z, x, y, norm="linf", eps=-0.1, step_size=0.01, steps=1, seed=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        bpda_pgd(model, lambda z: z, x * 2 + 1, y, norm="linf", eps=0.1, step_size=0.01, steps=1, seed=0)


def test_bpda_breaks_bit_depth_squeezing_where_the_masked_gradient_does_not(digits):
    dataset, model = digits
    x, y = dataset.x_test, dataset.y_test
    bit = squeezer("bit_depth", bit_depth=1)
    squeeze = torch_squeeze(bit)
    defended = squeezed_classifier(model, bit, dataset.input_shape, dataset.nb_classes)
    clean = defended.predict(x).argmax(1) == y

    # A gradient attack through the squeezer as written (rounding) gets zero gradients: it only moves by
    # its random start, and the defence looks robust (gradient masking, Athalye et al. 2018).
    def masked_objective(x_adv, labels):
        return nn.functional.cross_entropy(model(torch.round(x_adv)), labels, reduction="none")

    def fooled(x_adv, labels):
        return model(squeeze(x_adv)).argmax(1) != labels

    masked = pgd(
        masked_objective, fooled, x, y, norm="linf", eps=EPS, step_size=2.5 * EPS / STEPS, steps=STEPS, seed=0
    )
    bpda = bpda_pgd(
        model, squeeze, x, y, norm="linf", eps=EPS, step_size=2.5 * EPS / STEPS, steps=STEPS, seed=0
    )
    masked_ok = defended.predict(masked).argmax(1) == y
    bpda_ok = defended.predict(bpda).argmax(1) == y
    assert np.array_equal(bpda_ok, _correct(model, bpda, y, squeeze))
    # Exact one-sided McNemar tests on the paired outcomes: BPDA lowers the squeezed classifier's accuracy
    # below both its clean accuracy and the masked attack's (p < 1e-6).
    for reference in (clean, masked_ok):
        only_reference, only_bpda = int(np.sum(reference & ~bpda_ok)), int(np.sum(~reference & bpda_ok))
        assert stats.binomtest(only_reference, only_reference + only_bpda, 0.5, "greater").pvalue < 1e-6
    assert bpda_ok.mean() < 0.75 * clean.mean()
