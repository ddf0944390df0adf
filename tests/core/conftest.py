"""Fixtures of the core tests: the digits split and one tiny model trained on it with Gaussian noise, once
per session (about a second on one core), through the estimator's own fit."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from art_smoothing_plugin import RandomizedSmoothingClassifier
from evaluations.data import Dataset, load_dataset

#: sigma of the digits model, in the [0, 1] units of the data.
DIGITS_SIGMA = 0.25


def digits_mlp(seed: int = 0) -> torch.nn.Module:
    """64 -> 64 -> 10 perceptron: small enough to train in a second, accurate enough (> 90%) to attack."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )


def digits_estimator(model: torch.nn.Module, **kwargs) -> RandomizedSmoothingClassifier:
    options = dict(
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=32,
        scale=DIGITS_SIGMA,
        seed=0,
    )
    options.update(kwargs)
    return RandomizedSmoothingClassifier(model, **options)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run the core tests (and their module fixtures) on one intra-op thread. Every model here is tiny:
    a second thread gains little, and on a shared or oversubscribed CI runner its barriers made runs
    5-30x slower (measured: the digits MLP trained in 1.5 s on one thread, 52 s on two under load)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def make_mlp():
    """Factory of fresh digits MLPs (tests import nothing from conftest under --import-mode=importlib)."""
    return digits_mlp


@pytest.fixture(scope="session")
def make_estimator():
    """Factory ``make_estimator(model, **overrides)`` of digits estimators (sigma DIGITS_SIGMA, seed 0)."""
    return digits_estimator


@pytest.fixture(scope="session")
def digits_sigma() -> float:
    return DIGITS_SIGMA


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def trained_digits_state(digits: Dataset) -> dict:
    """Weights of the digits MLP after Gaussian-noise training at DIGITS_SIGMA (Cohen's recipe)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run before the per-test one_torch_thread
    try:
        model = digits_mlp()
        estimator = digits_estimator(model)
        estimator.fit(digits.x_train, digits.y_train, batch_size=64, nb_epochs=30)
    finally:
        torch.set_num_threads(previous)
    return copy.deepcopy(model.state_dict())


@pytest.fixture
def trained_estimator(trained_digits_state: dict) -> RandomizedSmoothingClassifier:
    """A fresh estimator around a fresh copy of the trained weights (tests may change either)."""
    model = digits_mlp()
    model.load_state_dict(trained_digits_state)
    model.eval()
    return digits_estimator(model)


@pytest.fixture
def test_subset(digits: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """The first 100 test digits: enough for accuracy comparisons, few enough to attack in seconds."""
    return digits.x_test[:100], digits.y_test[:100]
