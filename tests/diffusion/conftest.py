"""Session fixtures for diffusion denoised smoothing: the digits split, a classifier trained on clean digits
only, and a tiny DDPM trained on the digits training split (cached in pytest's cache folder, so only the
first run of a checkout pays its ~1 CPU minute)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from art_smoothing_plugin.denoisers.ddpm import TrainedDDPM, train_ddpm
from evaluations.data import Dataset, load_dataset
from evaluations.models import train_cross_entropy
from evaluations.zoo import build_model

#: The tiny DDPM of the tests: 16 channels at 8x8, trained on t <= 300 (sigma <= 0.5 needs t* <= 258 on
#: the linear schedule), 40 epochs of the 1,297 training digits.
TINY_DDPM = dict(
    schedule="linear",
    num_timesteps=1000,
    base_channels=16,
    channel_multipliers=(1, 2),
    max_train_timestep=300,
    epochs=40,
    batch_size=128,
    learning_rate=2e-3,
    seed=0,
)


@pytest.fixture(scope="session")
def digits() -> Dataset:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def clean_classifier(digits: Dataset) -> torch.nn.Module:
    """small_cnn trained on clean digits only (no noise augmentation): ~98% clean test accuracy."""
    model = build_model("small_cnn", digits.input_shape, digits.nb_classes, seed=0)
    train_cross_entropy(
        model, digits.x_train, digits.y_train, epochs=30, batch_size=64, learning_rate=3e-3, seed=0
    )
    accuracy = float(np.mean(model(torch.as_tensor(digits.x_test)).argmax(1).numpy() == digits.y_test))
    assert accuracy > 0.9, f"the clean digits classifier should reach > 90% test accuracy, got {accuracy:.3f}"
    return model


@pytest.fixture(scope="session")
def ddpm_cache_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("art-smoothing-ddpm"))
    return tmp_path_factory.mktemp("ddpm-cache")


@pytest.fixture(scope="session")
def tiny_ddpm(digits: Dataset, ddpm_cache_dir: Path) -> TrainedDDPM:
    return train_ddpm(digits.x_train, cache_dir=ddpm_cache_dir, progress=False, **TINY_DDPM)
