"""Fixtures of the training-method tests: the digits split and tiny models (one intra-op thread, as the
root conftest sets for every test)."""

from __future__ import annotations

import pytest
import torch

from evaluations.data import Dataset, load_dataset


def digits_mlp(seed: int = 0, flat: bool = False) -> torch.nn.Module:
    """64 -> 32 -> 10 perceptron on the 8x8 digits (``flat``: on inputs of shape (64,))."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layers = [torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)]
        return torch.nn.Sequential(*([] if flat else [torch.nn.Flatten()]), *layers)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def make_mlp():
    """Factory of fresh digits MLPs, ``make_mlp(seed=0, flat=False)``."""
    return digits_mlp
