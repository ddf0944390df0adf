"""Session fixtures for the denoised-smoothing tests: tiny models trained once on scikit-learn's digits.

Everything here is seeded. The classifier is trained on clean data only; the two surrogates (for
black-box denoisers) are trained separately, with other seeds and, for one, another architecture; the
denoisers are DnCNNs of the default size trained at sigma = 0.25 and 0.5 with the MSE objective, then
fine-tuned with the Stability objective through the classifier (white-box) or the surrogates
(black-box), i.e. Stab+MSE sharing one MSE pre-training. Threads: tests/conftest.py's setting (one by
default).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from art_smoothing_plugin.denoisers import DenoiserTrainer, DnCNN
from art_smoothing_plugin.estimators import DenoisedSmoothingClassifier, RandomizedSmoothingClassifier
from evaluations.data import load_dataset
from evaluations.models import train_cross_entropy
from evaluations.zoo import small_cnn

SIGMAS = (0.25, 0.5)
#: The certification every quality comparison uses: all 500 held-out digits, these sample sizes and seed.
CERTIFY = {"n": 200, "n0": 32, "alpha": 0.001, "seed": 1}
#: The radius at which "certifies more test points" is tested (the first non-zero radius of the table:
#: at r = 0 the clean classifier alone certifies about 92% of the digits at sigma = 0.25).
TEST_RADIUS = 0.25
CONFIGS = ("none", "black-box", "white-box", "mse", "noise-trained")

#: Filled by tests/denoised/test_quality.py, printed at the end of the run (reported, not asserted).
QUALITY_REPORT: list[str] = []


def train_classifier(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int
) -> torch.nn.Module:
    """Plain cross-entropy training on clean inputs (Adam, batches of 64)."""
    return train_cross_entropy(model, x, y, epochs=epochs, batch_size=64, learning_rate=1e-3, seed=seed)


def narrow_cnn(seed: int) -> torch.nn.Module:
    """The zoo's small CNN at half width (8 and 16 channels): a third of the cost per sample, which is
    what certification with thousands of noisy samples per digit pays for."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return small_cnn((1, 8, 8), 10, width=8)


def mlp(nb_classes: int = 10, seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, nb_classes)
        )


@pytest.fixture(scope="session")
def quality_report() -> list[str]:
    """Lines printed at the end of the run."""
    return QUALITY_REPORT


@pytest.fixture(scope="session")
def certify_settings() -> dict:
    return dict(CERTIFY, radius=TEST_RADIUS, sigmas=SIGMAS, configs=CONFIGS)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def clean_classifier(digits) -> torch.nn.Module:
    return train_classifier(narrow_cnn(seed=0), digits.x_train, digits.y_train, epochs=20, seed=0)


@pytest.fixture(scope="session")
def surrogates(digits) -> list[torch.nn.Module]:
    """Stand-ins for a query-only target, trained separately: other seeds, one of them another
    architecture."""
    return [
        train_classifier(narrow_cnn(seed=1), digits.x_train, digits.y_train, 20, 1),
        train_classifier(mlp(seed=2), digits.x_train, digits.y_train, 20, 2),
    ]


@pytest.fixture(scope="session")
def denoisers(digits, clean_classifier, surrogates) -> dict[float, dict[str, DnCNN]]:
    """``{sigma: {"mse": ..., "white-box": ..., "black-box": ...}}``."""
    result = {}
    for sigma in SIGMAS:
        mse = DnCNN(seed=0)  # the default size: 5 layers of 16 channels
        DenoiserTrainer(mse, "mse", sigma=sigma, seed=0, progress=False).fit(
            digits.x_train, nb_epochs=30, batch_size=32
        )
        white = copy.deepcopy(mse)
        DenoiserTrainer(white, "stab", classifier=clean_classifier, lr=1e-3, seed=1, progress=False).fit(
            digits.x_train, nb_epochs=6, batch_size=32
        )
        black = copy.deepcopy(mse)
        DenoiserTrainer(black, "stab", surrogates=surrogates, lr=1e-4, seed=2, progress=False).fit(
            digits.x_train, nb_epochs=6, batch_size=32
        )
        result[sigma] = {"mse": mse, "white-box": white, "black-box": black}
    return result


@pytest.fixture(scope="session")
def noise_trained_classifiers(digits) -> dict[float, torch.nn.Module]:
    """Cohen's baseline: the same architecture trained with Gaussian noise at each sigma."""
    result = {}
    for sigma in SIGMAS:
        model = narrow_cnn(seed=0)
        estimator = RandomizedSmoothingClassifier(
            model,
            input_shape=digits.input_shape,
            nb_classes=10,
            optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
            clip_values=(0.0, 1.0),
            device_type="cpu",
            scale=sigma,
            seed=0,
        )
        estimator.fit(digits.x_train, digits.y_train, batch_size=64, nb_epochs=20)
        result[sigma] = model.eval()
    return result


@pytest.fixture(scope="session")
def certifications(digits, clean_classifier, denoisers, noise_trained_classifiers):
    """``{(sigma, config): CertificationResult}`` on all 500 held-out digits, same seed for every config."""
    results = {}
    for sigma in SIGMAS:
        chains = {
            "none": (clean_classifier, None),
            **{name: (clean_classifier, denoiser) for name, denoiser in denoisers[sigma].items()},
            "noise-trained": (noise_trained_classifiers[sigma], None),
        }
        for name, (classifier, denoiser) in chains.items():
            estimator = DenoisedSmoothingClassifier(
                classifier, denoiser, input_shape=digits.input_shape, nb_classes=10, scale=sigma
            )
            results[sigma, name] = estimator.certify_detailed(
                digits.x_test,
                CERTIFY["n"],
                n0=CERTIFY["n0"],
                alpha=CERTIFY["alpha"],
                seed=CERTIFY["seed"],
            )
    return results


def pytest_terminal_summary(terminalreporter) -> None:
    if QUALITY_REPORT:
        terminalreporter.section("denoised smoothing on digits (reported, not asserted)")
        for line in QUALITY_REPORT:
            terminalreporter.write_line(line)
