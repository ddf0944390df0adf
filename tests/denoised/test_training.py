"""Denoiser training: every objective lowers its own loss, classifiers stay frozen, bad arguments fail."""

from __future__ import annotations

import copy

import pytest
import torch

from art_smoothing_plugin.denoisers import DenoiserTrainer, DnCNN, MemNet, train_denoiser

SIGMA = 0.5
EPOCHS = 5


@pytest.fixture(scope="module")
def small_x(digits):
    return digits.x_train[:256]


def _parameters(module):
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.parametrize(
    ("make", "objective", "guide"),
    [
        (DnCNN, "mse", None),
        (MemNet, "mse", None),
        (DnCNN, "stab", "classifier"),
        (MemNet, "stab", "classifier"),
        (DnCNN, "stab", "surrogates"),
        (DnCNN, "stab+mse", "classifier"),
    ],
)
def test_each_objective_lowers_its_own_loss(make, objective, guide, small_x, clean_classifier, surrogates):
    guides = {"classifier": {"classifier": clean_classifier}, "surrogates": {"surrogates": surrogates[:2]}}
    denoiser = make(seed=0)
    trainer = DenoiserTrainer(
        denoiser, objective, sigma=SIGMA, progress=False, seed=0, **guides.get(guide, {})
    )
    own_loss = "mse" if objective == "mse" else "stab"
    before = trainer.evaluate(small_x, own_loss, seed=123)
    history = trainer.fit(
        small_x, nb_epochs=EPOCHS, batch_size=16, **({"pretrain_epochs": 2} if "+" in objective else {})
    )
    after = trainer.evaluate(small_x, own_loss, seed=123)
    # Untrained denoisers are the identity, so "before" is the loss of no denoising at all: MSE sigma^2
    # and the classifier's cross-entropy on raw noisy digits. Both evaluations use the same noise, so
    # any decrease is the training's; the 5% margin refuses a trainer whose weights barely move. (Five
    # epochs cut the MSE by three quarters, the white-box Stability loss by a third, the black-box one,
    # through two surrogates at once, by 6%.)
    assert after < 0.95 * before, (before, after)
    assert denoiser.sigma == SIGMA
    assert not denoiser.training
    expected_phases = ["mse"] * 2 + ["stab"] * EPOCHS if "+" in objective else [own_loss] * EPOCHS
    assert history.phases == expected_phases
    assert history.mode == {"classifier": "white-box", "surrogates": "black-box", None: "mse"}[guide]


def test_stab_plus_mse_pretrains_with_mse(small_x, clean_classifier):
    trainer = DenoiserTrainer(
        DnCNN(seed=0), "stab+mse", sigma=SIGMA, classifier=clean_classifier, progress=False
    )
    before = trainer.evaluate(small_x, "mse", seed=5)
    history = trainer.fit(small_x, nb_epochs=0, batch_size=16, pretrain_epochs=2)
    assert history.phases == ["mse", "mse"]
    assert trainer.evaluate(small_x, "mse", seed=5) < 0.8 * before


def test_classifiers_stay_frozen_and_their_flags_are_restored(small_x, clean_classifier):
    classifier = copy.deepcopy(clean_classifier).train()
    classifier[0].weight.requires_grad_(False)  # a flag the user set must survive training
    flags = [p.requires_grad for p in classifier.parameters()]
    weights = _parameters(classifier)
    train_denoiser(DnCNN(), small_x, SIGMA, "stab", classifier=classifier, nb_epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(weights, _parameters(classifier), strict=True))
    assert [p.requires_grad for p in classifier.parameters()] == flags
    assert classifier.training  # mode restored
    assert all(p.grad is None for p in classifier.parameters())


def test_training_is_reproducible_with_a_seed(small_x):
    first, second = DnCNN(seed=3), DnCNN(seed=3)
    for denoiser in (first, second):
        train_denoiser(
            denoiser, small_x[:64], SIGMA, "mse", nb_epochs=1, batch_size=16, seed=7, progress=False
        )
    assert all(torch.equal(a, b) for a, b in zip(_parameters(first), _parameters(second), strict=True))
    third = DnCNN(seed=4)
    train_denoiser(third, small_x[:64], SIGMA, "mse", nb_epochs=1, batch_size=16, seed=7, progress=False)
    assert not all(torch.equal(a, b) for a, b in zip(_parameters(first), _parameters(third), strict=True))


def test_noise_is_added_in_raw_units(small_x):
    # With an identity denoiser the MSE loss is exactly the noise variance: sigma^2 in the units of x.
    trainer = DenoiserTrainer(DnCNN(), "mse", sigma=0.3, progress=False)
    assert trainer.evaluate(small_x, "mse", seed=0) == pytest.approx(0.09, rel=0.03)


def test_bad_training_arguments_are_refused(small_x, clean_classifier, surrogates):
    with pytest.raises(ValueError, match="objective"):
        DenoiserTrainer(DnCNN(), "l1", sigma=SIGMA)
    with pytest.raises(ValueError, match="sigma is required"):
        DenoiserTrainer(DnCNN(), "mse")
    with pytest.raises(ValueError, match="differs from denoiser.sigma"):
        DenoiserTrainer(DnCNN(sigma=0.25), "mse", sigma=0.5)
    with pytest.raises(ValueError, match="needs a classifier"):
        DenoiserTrainer(DnCNN(), "stab", sigma=SIGMA)
    with pytest.raises(ValueError, match="not both"):
        DenoiserTrainer(DnCNN(), "stab", sigma=SIGMA, classifier=clean_classifier, surrogates=surrogates)
    with pytest.raises(ValueError, match="torch.nn.Module"):
        DenoiserTrainer(DnCNN(), "stab", sigma=SIGMA, surrogates=[lambda z: z])
    trainer = DenoiserTrainer(DnCNN(), "mse", sigma=SIGMA, progress=False)
    with pytest.raises(ValueError, match="pretrain_epochs"):
        trainer.fit(small_x, nb_epochs=1, pretrain_epochs=1)
    with pytest.raises(ValueError, match="NaN"):
        trainer.fit(small_x * float("nan"), nb_epochs=1)
    with pytest.raises(ValueError, match="'stab' loss needs"):
        trainer.evaluate(small_x, "stab")


def test_a_denoiser_that_changes_the_shape_is_refused(small_x):
    with pytest.raises(ValueError, match="shape of its input"):
        train_denoiser(
            torch.nn.Conv2d(1, 1, 3, stride=2, padding=1), small_x, SIGMA, "mse", nb_epochs=1, progress=False
        )
