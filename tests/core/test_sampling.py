"""The noise and vote-counting layer: the noise is N(0, sigma^2 I) in the input's units, unclipped, from
private generators keyed by the call; votes are exact counts; memory is one batch, whatever n is. (How the
noise does not depend on how the work is cut: test_keyed_noise.py.)"""

from __future__ import annotations

import contextlib

import pytest
import torch
from scipy import stats

from art_smoothing_plugin.sampling import NoiseKey, count_votes, gaussian_copies, make_generator


def first_coordinate_sign(z: torch.Tensor) -> torch.Tensor:
    """Class 1 where the first coordinate is positive: P(class 1 | x) = Phi(x_0 / sigma) under noise."""
    return (z.reshape(z.shape[0], -1)[:, 0] > 0).to(torch.int64)


def test_make_generator_seeded_reproduces_and_unseeded_differs() -> None:
    a = torch.randn(100, generator=make_generator(3))
    b = torch.randn(100, generator=make_generator(3))
    c = torch.randn(100, generator=make_generator(4))
    d = torch.randn(100, generator=make_generator(None))
    e = torch.randn(100, generator=make_generator(None))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(d, e)


def test_gaussian_copies_layout_scale_and_gradient() -> None:
    sigma, copies = 0.3, 20_000
    x = torch.tensor([[0.0, 0.0], [5.0, -5.0]], requires_grad=True)
    noisy = gaussian_copies(x, copies, sigma, make_generator(0))
    assert noisy.shape == (2 * copies, 2)
    per_input = noisy.detach().reshape(2, copies, 2)  # input-major layout
    noise = per_input - x.detach().unsqueeze(1)
    # Sample mean within 5 standard errors (sigma / sqrt(copies)) of 0; a false alarm has p < 1e-6.
    assert noise.mean(dim=1).abs().max() < 5 * sigma / copies**0.5
    # Sample variance: (copies - 1) s^2 / sigma^2 ~ chi^2(copies - 1); accept between its 1e-6 quantiles.
    chi2 = (copies - 1) * noise.var(dim=1) / sigma**2
    low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], copies - 1)
    assert torch.all((chi2 > low) & (chi2 < high))
    # The noise is a constant: d(sum of copies)/dx = number of copies.
    noisy.sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, float(copies)))


def test_counts_rows_sum_to_n_and_follow_the_true_probability() -> None:
    # x_0 = sigma: the base classifier says class 1 with probability Phi(1) = 0.8413 under the noise.
    sigma, n = 0.5, 20_000
    x = torch.tensor([[0.5, 0.0, 0.0], [-0.5, 0.0, 0.0], [0.0, 0.0, 0.0]])
    counts = count_votes(first_coordinate_sign, x, n, sigma, 2, batch_size=777, key=NoiseKey(1, 0))
    assert counts.dtype == torch.int64 and counts.shape == (3, 2)
    assert torch.equal(counts.sum(dim=1), torch.full((3,), n))
    for row, p_class_one in zip(counts.tolist(), [stats.norm.cdf(1), stats.norm.cdf(-1), 0.5], strict=True):
        # Exact two-sided binomial test: a correct sampler fails this with probability 1e-4.
        assert stats.binomtest(row[1], n, p_class_one).pvalue > 1e-4


def test_noise_is_unclipped_and_in_input_units() -> None:
    seen: list[torch.Tensor] = []

    def record(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return torch.zeros(z.shape[0], dtype=torch.int64)

    x = torch.zeros(1, 4)  # on the lower edge of a [0, 1] box: half of the noisy values must be negative
    count_votes(record, x, 2000, 2.0, 2, batch_size=500, key=NoiseKey(0, 0))
    values = torch.cat(seen)
    assert values.min() < -1.0  # unclipped: far outside [0, 1]
    assert abs(float(values.std()) - 2.0) < 0.1  # sigma = 2 in the units of x (8000 values)


def test_batches_never_exceed_batch_size_and_cover_every_sample() -> None:
    sizes: list[int] = []
    progress: list[int] = []

    def record(z: torch.Tensor) -> torch.Tensor:
        sizes.append(z.shape[0])
        return torch.zeros(z.shape[0], dtype=torch.int64)

    x = torch.zeros(7, 3)
    count_votes(record, x, 130, 0.1, 2, batch_size=64, key=NoiseKey(0, 0), on_batch=progress.append)
    assert max(sizes) <= 64
    assert sum(sizes) == 7 * 130
    assert progress == sizes


def test_samples_of_consecutive_inputs_are_attributed_to_the_right_input() -> None:
    # Inputs 0, 10, 20, ... with tiny noise: the classifier reads the input's index off its value, so
    # every vote must land on the diagonal, also for the chunks that straddle two inputs (batch 7, n 5).
    x = (10.0 * torch.arange(6, dtype=torch.float32)).reshape(6, 1)

    def index_of_value(z: torch.Tensor) -> torch.Tensor:
        return torch.round(z[:, 0] / 10.0).to(torch.int64)

    counts = count_votes(index_of_value, x, 5, 1e-3, 6, batch_size=7, key=NoiseKey(0, 0))
    assert torch.equal(counts, 5 * torch.eye(6, dtype=torch.int64))


def test_a_seed_reproduces_counts_and_other_seeds_differ() -> None:
    x = torch.zeros(20, 2)  # on the decision boundary: every count is Binomial(200, 1/2)

    def run(seed: int) -> torch.Tensor:
        return count_votes(first_coordinate_sign, x, 200, 1.0, 2, 64, key=NoiseKey(seed, 0))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))


@pytest.mark.parametrize(
    ("classify", "message"),
    [
        (lambda z: torch.zeros(z.shape[0]), "integer class index"),  # float labels
        (lambda z: torch.zeros(z.shape[0], 2, dtype=torch.int64), "integer class index"),  # logits shape
        (lambda z: torch.full((z.shape[0],), 2, dtype=torch.int64), "outside"),  # class 2 of 2
        (lambda z: torch.full((z.shape[0],), -1, dtype=torch.int64), "outside"),
    ],
)
def test_bad_base_classifier_output_is_refused(classify, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        count_votes(classify, torch.zeros(2, 3), 10, 0.1, 2, 8, NoiseKey(0, 0))


def test_keyed_noise_lanes_are_standard_normal_independent_and_seeded() -> None:
    """One input's noise comes in blocks dealt to NOISE_LANES generators and is drawn in threads for large
    batches: the values must still be i.i.d. N(0, 1) (Kolmogorov-Smirnov per lane, no correlation between
    lanes, nor between consecutive blocks of one lane), and the key must fix them."""
    from art_smoothing_plugin.sampling import NOISE_LANES, block_samples, keyed_noise

    shape = (3, 32, 32)
    block = block_samples(3 * 32 * 32)
    samples = NOISE_LANES * block * 20  # 20 blocks per lane, about 1.3e6 values per lane
    first = keyed_noise(NoiseKey(0, 0), 1, 7, samples, shape).reshape(samples, -1)
    again = keyed_noise(NoiseKey(0, 0), 1, 7, samples, shape).reshape(samples, -1)
    other = keyed_noise(NoiseKey(1, 0), 1, 7, samples, shape).reshape(samples, -1)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    blocks = first.reshape(-1, block, first.shape[1])  # block b belongs to lane b % NOISE_LANES
    lanes = [blocks[lane::NOISE_LANES].flatten() for lane in range(NOISE_LANES)]
    for values in lanes:
        # a KS p-value below 1e-4 would reject normality far beyond chance
        assert stats.kstest(values.numpy(), "norm").pvalue > 1e-4
    # Independent values are uncorrelated: |r| of ~1e6 pairs exceeds 5 / sqrt(n) with p ~ 6e-7.
    pairs = [(lanes[0], lanes[1]), (blocks[0].flatten(), blocks[NOISE_LANES].flatten())]
    for a, b in pairs:
        r = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
        assert abs(r) < 5 / a.numel() ** 0.5


@contextlib.contextmanager
def torch_threads(count: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def test_the_number_of_fill_threads_does_not_change_the_noise() -> None:
    """Large CPU batches are filled by as many threads as torch has (up to NOISE_LANES); which thread
    draws a lane must not matter."""
    from art_smoothing_plugin.sampling import _PARALLEL_FILL_MIN_NUMEL

    dim = _PARALLEL_FILL_MIN_NUMEL // 256
    seen: dict[int, list[torch.Tensor]] = {}
    for threads in (1, 2, 4):

        def record(z: torch.Tensor, threads: int = threads) -> torch.Tensor:
            seen.setdefault(threads, []).append(z.clone())
            return torch.zeros(z.shape[0], dtype=torch.int64)

        with torch_threads(threads):
            count_votes(record, torch.zeros(3, dim), 700, 1.0, 2, 512, NoiseKey(2, 5))
    assert torch.equal(torch.cat(seen[1]), torch.cat(seen[2]))
    assert torch.equal(torch.cat(seen[1]), torch.cat(seen[4]))


def test_parallel_fill_keeps_votes_unbiased_under_inference_mode() -> None:
    """count_votes runs under torch.inference_mode, which the noise threads must enter themselves."""
    from art_smoothing_plugin.sampling import _PARALLEL_FILL_MIN_NUMEL

    dim = _PARALLEL_FILL_MIN_NUMEL // 512 + 1  # large enough for the threaded fill
    x = torch.zeros(1, dim)
    # Class 1 iff the first coordinate of the noise is positive: P = 1/2 exactly.
    with torch.inference_mode(), torch_threads(4):  # the fill uses as many threads as torch
        counts = count_votes(lambda z: (z[:, 0] > 0).long(), x, 4096, 1.0, 2, 512, NoiseKey(3, 0))
    assert int(counts.sum()) == 4096
    # two-sided binomial test at 1e-4 on the fair coin
    assert stats.binomtest(int(counts[0, 1]), 4096, 0.5).pvalue > 1e-4
