"""Gaussian noise and vote counting: the one place where the package draws noise.

Design constraints, all from Cohen et al.'s procedure and the defects of ART's implementation:

* memory is bounded by ``batch_size`` noisy samples, never by the number of samples ``n``;
* noise is drawn with torch on the device of the input, from dedicated :class:`torch.Generator` objects
  (never NumPy's or torch's global state), so a seed reproduces a run and nothing else perturbs it;
* noise is added unclipped, in the units of the tensor it is added to;
* votes are counted on the device with ``bincount`` and come back as one small tensor;
* when ``n`` is small, the samples of several inputs share one forward pass.

**Keyed noise.** The noise of an input does not depend on how the work is cut. Sample ``j`` of the input
whose *global index* is ``i`` (its position in the whole call, whichever shard or chunk it is computed
in) in phase ``p`` (selection, estimation, or look ``k`` of adaptive certification) is a function of
``(seed, call, i, p, j)`` alone: a :class:`NoiseKey` ``(seed, call)`` names the call, and the samples of
``(i, p)`` come in blocks of :func:`block_samples` samples, dealt round-robin to :data:`NOISE_LANES`
generators whose seeds derive from ``(seed, call, i)`` (:func:`lane_seeds`); each lane draws its blocks
in order, one ``randn`` call per block. So splitting the inputs of a call into shards, chunks or resumed
pieces, reordering them, or changing ``batch_size`` draws the very same noise for every input; different
lanes fill a batch in parallel threads on a CPU.

**Batches on a fixed grid.** Which samples share a forward pass is fixed by the global indices too
(:func:`batch_plan`): with ``m`` samples per input and batch size ``B``, the inputs ``i`` with the same
``i // G`` share a batch, ``G`` the largest power of two with ``G * m <= B`` (:func:`group_size`); for
``m > B`` each input fills ``ceil(m / B)`` batches of its own. Powers of two nest, so a shard that starts
at a multiple of the largest group of a call's phases (:func:`shard_alignment`) evaluates exactly the
batches a single process evaluates for its inputs, in every phase and every look of adaptive
certification (whichever inputs are still running): that is what makes counts bit-identical across
shards (see docs/scale-out.md for what torch guarantees beyond that).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "ESTIMATION",
    "KeyedFiller",
    "NOISE_LANES",
    "SELECTION",
    "LabelFunction",
    "NoiseKey",
    "batch_plan",
    "block_samples",
    "count_votes",
    "gaussian_copies",
    "gaussian_noise",
    "group_size",
    "keyed_noise",
    "lane_seeds",
    "look_phase",
    "make_generator",
    "shard_alignment",
]

#: Maps a batch of (noisy) inputs to one predicted class index per input, as an integer tensor.
LabelFunction = Callable[[torch.Tensor], torch.Tensor]

#: Phases of a call: the ``n0`` selection samples of CERTIFY, the ``n`` estimation samples (also PREDICT's
#: and plain vote counting's samples), and look ``k`` of adaptive certification (:func:`look_phase`).
SELECTION = 0
ESTIMATION = 1


def look_phase(look: int) -> int:
    """The phase of the estimation samples drawn for look ``look`` (0-based) of adaptive certification:
    ``ESTIMATION + look``, so that adaptive certification with a single look draws exactly the estimation
    samples of fixed-n CERTIFY."""
    return ESTIMATION + int(look)


#: Generators per (call, input): an input's noise blocks are dealt round-robin to them, so that a CPU fills
#: one batch from several generators in parallel threads (torch draws CPU normals on one thread per
#: generator). Fixed, not the thread count, so that a seed gives the same noise on every machine; the
#: threads that fill are as many as torch's intra-op threads (up to this), so a process given one core
#: (a Ray worker with one CPU) fills on one thread instead of oversubscribing its share.
NOISE_LANES = 4
#: Values per noise block (each block is one ``randn`` call on one lane): about 256 KiB of float32.
NOISE_BLOCK_VALUES = 1 << 16
#: Below this many values per batch, threads cost more than they save: one thread fills the batch.
_PARALLEL_FILL_MIN_NUMEL = 1 << 18
_MASK64 = (1 << 64) - 1
_MASK32 = (1 << 32) - 1


@dataclass(frozen=True)
class NoiseKey:
    """Names the noise of one call: ``seed`` (the smoother's, or fresh entropy) and ``call``, the number
    of calls the smoother made before this one (each call draws fresh noise). A distributed call computes
    it once on the driver and sends it to every shard."""

    seed: int
    call: int

    def __post_init__(self) -> None:
        for name in ("seed", "call"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"NoiseKey.{name} must be an integer, got {value!r}")

    @staticmethod
    def fresh() -> NoiseKey:
        """A key from OS entropy (what ``seed=None`` means)."""
        return NoiseKey(secrets.randbits(63), 0)


def _mix64(z: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit words with full avalanche."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def lane_seeds(key: NoiseKey, index: int, phase: int) -> list[int]:
    """The seeds of the :data:`NOISE_LANES` generators of input ``index`` in ``phase``.

    torch's CPU generator (MT19937) keeps only the low 32 bits of a seed, so the seeds are 32-bit: a base
    derived from ``(seed, call, index)`` by SplitMix64, plus ``phase * NOISE_LANES + lane`` (mod 2^32).
    Within one input the generators of all phases and lanes therefore have distinct seeds by construction
    (distinct MT19937 states): its selection and estimation samples, and every look's, are independent.
    Two different inputs may share a seed with probability about 2^-32 per pair; that does not touch any
    per-input guarantee."""
    base = _mix64(
        _mix64(_mix64(int(key.seed) & _MASK64) ^ (int(key.call) & _MASK64)) ^ (int(index) & _MASK64)
    )
    start = (base & _MASK32) + phase * NOISE_LANES
    return [(start + lane) & _MASK32 for lane in range(NOISE_LANES)]


def block_samples(sample_numel: int) -> int:
    """Samples per noise block for inputs of ``sample_numel`` values (at least one)."""
    return max(1, NOISE_BLOCK_VALUES // max(1, int(sample_numel)))


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


#: One piece of a batch: (row of ``x``, first sample, number of samples) of one input.
Piece = tuple[int, int, int]


def group_size(samples_per_input: int, batch_size: int) -> int:
    """Inputs per batch on the grid: the largest power of two ``G`` with ``G * samples_per_input <=
    batch_size``, or 1 when one input's samples fill more than a batch."""
    fit = int(batch_size) // int(samples_per_input)
    return 1 << (fit.bit_length() - 1) if fit >= 1 else 1


def shard_alignment(samples_per_phase: Sequence[int], batch_size: int) -> int:
    """Where shards may be cut for bit-identical results: a multiple of this many inputs is a batch
    boundary in every phase (``samples_per_phase``: the samples per input of each phase of the call)."""
    return max((group_size(m, batch_size) for m in samples_per_phase), default=1)


def batch_plan(indices: np.ndarray, samples_per_input: int, batch_size: int) -> Iterator[list[Piece]]:
    """The batches of one phase, on the grid of global indices (see the module docstring).

    :param indices: the global index of each row, in the order the rows are given.
    :returns: an iterator of batches, each a list of pieces ``(row, first_sample, count)`` in sample
        order, together at most ``batch_size`` samples.
    """
    m, size = int(samples_per_input), int(batch_size)
    if m <= size:
        groups = np.asarray(indices, dtype=np.int64) // group_size(m, size)
        cuts = [0, *(np.flatnonzero(np.diff(groups)) + 1).tolist(), len(groups)]
        for start, stop in zip(cuts[:-1], cuts[1:], strict=False):
            if stop > start:
                yield [(row, 0, m) for row in range(start, stop)]
        return
    for row in range(len(indices)):
        for first in range(0, m, size):
            yield [(row, first, min(size, m - first))]


class _InputNoise:
    """The noise of one input in one phase: its lanes' generators, each drawing its blocks in order, and
    the blocks a batch boundary cut in two (kept until their second part is used)."""

    def __init__(self, key: NoiseKey, index: int, phase: int, device: torch.device) -> None:
        self.seeds = lane_seeds(key, index, phase)
        self.device = device
        self.generators: list[torch.Generator | None] = [None] * NOISE_LANES
        self.drawn = [0] * NOISE_LANES  # blocks drawn so far, per lane
        self.partial: dict[int, torch.Tensor] = {}

    def draw(self, block: int, out: torch.Tensor) -> None:
        lane = block % NOISE_LANES
        if self.drawn[lane] != block // NOISE_LANES:  # pragma: no cover - guarded by the plan's order
            raise RuntimeError(f"noise block {block} drawn out of order")
        generator = self.generators[lane]
        if generator is None:
            generator = self.generators[lane] = make_generator(self.seeds[lane], self.device)
        torch.randn(out.shape, generator=generator, device=self.device, dtype=out.dtype, out=out)
        self.drawn[lane] += 1


class KeyedFiller:
    """Fills batches of one phase with the keyed noise of their inputs (see the module docstring).

    :param key: the call's key.
    :param phase: the phase (:data:`SELECTION`, :data:`ESTIMATION`, :func:`look_phase`).
    :param samples_per_input: ``m``, the number of samples each input gets in this phase.
    :param sample_shape: the shape of one sample (one input).
    """

    def __init__(
        self,
        key: NoiseKey,
        phase: int,
        samples_per_input: int,
        sample_shape: Sequence[int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.key, self.phase, self.m = key, int(phase), int(samples_per_input)
        self.sample_numel = int(np.prod(tuple(sample_shape), dtype=np.int64))
        self.block = block_samples(self.sample_numel)
        self.device, self.dtype = torch.device(device), dtype
        self.inputs: dict[int, _InputNoise] = {}

    def _input(self, index: int) -> _InputNoise:
        state = self.inputs.get(index)
        if state is None:
            state = self.inputs[index] = _InputNoise(self.key, index, self.phase, self.device)
        return state

    def fill(self, out: torch.Tensor, pieces: Sequence[tuple[int, int, int]]) -> None:
        """Fill ``out`` (``(samples, *sample_shape)``, contiguous) with the noise of ``pieces``: each a
        ``(global index, first sample, count)`` of one input, laid out one after the other in ``out``.
        The pieces of one input must come in sample order across calls (as :func:`batch_plan` gives)."""
        flat = out.view(out.shape[0], -1)
        # (input, lane) -> that input's state and the blocks the lane draws now, in order
        draws: dict[tuple[int, int], tuple[_InputNoise, list[tuple[int, torch.Tensor]]]] = {}
        copies: list[tuple[torch.Tensor, torch.Tensor, int, int]] = []
        row = 0
        for index, first, count in pieces:
            state = self._input(index)
            stop = first + count
            for block in range(first // self.block, (stop - 1) // self.block + 1):
                lo, hi = block * self.block, min((block + 1) * self.block, self.m)
                take_lo, take_hi = max(first, lo), min(stop, hi)
                target = flat[row + take_lo - first : row + take_hi - first]
                lane = draws.setdefault((index, block % NOISE_LANES), (state, []))[1]
                if take_lo == lo and take_hi == hi:  # the whole block lands in this batch
                    lane.append((block, target))
                    continue
                # A batch boundary cuts this block: draw it whole once, keep it for its other part.
                cached = state.partial.pop(block, None)
                if cached is None:
                    cached = torch.empty((hi - lo, self.sample_numel), device=self.device, dtype=self.dtype)
                    lane.append((block, cached))
                if take_hi < hi:
                    state.partial[block] = cached
                copies.append((target, cached, take_lo - lo, take_hi - lo))
            row += count
            if stop == self.m:
                del self.inputs[index]  # all its samples are planned: nothing of it is needed again
        jobs = [job for job in draws.values() if job[1]]
        total = sum(target.numel() for _, blocks in jobs for _, target in blocks)
        inference = torch.is_inference_mode_enabled()
        threads = min(NOISE_LANES, torch.get_num_threads())
        if self.device.type != "cpu" or threads < 2 or len(jobs) < 2 or total < _PARALLEL_FILL_MIN_NUMEL:
            _draw_share(jobs, inference)
        else:
            # Each (input, lane) draws its blocks in order on its own generator; threads take whole lanes
            # (which thread draws a lane does not change its values).
            shares = [jobs[k::threads] for k in range(threads)]
            futures = [_thread_pool().submit(_draw_share, share, inference) for share in shares if share]
            for future in futures:
                future.result()
        for target, cached, lo, hi in copies:
            target.copy_(cached[lo:hi])


def _draw_share(jobs: list[tuple[_InputNoise, list[tuple[int, torch.Tensor]]]], inference: bool) -> None:
    # Inference mode is thread-local: a worker thread must enter it to write into an inference tensor.
    with torch.inference_mode(inference):
        for state, blocks in jobs:
            for block, target in blocks:
                state.draw(block, target)


_pool: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=NOISE_LANES, thread_name_prefix="noise")
    return _pool


def count_votes(
    classify: LabelFunction,
    x: torch.Tensor,
    num_samples: int,
    sigma: float,
    num_classes: int,
    batch_size: int,
    key: NoiseKey,
    phase: int = ESTIMATION,
    indices: Sequence[int] | np.ndarray | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Count the base classifier's votes under Gaussian noise.

    Returns an int64 tensor of shape ``(len(x), num_classes)`` whose row ``r`` counts the labels
    ``classify`` gave to ``num_samples`` independent draws of ``x[r] + N(0, sigma^2 I)``.

    :param key: the call's :class:`NoiseKey`; with ``phase`` and each row's global index it fixes the noise.
    :param indices: the global index of each row of ``x`` (default ``0, 1, ...``): the same input at the
        same global index gets the same noise in whatever shard, chunk or order it is counted.
    :param on_batch: called with the number of samples classified after each batch (for progress bars).

    The samples are classified in batches of at most ``batch_size`` on the grid of :func:`batch_plan`
    (samples of inputs in the same group share a batch), so peak memory is that of one batch.
    """
    n_inputs = x.shape[0]
    rows_index = np.arange(n_inputs, dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    if rows_index.shape != (n_inputs,) or (n_inputs and rows_index.min() < 0):
        raise ValueError(
            f"indices must give one global index >= 0 per input, shape ({n_inputs},); got shape "
            f"{rows_index.shape}"
        )
    counts = torch.zeros(n_inputs * num_classes, dtype=torch.int64, device=x.device)
    if n_inputs == 0:
        return counts.reshape(0, num_classes)
    buffer = torch.empty(
        (min(batch_size, n_inputs * num_samples), *x.shape[1:]), dtype=x.dtype, device=x.device
    )
    filler = KeyedFiller(key, phase, num_samples, x.shape[1:], x.device, x.dtype)
    for pieces in batch_plan(rows_index, num_samples, batch_size):
        size = sum(count for _, _, count in pieces)
        noisy = buffer[:size]
        filler.fill(noisy, [(int(rows_index[row]), first, count) for row, first, count in pieces])
        first_row = pieces[0][0]
        if len(pieces) == 1:  # the common case for large n: one input, broadcast instead of gathering
            clean = x[first_row]
            rows = None
        else:
            rows = torch.arange(first_row, first_row + len(pieces), device=x.device).repeat_interleave(
                num_samples
            )
            clean = x.index_select(0, rows)
        torch.add(clean, noisy, alpha=sigma, out=noisy)  # x + sigma * z in one pass over the batch
        labels = classify(noisy)
        _check_labels(labels, size, num_classes)
        labels = labels.to(torch.int64)
        if rows is None:
            counts[first_row * num_classes : (first_row + 1) * num_classes] += torch.bincount(
                labels, minlength=num_classes
            )
        else:
            counts += torch.bincount(rows * num_classes + labels, minlength=n_inputs * num_classes)
        if on_batch is not None:
            on_batch(size)
    return counts.reshape(n_inputs, num_classes)


def keyed_noise(
    key: NoiseKey,
    phase: int,
    index: int,
    samples_per_input: int,
    sample_shape: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """All ``samples_per_input`` standard normal noise samples of input ``index`` in ``phase`` of the call
    ``key``, as one ``(samples_per_input, *sample_shape)`` tensor: what :func:`count_votes` adds (times
    sigma) to that input, whatever the batches. For tests and benchmarks; memory grows with the count."""
    out = torch.empty((samples_per_input, *sample_shape), device=device, dtype=dtype)
    KeyedFiller(key, phase, samples_per_input, sample_shape, torch.device(device), dtype).fill(
        out, [(index, 0, samples_per_input)]
    )
    return out


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
