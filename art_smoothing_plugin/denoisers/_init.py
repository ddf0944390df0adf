"""Weight initialisation shared by the denoisers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Within this block, layers draw their initial weights from ``seed`` and torch's global generator is
    left as it was; with ``seed=None`` they draw from the global generator as usual."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


def zero_output_layer(last: nn.Conv2d) -> None:
    """Zero the layer that produces the correction, so that the untrained denoiser is the identity."""
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
