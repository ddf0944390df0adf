"""DnCNN (Zhang, Zuo, Chen, Meng & Zhang 2017), the denoiser of Salman et al.'s denoised smoothing.

A plain stack of 3x3 convolutions that predicts the *noise* in its input; the denoised output is the
input minus that prediction (residual learning). The paper's network has 17 layers of 64 channels, which
runs at about 60 samples per second on 2 CPU cores: far too slow to certify with thousands of noise draws
per input on a CPU. The defaults here are small (5 layers of 16 channels, ~7k parameters) so that 8x8 and
28x28 digits train and certify in minutes; ``depth`` and ``width`` give back the paper's size.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._validation import check_int_at_least, check_positive_float
from ._init import seeded, zero_output_layer

__all__ = ["DnCNN"]


class DnCNN(nn.Module):
    """Residual denoiser: ``forward(x) = x - noise_estimate(x)``, same shape in and out.

    Layers: a 3x3 convolution with ReLU, ``depth - 2`` blocks of 3x3 convolution, batch norm (optional)
    and ReLU, and a final 3x3 convolution back to ``channels``. Padding keeps the spatial size, so any
    ``H x W`` works. The last convolution starts at zero, so an untrained DnCNN is the identity: training
    starts from "no denoising" rather than from random corruption of the input.

    :param channels: channels of the images (1 for digits, 3 for colour).
    :param depth: number of convolutions, at least 2 (the paper: 17).
    :param width: channels of the hidden convolutions (the paper: 64).
    :param batch_norm: batch norm in the hidden blocks, as in the paper.
    :param sigma: the Gaussian noise level (in input units) this denoiser is trained for; ``None`` until
        known. :class:`~art_smoothing_plugin.DenoisedSmoothingClassifier` refuses to smooth at another sigma.
    :param seed: seeds the initial weights (torch's global generator is left as it was); ``None`` draws
        them from torch's global generator.
    """

    architecture = "dncnn"

    def __init__(
        self,
        channels: int = 1,
        depth: int = 5,
        width: int = 16,
        batch_norm: bool = True,
        sigma: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int_at_least("channels", channels, 1)
        self.depth = check_int_at_least("depth", depth, 2)
        self.width = check_int_at_least("width", width, 1)
        self.batch_norm = bool(batch_norm)
        self.sigma = None if sigma is None else check_positive_float("sigma", sigma)
        with seeded(seed):
            layers: list[nn.Module] = [
                nn.Conv2d(self.channels, self.width, 3, padding=1),
                nn.ReLU(inplace=True),
            ]
            for _ in range(self.depth - 2):
                layers.append(nn.Conv2d(self.width, self.width, 3, padding=1, bias=not self.batch_norm))
                if self.batch_norm:
                    layers.append(nn.BatchNorm2d(self.width))
                layers.append(nn.ReLU(inplace=True))
            last = nn.Conv2d(self.width, self.channels, 3, padding=1)
            layers.append(last)
            self.noise_estimator = nn.Sequential(*layers)
        zero_output_layer(last)
        # Channels-last convolutions run 2-3 times faster on CPUs (oneDNN's preferred layout).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"DnCNN expects inputs of shape (N, {self.channels}, H, W); got {tuple(x.shape)}"
            )
        noise = self.noise_estimator(x.contiguous(memory_format=torch.channels_last))
        return x - noise.contiguous()

    def config(self) -> dict[str, Any]:
        """The constructor arguments, plain values only (saved beside the weights)."""
        return {
            "channels": self.channels,
            "depth": self.depth,
            "width": self.width,
            "batch_norm": self.batch_norm,
            "sigma": self.sigma,
        }

    def extra_repr(self) -> str:
        return f"depth={self.depth}, width={self.width}, sigma={self.sigma}"
