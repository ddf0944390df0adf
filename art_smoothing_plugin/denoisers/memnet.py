"""MemNet (Tai, Yang, Liu & Xu 2017), the second denoiser of Salman et al.'s denoised smoothing.

A feature extractor, a chain of *memory blocks* and a reconstruction layer, with a global residual
connection (the network predicts the correction to its input). Each memory block holds

* a *recursive unit*: one residual block (two 3x3 convolutions, pre-activated by batch norm and ReLU)
  applied ``recursions`` times with shared weights; its ``recursions`` outputs are the block's
  short-term memory;
* a *gate unit*: a 1x1 convolution that reads the short-term memory together with the long-term memory
  (the outputs of the feature extractor and of every earlier block) and keeps ``width`` channels.

The paper's multi-supervised variant (a weighted average of reconstructions from every block) is left
out: the output is reconstructed from the last block only. The paper uses 6 blocks of 6 recursions at
64 channels; the defaults here (2 blocks, 2 recursions, 16 channels) train on a CPU in minutes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._validation import check_int_at_least, check_positive_float
from ._init import seeded, zero_output_layer

__all__ = ["MemNet"]


def _pre_activated_conv(in_channels: int, out_channels: int, kernel: int, batch_norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.BatchNorm2d(in_channels)] if batch_norm else []
    layers += [nn.ReLU(), nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2)]
    return nn.Sequential(*layers)


class _MemoryBlock(nn.Module):
    def __init__(self, width: int, recursions: int, long_term_inputs: int, batch_norm: bool) -> None:
        super().__init__()
        self.recursions = recursions
        self.residual = nn.Sequential(
            _pre_activated_conv(width, width, 3, batch_norm), _pre_activated_conv(width, width, 3, batch_norm)
        )
        self.gate = _pre_activated_conv(width * (recursions + long_term_inputs), width, 1, batch_norm)

    def forward(self, x: torch.Tensor, long_term: list[torch.Tensor]) -> torch.Tensor:
        short_term = []
        state = x
        for _ in range(self.recursions):  # the same weights at every recursion
            state = state + self.residual(state)
            short_term.append(state)
        return self.gate(torch.cat(short_term + long_term, dim=1))


class MemNet(nn.Module):
    """Residual denoiser with memory blocks: ``forward(x) = x + reconstruct(blocks(extract(x)))``.

    Same shape in and out; padding keeps the spatial size. The reconstruction convolution starts at
    zero, so an untrained MemNet is the identity.

    :param channels: channels of the images.
    :param width: channels of every hidden feature map (the paper: 64).
    :param memory_blocks: number of memory blocks (the paper: 6).
    :param recursions: recursions of the residual block inside each memory block (the paper: 6).
    :param batch_norm: batch norm in the pre-activations, as in the paper.
    :param sigma: the noise level (in input units) this denoiser is trained for; ``None`` until known.
    :param seed: seeds the initial weights (torch's global generator is left as it was); ``None`` draws
        them from torch's global generator.
    """

    architecture = "memnet"

    def __init__(
        self,
        channels: int = 1,
        width: int = 16,
        memory_blocks: int = 2,
        recursions: int = 2,
        batch_norm: bool = True,
        sigma: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.channels = check_int_at_least("channels", channels, 1)
        self.width = check_int_at_least("width", width, 1)
        self.memory_blocks = check_int_at_least("memory_blocks", memory_blocks, 1)
        self.recursions = check_int_at_least("recursions", recursions, 1)
        self.batch_norm = bool(batch_norm)
        self.sigma = None if sigma is None else check_positive_float("sigma", sigma)
        with seeded(seed):
            self.extract = nn.Conv2d(self.channels, self.width, 3, padding=1)
            # Block m reads the long-term memory of the extractor and of blocks 1 .. m-1: m inputs.
            self.blocks = nn.ModuleList(
                _MemoryBlock(self.width, self.recursions, m + 1, self.batch_norm)
                for m in range(self.memory_blocks)
            )
            self.reconstruct = _pre_activated_conv(self.width, self.channels, 3, self.batch_norm)
        zero_output_layer(self.reconstruct[-1])
        # Channels-last convolutions run 2-3 times faster on CPUs (oneDNN's preferred layout).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(
                f"MemNet expects inputs of shape (N, {self.channels}, H, W); got {tuple(x.shape)}"
            )
        features = self.extract(x.contiguous(memory_format=torch.channels_last))
        long_term = [features]
        for block in self.blocks:
            features = block(features, long_term)
            long_term = long_term + [features]
        return x + self.reconstruct(features).contiguous()

    def config(self) -> dict[str, Any]:
        """The constructor arguments, plain values only (saved beside the weights)."""
        return {
            "channels": self.channels,
            "width": self.width,
            "memory_blocks": self.memory_blocks,
            "recursions": self.recursions,
            "batch_norm": self.batch_norm,
            "sigma": self.sigma,
        }

    def extra_repr(self) -> str:
        return (
            f"width={self.width}, memory_blocks={self.memory_blocks}, recursions={self.recursions}, "
            f"sigma={self.sigma}"
        )
