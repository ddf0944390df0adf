"""Model architectures the project trains itself (no pretrained weights can be downloaded here).

Every builder takes the input shape ``(C, H, W)`` and the number of classes and returns a module that
maps ``(N, C, H, W)`` inputs in [0, 1] to logits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "build_model", "cifar_cnn", "lenet", "small_cnn"]


def small_cnn(input_shape: tuple[int, ...], nb_classes: int, width: int = 16) -> nn.Module:
    """Two 3x3 convolutions and a linear layer: fits 8x8 digits in seconds on a CPU."""
    channels, height, width_px = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * width * (height // 2) * (width_px // 2), 64),
        nn.ReLU(),
        nn.Linear(64, nb_classes),
    )


def lenet(input_shape: tuple[int, ...], nb_classes: int) -> nn.Module:
    """LeNet-5-size network for 28x28 inputs (two 5x5 convolutions, three linear layers)."""
    channels, height, width_px = input_shape
    flat = 16 * (((height - 4) // 2 - 4) // 2) * (((width_px - 4) // 2 - 4) // 2)
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, nb_classes),
    )


def cifar_cnn(input_shape: tuple[int, ...], nb_classes: int) -> nn.Module:
    """conv 3->16 (3x3), ReLU, max-pool, conv 16->32 (3x3), ReLU, max-pool, linear: the CIFAR-size CNN
    of the throughput benchmark."""
    channels, height, width_px = input_shape
    return nn.Sequential(
        nn.Conv2d(channels, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * (height // 4) * (width_px // 4), nb_classes),
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": small_cnn,
    "lenet": lenet,
    "cifar_cnn": cifar_cnn,
}


def build_model(architecture: str, input_shape: tuple[int, ...], nb_classes: int, seed: int = 0) -> nn.Module:
    """Build an architecture by name with weights initialised from ``seed``."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; expected one of {', '.join(ARCHITECTURES)}")
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W), got {input_shape!r}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return ARCHITECTURES[architecture](tuple(input_shape), nb_classes)
