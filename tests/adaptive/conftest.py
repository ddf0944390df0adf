"""Fixtures of the adaptive-certification tests: a tiny digits model trained with Gaussian noise once per
session (through the estimator's fit), and one-thread torch for every test (tiny models gain nothing from
a second thread, and on a shared runner its barriers make them many times slower)."""

from __future__ import annotations

import pytest
import torch

from art_smoothing_plugin import RandomizedSmoothingClassifier
from evaluations.data import Dataset, load_dataset

#: sigma of the digits model, in the [0, 1] units of the data.
DIGITS_SIGMA = 0.25


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_sigma() -> float:
    return DIGITS_SIGMA


@pytest.fixture(scope="session")
def digits_estimator(digits: Dataset) -> RandomizedSmoothingClassifier:
    """A 64-32-10 perceptron trained for 30 epochs with noise at sigma = 0.25 (about a second)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )
    estimator = RandomizedSmoothingClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=(1, 8, 8),
        nb_classes=10,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        clip_values=(0.0, 1.0),
        device_type="cpu",
        scale=DIGITS_SIGMA,
        seed=0,
        batch_size=4096,
    )
    estimator.fit(digits.x_train, digits.y_train, batch_size=64, nb_epochs=30)
    torch.set_num_threads(previous)
    return estimator
