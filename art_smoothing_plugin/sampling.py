"""Gaussian noise and vote counting: the one place where the package draws noise.

Design constraints, all from Cohen et al.'s procedure and the defects of ART's implementation:

* memory is bounded by ``batch_size`` noisy samples, never by the number of samples ``n``;
* noise is drawn with torch on the device of the input, from a dedicated :class:`torch.Generator`
  (never NumPy's or torch's global state), so a seed reproduces a run and nothing else perturbs it;
* noise is added unclipped, in the units of the tensor it is added to;
* votes are counted on the device with ``bincount`` and come back as one small tensor;
* when ``n`` is small, the samples of several inputs share one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["LabelFunction", "count_votes", "gaussian_copies", "make_generator"]

#: Maps a batch of (noisy) inputs to one predicted class index per input, as an integer tensor.
LabelFunction = Callable[[torch.Tensor], torch.Tensor]


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A private generator on ``device``: seeded when ``seed`` is given, from OS entropy otherwise."""
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    return generator


def gaussian_copies(
    x: torch.Tensor, copies: int, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``copies`` noisy versions of each input, ``x[i] + N(0, sigma^2 I)``, laid out input-major as a
    ``(len(x) * copies, *x.shape[1:])`` tensor. Differentiable in ``x`` (the noise is a constant)."""
    noise = torch.randn(
        (x.shape[0], copies, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype
    )
    return (x.unsqueeze(1) + sigma * noise).reshape(x.shape[0] * copies, *x.shape[1:])


def count_votes(
    classify: LabelFunction,
    x: torch.Tensor,
    num_samples: int,
    sigma: float,
    num_classes: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Count the base classifier's votes under Gaussian noise.

    Returns an int64 tensor of shape ``(len(x), num_classes)`` whose row ``i`` counts the labels
    ``classify`` gave to ``num_samples`` independent draws of ``x[i] + N(0, sigma^2 I)``.

    The ``len(x) * num_samples`` samples are classified in chunks of at most ``batch_size`` (samples of
    consecutive inputs share a chunk), so peak memory is that of one chunk. ``on_batch`` is called with
    the number of samples classified after each chunk (for progress bars).
    """
    n_inputs = x.shape[0]
    counts = torch.zeros(n_inputs * num_classes, dtype=torch.int64, device=x.device)
    total = n_inputs * num_samples
    buffer = torch.empty((min(batch_size, total), *x.shape[1:]), dtype=x.dtype, device=x.device)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        noisy = buffer[: stop - start]
        torch.randn(noisy.shape, generator=generator, device=x.device, dtype=x.dtype, out=noisy)
        noisy.mul_(sigma)
        first, last = start // num_samples, (stop - 1) // num_samples
        if first == last:  # the common case for large n: one input, broadcast instead of gathering
            noisy.add_(x[first])
            rows = None
        else:
            rows = torch.arange(start, stop, device=x.device) // num_samples
            noisy.add_(x.index_select(0, rows))
        labels = classify(noisy)
        _check_labels(labels, stop - start, num_classes)
        labels = labels.to(torch.int64)
        if rows is None:
            counts[first * num_classes : (first + 1) * num_classes] += torch.bincount(
                labels, minlength=num_classes
            )
        else:
            counts += torch.bincount(rows * num_classes + labels, minlength=n_inputs * num_classes)
        if on_batch is not None:
            on_batch(stop - start)
    return counts.reshape(n_inputs, num_classes)


def _check_labels(labels: torch.Tensor, expected: int, num_classes: int) -> None:
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8) or labels.shape != (
        expected,
    ):
        raise ValueError(
            f"the base classifier must return one integer class index per input, shape ({expected},); "
            f"got dtype {labels.dtype} and shape {tuple(labels.shape)}"
        )
    if expected and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"the base classifier returned class indices outside [0, {num_classes}); "
            f"got values in [{int(labels.min())}, {int(labels.max())}]"
        )
