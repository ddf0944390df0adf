"""DenoisedSmoothingClassifier: composition with the core, the ART contract, sigma and shape checks,
gradients, and the same certificates from every kind of classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.estimators.classification import BlackBoxClassifier, PyTorchClassifier
from art.estimators.classification.classifier import ClassifierMixin
from art.estimators.estimator import BaseEstimator, LossGradientsMixin

from art_smoothing_plugin.denoisers import DnCNN, MemNet
from art_smoothing_plugin.estimators import DenoisedSmoothingClassifier, NotDifferentiableError
from art_smoothing_plugin.smoothing import Smoother

SIGMA = 0.5
SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def denoiser(denoisers):
    return denoisers[SIGMA]["white-box"]


@pytest.fixture(scope="module")
def x_test(digits):
    return digits.x_test[:12]


def _estimator(classifier, denoiser, **kwargs):
    kwargs.setdefault("scale", SIGMA)
    return DenoisedSmoothingClassifier(classifier, denoiser, input_shape=SHAPE, nb_classes=10, **kwargs)


def _composed_labels(classifier, denoiser):
    def labels(z):
        return classifier(denoiser(z)).argmax(dim=1)

    return labels


@pytest.mark.parametrize("architecture", ["dncnn", "memnet"])
def test_composition_equals_smoothing_classifier_after_denoiser(
    architecture, clean_classifier, denoiser, x_test
):
    if architecture == "memnet":
        torch.manual_seed(0)
        denoiser = MemNet(sigma=SIGMA)
        with torch.no_grad():
            for parameter in denoiser.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
        denoiser.eval()
    estimator = _estimator(clean_classifier, denoiser, seed=11, batch_size=300)
    reference = Smoother(_composed_labels(clean_classifier, denoiser), 10, SIGMA, batch_size=300, seed=11)
    x_t = torch.from_numpy(x_test)
    ours = estimator.smoother.vote_counts(x_t, 150)
    theirs = reference.vote_counts(x_t, 150)
    assert torch.equal(ours, theirs)
    result = estimator.certify_detailed(x_test, 150, n0=20, seed=3)
    reference.reseed(3)
    expected = reference.certify(x_t, 20, 150, 0.001)
    np.testing.assert_array_equal(result.labels, expected.labels)
    np.testing.assert_array_equal(result.counts_top, expected.counts_top)
    np.testing.assert_array_equal(result.radii, expected.radii)


def test_the_denoiser_changes_the_votes(clean_classifier, denoiser, x_test):
    # Guards the test above against a composition that silently drops the denoiser.
    with_denoiser = _estimator(clean_classifier, denoiser, seed=1).smoother.vote_counts(
        torch.from_numpy(x_test), 100
    )
    without = _estimator(clean_classifier, None, seed=1).smoother.vote_counts(torch.from_numpy(x_test), 100)
    assert not torch.equal(with_denoiser, without)


def test_it_is_an_art_classifier_with_the_smoothing_contract(clean_classifier, denoiser, x_test):
    estimator = _estimator(clean_classifier, denoiser, seed=0, sample_size=50)
    assert isinstance(estimator, (ClassifierMixin, BaseEstimator, LossGradientsMixin))
    assert estimator.nb_classes == 10 and estimator.input_shape == SHAPE
    frequencies = estimator.predict(x_test)
    assert frequencies.shape == (len(x_test), 10)
    np.testing.assert_allclose(frequencies.sum(axis=1), 1.0, rtol=1e-6)
    labels = estimator.predict_labels(x_test, n=200)
    assert labels.shape == (len(x_test),) and set(labels) <= set(range(-1, 10))
    certified, radii = estimator.certify(x_test, n=100, n0=20)
    assert np.all((certified == -1) == (radii == 0.0))
    params = estimator.get_params()
    assert params["scale"] == SIGMA and params["nb_classes"] == 10
    estimator.set_params(sample_size=10)
    assert estimator.sample_size == 10
    with pytest.raises(NotImplementedError, match="DenoiserTrainer"):
        estimator.fit(x_test, np.zeros(len(x_test)))


def test_certificates_report_queries(clean_classifier, denoiser, x_test):
    estimator = _estimator(clean_classifier, denoiser, seed=0)
    result = estimator.certify_detailed(x_test, 100, n0=20)
    assert result.extras["queries"] == len(x_test) * 120
    assert result.extras["classifier"] == "torch" and result.extras["denoiser"] == "DnCNN"
    assert estimator.query_count == len(x_test) * 120


def test_sigma_mismatch_is_refused_unless_forced(clean_classifier, denoiser, x_test):
    assert denoiser.sigma == SIGMA
    with pytest.raises(ValueError, match="trained for sigma=0.5 but scale=0.25"):
        _estimator(clean_classifier, denoiser, scale=0.25)
    with pytest.warns(UserWarning, match="smoothing anyway"):
        forced = _estimator(clean_classifier, denoiser, scale=0.25, allow_sigma_mismatch=True)
    assert forced.certify(x_test[:2], n=20, n0=10)[0].shape == (2,)
    # Changing the scale after construction is caught at certification time.
    estimator = _estimator(clean_classifier, denoiser)
    estimator.set_params(scale=0.25)
    for call in (
        lambda: estimator.certify(x_test, n=20),
        lambda: estimator.predict(x_test),
        lambda: estimator.predict_labels(x_test),
        lambda: estimator.loss_gradient(x_test, np.zeros(len(x_test), dtype=int)),
    ):
        with pytest.raises(ValueError, match="allow_sigma_mismatch"):
            call()
    assert estimator.query_count == 0


def test_a_denoiser_without_sigma_is_accepted(clean_classifier, x_test):
    estimator = _estimator(clean_classifier, DnCNN(), seed=0)
    assert estimator.certify(x_test[:2], n=20, n0=10)[0].shape == (2,)


def test_denoiser_output_of_the_wrong_shape_is_refused(clean_classifier):
    with pytest.raises(ValueError, match="same shape as its input"):
        _estimator(clean_classifier, torch.nn.Conv2d(1, 1, 3, stride=2, padding=1))


def test_classifier_that_cannot_take_the_denoised_inputs_is_refused(denoiser):
    mnist_sized = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    with pytest.raises(ValueError, match="input_shape"):
        _estimator(mnist_sized, denoiser)
    with pytest.raises(ValueError, match=r"\(2, 10\)"):
        _estimator(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7)), denoiser)


def test_bad_constructor_arguments_are_refused(clean_classifier, denoiser):
    with pytest.raises(ValueError, match="denoiser must be a torch.nn.Module"):
        _estimator(clean_classifier, lambda z: z)
    with pytest.raises(ValueError, match="classifier must be"):
        _estimator(42, denoiser)
    with pytest.raises(ValueError, match="scale"):
        _estimator(clean_classifier, denoiser, scale=-1.0)
    with pytest.raises(ValueError, match="device_type"):
        _estimator(clean_classifier, denoiser, device_type="tpu")


def test_inputs_are_checked_before_sampling(clean_classifier, denoiser, x_test):
    estimator = _estimator(clean_classifier, denoiser)
    with pytest.raises(ValueError, match="shape"):
        estimator.certify(np.zeros((2, 1, 28, 28), dtype=np.float32), n=10)
    with pytest.raises(ValueError, match="clip_values"):
        estimator.certify(x_test + 2.0, n=10)
    assert estimator.query_count == 0


def test_loss_gradient_is_that_of_the_composition(clean_classifier, denoiser, x_test):
    estimator = _estimator(clean_classifier, denoiser, seed=0, sample_size=16)
    y = np.arange(len(x_test)) % 10
    # sampling=False: exactly the gradient of CE(classifier(denoiser(x)), y).
    x_t = torch.from_numpy(x_test).requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(clean_classifier(denoiser(x_t)), torch.from_numpy(y))
    (expected,) = torch.autograd.grad(loss, x_t)
    gradient = estimator.loss_gradient(x_test, y, sampling=False)
    assert isinstance(gradient, np.ndarray) and gradient.shape == x_test.shape
    np.testing.assert_allclose(gradient, expected.numpy(), rtol=1e-4, atol=1e-7)
    # The smoothed gradient: finite, not zero, tensors in give tensors out.
    smoothed = estimator.loss_gradient(torch.from_numpy(x_test), torch.from_numpy(y))
    assert isinstance(smoothed, torch.Tensor) and torch.isfinite(smoothed).all() and smoothed.abs().sum() > 0
    module = estimator.smoothed_module(num_samples=8, noise_seed=0)
    assert torch.equal(module(torch.from_numpy(x_test)), module(torch.from_numpy(x_test)))


def test_composite_module_stays_frozen(clean_classifier, denoiser):
    estimator = _estimator(clean_classifier, denoiser)
    module = estimator.base_module().train()
    assert not denoiser.training and not clean_classifier.training
    assert module.training  # the flag is reported, the children stay in eval mode


def test_query_only_classifiers_certify_but_give_no_gradients(clean_classifier, denoiser, x_test):
    def query_only(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return clean_classifier(torch.from_numpy(batch)).argmax(dim=1).numpy()

    estimator = _estimator(query_only, denoiser, seed=4)
    reference = _estimator(clean_classifier, denoiser, seed=4)
    np.testing.assert_array_equal(
        estimator.certify_detailed(x_test, 100, n0=20).counts_top,
        reference.certify_detailed(x_test, 100, n0=20).counts_top,
    )
    assert not estimator.is_differentiable and estimator.classifier_kind == "query-only"
    for call in (
        lambda: estimator.loss_gradient(x_test, np.zeros(len(x_test), dtype=int)),
        estimator.smoothed_module,
        estimator.base_module,
    ):
        with pytest.raises(NotDifferentiableError, match="query-only callable"):
            call()


def test_art_classifiers_of_any_kind_give_the_same_certificates(clean_classifier, denoiser, x_test):
    def predict_scores(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return clean_classifier(torch.from_numpy(batch.astype(np.float32))).numpy()

    black_box = BlackBoxClassifier(predict_scores, SHAPE, 10, clip_values=(0.0, 1.0))
    art_torch = PyTorchClassifier(
        clean_classifier,
        torch.nn.CrossEntropyLoss(),
        input_shape=SHAPE,
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    results = {}
    for name, classifier in [("torch", clean_classifier), ("black-box", black_box), ("art-torch", art_torch)]:
        for denoised in (None, denoiser):
            estimator = _estimator(classifier, denoised, seed=8, batch_size=128)
            results[name, denoised is None] = estimator.certify_detailed(x_test, 100, n0=20)
    for without_denoiser in (True, False):
        for name in ("black-box", "art-torch"):
            np.testing.assert_array_equal(
                results[name, without_denoiser].counts_top, results["torch", without_denoiser].counts_top
            )
    assert _estimator(black_box, denoiser).classifier_kind == "art"
    art_estimator = _estimator(art_torch, denoiser)
    assert art_estimator.classifier_kind == "art-pytorch" and art_estimator.is_differentiable
    with pytest.raises(NotDifferentiableError, match="no PyTorch graph"):
        _estimator(black_box, denoiser).loss_gradient(x_test, np.zeros(len(x_test), dtype=int))
    with pytest.raises(ValueError, match="nb_classes"):
        DenoisedSmoothingClassifier(black_box, denoiser, input_shape=SHAPE, nb_classes=9, scale=SIGMA)


def test_art_attacks_run_against_the_smoothed_chain(clean_classifier, denoiser, x_test):
    from art.attacks.evasion import ProjectedGradientDescent

    estimator = _estimator(clean_classifier, denoiser, seed=0, sample_size=8)
    attack = ProjectedGradientDescent(estimator, norm=2, eps=0.5, eps_step=0.2, max_iter=2, verbose=False)
    adversarial = attack.generate(x_test[:4])
    assert adversarial.shape == x_test[:4].shape
    assert np.all(np.linalg.norm((adversarial - x_test[:4]).reshape(4, -1), axis=1) <= 0.5 + 1e-5)
    assert not np.allclose(adversarial, x_test[:4])
