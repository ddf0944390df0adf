"""Speed options for certification: batch size chosen for the machine, mixed precision, channels-last.

None of these changes what is certified, only how fast the base classifier is evaluated:

* :func:`autotune_batch_size` picks the number of noisy samples per forward pass when the user gives
  none: on a CUDA device from the free memory and the memory one sample takes (measured by a probe
  forward pass); on a CPU by a short throughput probe over powers of two, since there the fastest batch
  is often a middle one (cache effects), not the largest.
* :func:`accelerated_labels` wraps a labels function so that the forward pass runs under
  ``torch.autocast`` (bf16 or fp16) and/or on channels-last inputs. Noise is still drawn and added in
  fp32 by the sampler before the wrapper is called, so the Gaussian perturbation is exact; only the
  base classifier's arithmetic is in reduced precision. The certificate then holds for the smoothed
  version of *that* base classifier (the one evaluated in reduced precision), which is the classifier a
  user deploying with the same settings runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from ._validation import check_int_at_least, check_positive_float
from .sampling import LabelFunction, make_generator

__all__ = ["PRECISIONS", "accelerated_labels", "autotune_batch_size", "resolve_precision"]

#: Accepted names of the autocast dtypes.
PRECISIONS: dict[str, torch.dtype] = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_precision(precision: str | torch.dtype | None) -> torch.dtype | None:
    """``None``/``"fp32"`` for full precision, else the autocast dtype named by ``precision``."""
    if precision is None or precision in ("fp32", "float32", torch.float32):
        return None
    if isinstance(precision, torch.dtype) and precision in (torch.bfloat16, torch.float16):
        return precision
    if isinstance(precision, str) and precision in PRECISIONS:
        return PRECISIONS[precision]
    raise ValueError(f"precision must be None, 'fp32', 'bf16' or 'fp16', got {precision!r}")


def accelerated_labels(
    labels: LabelFunction,
    *,
    precision: str | torch.dtype | None = None,
    channels_last: bool = False,
) -> LabelFunction:
    """Wrap a labels function: inputs made channels-last (4-D inputs only) and the call run under
    ``torch.autocast`` with ``precision`` on the input's device type. With neither option it returns
    ``labels`` unchanged. For channels-last to pay off, convert the model too:
    ``model.to(memory_format=torch.channels_last)`` (weights keep their values)."""
    if not callable(labels):
        raise ValueError(f"labels must be callable, got {type(labels).__name__}")
    dtype = resolve_precision(precision)
    if dtype is None and not channels_last:
        return labels

    def fast_labels(z: torch.Tensor) -> torch.Tensor:
        if channels_last and z.dim() == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return labels(z)
        with torch.autocast(device_type=z.device.type, dtype=dtype):
            return labels(z)

    return fast_labels


def autotune_batch_size(
    labels: LabelFunction,
    example: torch.Tensor,
    *,
    sigma: float = 0.25,
    max_batch: int = 16384,
    min_batch: int = 32,
    memory_fraction: float = 0.5,
    time_budget_s: float = 3.0,
    timer: Callable[[], float] = time.perf_counter,
) -> int:
    """A number of noisy samples per forward pass suited to this machine and base classifier.

    :param labels: the labels function that certification will call (wrapped as it will be used). The
        probe calls it many times: pass a local computation, never a counted, budgeted or paid one
        (the estimators pass an uncounted copy of a torch chain and do not probe query-only ones).
    :param example: a batch of inputs ``(N, *input_shape)`` on the device to certify on (the first is used).
    :param max_batch, min_batch: the range searched (the result lies within it).
    :param memory_fraction: on CUDA, the share of the currently free memory one batch may take.
    :param time_budget_s: on a CPU, the approximate total time of the throughput probe.

    On CUDA: one probe forward pass of ``min_batch`` samples measures the peak memory per sample;
    the batch is the largest power of two with ``batch * per_sample <= memory_fraction * free``.
    Elsewhere: each power of two in ``[min_batch, max_batch]`` is timed (noise generation and the forward
    pass, as in vote counting) for about ``time_budget_s / number_of_candidates`` seconds, and the one
    with the highest samples per second wins; larger candidates stop being tried once throughput has
    fallen below 60% of the best so far, or once one more candidate would overrun the time budget.
    """
    if not callable(labels):
        raise ValueError(f"labels must be callable, got {type(labels).__name__}")
    if not isinstance(example, torch.Tensor) or not example.is_floating_point() or example.dim() < 2:
        raise ValueError("example must be a floating-point torch.Tensor batch (N, *input_shape) with N >= 1")
    if example.shape[0] < 1:
        raise ValueError("example must hold at least one input")
    min_batch = check_int_at_least("min_batch", min_batch, 1)
    max_batch = check_int_at_least("max_batch", max_batch, min_batch)
    check_positive_float("time_budget_s", time_budget_s)
    if not 0.0 < float(memory_fraction) <= 1.0:
        raise ValueError(f"memory_fraction must lie in (0, 1], got {memory_fraction!r}")
    sigma = check_positive_float("sigma", sigma)
    one = example[:1].detach()
    candidates = [min_batch]
    while candidates[-1] * 2 <= max_batch:
        candidates.append(candidates[-1] * 2)
    generator = make_generator(0, one.device)

    def run(batch: int) -> None:
        noisy = torch.randn((batch, *one.shape[1:]), generator=generator, device=one.device, dtype=one.dtype)
        noisy.mul_(sigma).add_(one)
        labels(noisy)

    with torch.inference_mode():
        if one.device.type == "cuda":
            return _cuda_batch(run, one.device, candidates, float(memory_fraction))
        return _cpu_batch(run, candidates, float(time_budget_s), timer)


def _cuda_batch(
    run: Callable[[int], None], device: torch.device, candidates: list[int], fraction: float
) -> int:
    probe = candidates[0]
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run(probe)
    torch.cuda.synchronize(device)
    per_sample = max(1, (torch.cuda.max_memory_allocated(device) - baseline) // probe)
    free, _ = torch.cuda.mem_get_info(device)
    fitting = [batch for batch in candidates if batch * per_sample <= fraction * free]
    return fitting[-1] if fitting else candidates[0]


def _cpu_batch(
    run: Callable[[int], None], candidates: list[int], budget_s: float, timer: Callable[[], float]
) -> int:
    per_candidate = budget_s / len(candidates)
    best_batch, best_rate = candidates[0], 0.0
    probe_start = timer()
    for batch in candidates:
        remaining = budget_s - (timer() - probe_start)
        if best_rate > 0 and 2 * batch / best_rate > remaining:
            break  # a warm-up and one timed pass of this size would overrun the probe's budget
        run(batch)  # warm-up: allocator, kernels' first call
        samples, start = 0, timer()
        while True:
            run(batch)
            samples += batch
            elapsed = timer() - start
            if elapsed >= per_candidate:
                break
        rate = samples / max(elapsed, 1e-9)
        if rate > best_rate:
            best_batch, best_rate = batch, rate
        elif rate < 0.6 * best_rate:
            break
    return best_batch
