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
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["LabelFunction", "count_votes", "gaussian_copies", "gaussian_noise", "make_generator"]

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


def gaussian_noise(
    x: torch.Tensor, copies: int, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``copies`` draws of ``N(0, sigma^2 I)`` per input of ``x``, shaped ``(len(x), copies, *x.shape[1:])``,
    on ``x``'s device and in its dtype. Kept apart from the inputs so that one draw can serve several
    points (training methods reuse it for an input and its adversarial or mixed versions)."""
    noise = torch.randn(
        (x.shape[0], copies, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype
    )
    return sigma * noise


def gaussian_copies(
    x: torch.Tensor, copies: int, sigma: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``copies`` noisy versions of each input, ``x[i] + N(0, sigma^2 I)``, laid out input-major as a
    ``(len(x) * copies, *x.shape[1:])`` tensor. Differentiable in ``x`` (the noise is a constant)."""
    noise = gaussian_noise(x, copies, sigma, generator)
    return (x.unsqueeze(1) + noise).reshape(x.shape[0] * copies, *x.shape[1:])


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
    fill = _GaussianFiller(generator, x.device, buffer.numel())
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        noisy = buffer[: stop - start]
        fill(noisy)
        first, last = start // num_samples, (stop - 1) // num_samples
        if first == last:  # the common case for large n: one input, broadcast instead of gathering
            clean = x[first]
            rows = None
        else:
            rows = torch.arange(start, stop, device=x.device) // num_samples
            clean = x.index_select(0, rows)
        torch.add(clean, noisy, alpha=sigma, out=noisy)  # x + sigma * z in one pass over the batch
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


#: Independent noise streams per batch on the CPU. PyTorch fills a CPU tensor with normal noise on one
#: thread (the generator is locked), which alone costs about a tenth of a small CNN's forward pass;
#: several streams, each with its own generator, fill parts of the batch in parallel threads. The number
#: is fixed, not the thread count, so that a seed gives the same noise on every machine.
CPU_NOISE_STREAMS = 4
#: Below this many values per batch, threads cost more than they save: one stream fills the batch.
_PARALLEL_FILL_MIN_NUMEL = 1 << 18
_pool: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=CPU_NOISE_STREAMS, thread_name_prefix="noise")
    return _pool


class _GaussianFiller:
    """Fills tensors with standard normal noise from ``generator`` alone, or, for large CPU batches,
    from ``CPU_NOISE_STREAMS`` child generators seeded from it (so one seed still fixes everything)."""

    def __init__(self, generator: torch.Generator | None, device: torch.device, numel: int) -> None:
        self.device = device
        if device.type == "cpu" and numel >= _PARALLEL_FILL_MIN_NUMEL:
            seeds = torch.randint(0, 2**62, (CPU_NOISE_STREAMS,), generator=generator).tolist()
            self.generators = [make_generator(seed, device) for seed in seeds]
        else:
            self.generators = [generator]

    def __call__(self, out: torch.Tensor) -> None:
        if len(self.generators) == 1 or out.shape[0] < len(self.generators):
            torch.randn(out.shape, generator=self.generators[0], device=self.device, dtype=out.dtype, out=out)
            return
        parts = out.chunk(len(self.generators))  # contiguous views along the batch dimension
        # Inference mode is thread-local: the workers must enter it to write into an inference tensor.
        inference = torch.is_inference(out)
        futures = [
            _thread_pool().submit(self._fill_part, part, gen, inference)
            for part, gen in zip(parts, self.generators, strict=False)
        ]
        for future in futures:
            future.result()

    def _fill_part(self, part: torch.Tensor, generator: torch.Generator, inference: bool) -> None:
        with torch.inference_mode(inference):
            torch.randn(part.shape, generator=generator, device=self.device, dtype=part.dtype, out=part)


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
