"""Feature squeezing on digits: ART squeezers, the squeezed classifier, Xu et al.'s detector (its clean
false-positive rate, its detection of plain PGD) and its defeat by a detector-evading adaptive attack.

Configuration: 1-bit depth reduction (Xu et al.'s MNIST squeezer). The 2x2 median filter is tested as a
squeezer but not used in the detector here: on 8x8 digits it costs 28 points of accuracy and lifts the
clean 95% score to ~2 (the maximum), which leaves the detector blind (docs/baselines.md)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.detector.evasion import EvasionDetector
from art.defences.preprocessor import FeatureSqueezing, SpatialSmoothing
from art.estimators.classification import PyTorchClassifier
from scipy import stats
from torch import nn

from evaluations.attacks.bpda import detector_evading_pgd
from evaluations.data import load_dataset
from evaluations.defences.feature_squeezing import (
    FeatureSqueezingDetector,
    conformal_threshold,
    squeezed_classifier,
    squeezer,
    squeezers,
    torch_squeeze,
)
from evaluations.models import train_cross_entropy
from evaluations.reproducibility import seeded
from evaluations.zoo import build_model

FPR = 0.05
EPS = 0.2  # L-inf, [0, 1] units
STEPS = 20


pytestmark = pytest.mark.usefixtures("one_thread")


def train_digits_model(dataset, epochs: int = 10, seed: int = 0) -> nn.Module:
    model = build_model("small_cnn", dataset.input_shape, dataset.nb_classes, seed=seed)
    return train_cross_entropy(
        model, dataset.x_train, dataset.y_train, epochs=epochs, batch_size=64, learning_rate=0.003, seed=seed
    )


@pytest.fixture(scope="module")
def setup():
    dataset = load_dataset("digits")
    model = train_digits_model(dataset)
    classifier = PyTorchClassifier(
        model, nn.CrossEntropyLoss(), dataset.input_shape, dataset.nb_classes, clip_values=(0.0, 1.0)
    )
    # The test split in two exchangeable halves: one fits the threshold, the other is held out.
    x_fit, x_held, y_held = dataset.x_test[:250], dataset.x_test[250:], dataset.y_test[250:]
    detector = FeatureSqueezingDetector(
        classifier, squeezers("bit_depth", bit_depth=1), false_positive_rate=FPR
    )
    detector.fit(x_fit)
    return {"dataset": dataset, "model": model, "classifier": classifier, "detector": detector,
            "x_fit": x_fit, "x": x_held, "y": y_held}  # fmt: skip


@pytest.fixture(scope="module")
def plain_pgd(setup):
    """Non-adaptive L-inf PGD (ART's) on the undefended classifier."""
    attack = ProjectedGradientDescent(
        setup["classifier"], norm=np.inf, eps=EPS, eps_step=2.5 * EPS / STEPS, max_iter=STEPS, verbose=False
    )
    with seeded(0):  # ART's PGD draws its random start from NumPy's global generator
        return attack.generate(setup["x"], y=setup["y"])


def test_squeezers_are_art_preprocessors_on_unit_data():
    named = squeezers(("bit_depth", "median"), bit_depth=1, median_window=2)
    assert list(named) == ["bit_depth_1", "median_2x2"]
    assert isinstance(named["bit_depth_1"], FeatureSqueezing) and isinstance(
        named["median_2x2"], SpatialSmoothing
    )
    x = np.array([[[[0.1, 0.49], [0.51, 0.9]]]], dtype=np.float32)
    squeezed, _ = named["bit_depth_1"](x)
    assert squeezed.dtype == np.float32
    np.testing.assert_array_equal(squeezed, [[[[0.0, 0.0], [1.0, 1.0]]]])
    # 2x2 median with reflect padding, even window: scipy takes the upper middle value.
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 16
    median, _ = named["median_2x2"](image)
    assert median.shape == image.shape and median.dtype == np.float32
    assert median[0, 0, 1, 1] == pytest.approx(np.sort(image[0, 0, :2, :2].ravel())[2])
    with pytest.raises(ValueError, match="unknown squeezer kind"):
        squeezer("nonlocal_means")
    with pytest.raises(ValueError, match="bit_depth"):
        squeezer("bit_depth", bit_depth=0)


@pytest.mark.parametrize("window", [2, 3])
def test_torch_median_surrogate_matches_art_and_passes_gradients(window):
    squeeze = torch_squeeze(squeezer("median", median_window=window))
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(window))
    np.testing.assert_array_equal(squeeze.surrogate(x).numpy(), squeeze(x).numpy())
    x.requires_grad_(True)
    squeeze.bpda(x).sum().backward()
    # Each output pixel's gradient goes to the one input pixel its median selected: integer counts that
    # add up to the number of outputs, not the identity.
    assert x.grad.sum().item() == x.numel() and not torch.equal(x.grad, torch.ones_like(x))
    bit = torch_squeeze(squeezer("bit_depth", bit_depth=1))
    y = torch.rand(2, 1, 4, 4, requires_grad=True)
    bit.bpda(y).sum().backward()
    assert torch.equal(y.grad, torch.ones_like(y))  # identity backward for rounding


def test_squeezed_classifier_classifies_the_squeezed_input(setup):
    squeeze = squeezer("bit_depth", bit_depth=1)
    defended = squeezed_classifier(setup["model"], squeeze, setup["dataset"].input_shape, 10)
    x = setup["x"][:50]
    with torch.no_grad():
        expected = setup["model"](torch_squeeze(squeeze)(torch.as_tensor(x))).argmax(1).numpy()
    np.testing.assert_array_equal(defended.predict(x).argmax(1), expected)


def test_conformal_threshold_by_hand():
    scores = np.arange(1.0, 20.0)  # n = 19
    assert conformal_threshold(scores, 0.05) == 19.0  # k = ceil(0.95 * 20) = 19
    assert conformal_threshold(scores, 0.10) == 18.0  # k = ceil(0.90 * 20) = 18
    assert conformal_threshold(np.arange(10.0), 0.05) == math.inf  # k = 11 > n: too few points to flag any
    with pytest.raises(ValueError, match="false_positive_rate"):
        conformal_threshold(scores, 0.0)


def test_detector_follows_arts_interface(setup):
    detector = setup["detector"]
    assert isinstance(detector, EvasionDetector)
    report, flagged = detector.detect(setup["x"][:20])
    assert flagged.dtype == np.bool_ and flagged.shape == (20,)
    assert set(report) == {"scores", "scores_per_squeezer", "threshold"}
    np.testing.assert_array_equal(flagged, report["scores"] > detector.threshold)
    # The differentiable score the adaptive attack uses is the same function.
    with torch.no_grad():
        torch_scores = detector.torch_score(setup["model"], torch.as_tensor(setup["x"][:20])).numpy()
    np.testing.assert_allclose(torch_scores, report["scores"], atol=1e-5)
    unfitted = FeatureSqueezingDetector(setup["classifier"])
    with pytest.raises(ValueError, match="call fit"):
        unfitted.detect(setup["x"][:2])


def test_false_positive_rate_on_held_out_clean_data(setup):
    detector, n_fit = setup["detector"], len(setup["x_fit"])
    _, flagged = detector.detect(setup["x"])
    # The threshold is the k-th of n fit scores; for a held-out set of m exchangeable clean inputs the
    # number above it is Beta-Binomial(m, n + 1 - k, k) (scores continuous near the threshold, checked).
    k = math.ceil((1 - FPR) * (n_fit + 1))
    assert 0 < detector.threshold < 2
    null = stats.betabinom(len(flagged), n_fit + 1 - k, k)
    low, high = null.ppf(0.0005), null.ppf(0.9995)
    assert low <= flagged.sum() <= high, (flagged.sum(), low, high)


def test_detects_plain_pgd_well_above_the_false_positive_rate(setup, plain_pgd):
    model, y = setup["model"], setup["y"]
    with torch.no_grad():
        fooled = model(torch.as_tensor(plain_pgd)).argmax(1).numpy() != y
    _, flagged = setup["detector"].detect(plain_pgd[fooled])
    assert fooled.sum() >= 200  # the attack works on the undefended model ...
    # ... and the detector flags its successes far more often than 5% of clean inputs: the count is beyond
    # what a 5% flag rate could produce (p < 1e-6).
    assert flagged.sum() > stats.binom.isf(1e-6, fooled.sum(), FPR), flagged.mean()


def test_detector_evading_attack_breaks_the_detector(setup, plain_pgd):
    model, detector, x, y = setup["model"], setup["detector"], setup["x"], setup["y"]
    adaptive = detector_evading_pgd(
        model,
        detector,
        x,
        y,
        norm="linf",
        eps=EPS,
        step_size=2.5 * EPS / STEPS,
        steps=STEPS,
        seed=0,
        weight=1.0,
    )
    assert np.abs(adaptive - x).max() <= EPS + 1e-6

    def evaded(x_adv):  # misclassified by the model and not flagged by the detector
        with torch.no_grad():
            wrong = model(torch.as_tensor(x_adv)).argmax(1).numpy() != y
        return wrong & ~detector.detect(x_adv)[1]

    plain, adaptive_ok = evaded(plain_pgd).sum(), evaded(adaptive).sum()
    flagged_plain, flagged_adaptive = detector.detect(plain_pgd)[1].sum(), detector.detect(adaptive)[1].sum()
    m = len(y)
    # One-sided Fisher exact tests on the counts: the adaptive attack evades significantly more often and
    # is flagged significantly less often than plain PGD (p < 1e-3).
    assert stats.fisher_exact([[adaptive_ok, m - adaptive_ok], [plain, m - plain]], "greater").pvalue < 1e-3
    fisher = stats.fisher_exact(
        [[flagged_adaptive, m - flagged_adaptive], [flagged_plain, m - flagged_plain]], "less"
    )
    assert fisher.pvalue < 1e-3
    # Flagged no more often than clean inputs are (upper end of the 5% false-positive count).
    assert flagged_adaptive <= stats.binom.isf(1e-3, m, FPR)


def test_detector_evading_attack_refuses_an_unfitted_detector(setup):
    with pytest.raises(ValueError, match="fit"):
        detector_evading_pgd(
            setup["model"], FeatureSqueezingDetector(setup["classifier"]), setup["x"][:2], setup["y"][:2],
            norm="linf", eps=0.1, step_size=0.01, steps=1, seed=0,
        )  # fmt: skip
