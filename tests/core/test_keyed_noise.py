"""Noise keyed by (seed, call, global index, phase): an input's noise, and so its counts, do not depend on
how the inputs of a call are cut into shards, chunks or batches, nor on their order; successive calls draw
fresh noise; a shard cut on the batch grid gives bit-identical results to the whole call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_smoothing_plugin.adaptive import certify_adaptive
from art_smoothing_plugin.sampling import (
    ESTIMATION,
    NOISE_LANES,
    SELECTION,
    NoiseKey,
    batch_plan,
    count_votes,
    group_size,
    keyed_noise,
    lane_seeds,
    look_phase,
    shard_alignment,
)
from art_smoothing_plugin.smoothing import Smoother

#: Inputs carry their identity in coordinate 0 (a multiple of ID_SCALE); coordinate 1 is 0, so at sigma 1
#: the value a classifier sees there is exactly the noise drawn for that sample.
ID_SCALE = 1e6


def identified(ids: list[int]) -> torch.Tensor:
    x = torch.zeros(len(ids), 2, 3)
    x[:, 0, 0] = torch.tensor(ids, dtype=torch.float32) * ID_SCALE
    return x


def noise_seen(x: torch.Tensor, m: int, batch_size: int, key: NoiseKey, phase: int, indices) -> dict:
    """The noise each input (by identity) received, in sample order, from one count_votes call."""
    seen: dict[int, list[torch.Tensor]] = {}

    def record(z: torch.Tensor) -> torch.Tensor:
        ids = torch.round(z[:, 0, 0] / ID_SCALE).to(torch.int64)
        for identity in ids.unique().tolist():
            seen.setdefault(identity, []).append(z[ids == identity, 1].clone())
        return torch.zeros(z.shape[0], dtype=torch.int64)

    count_votes(record, x, m, 1.0, 2, batch_size, key, phase, indices)
    return {identity: torch.cat(parts) for identity, parts in seen.items()}


@pytest.mark.parametrize("m", [3, 40, 700])
def test_an_inputs_noise_is_the_same_under_any_batch_size_split_or_order(m: int) -> None:
    key, phase, count = NoiseKey(11, 4), ESTIMATION, 9
    expected = {i: keyed_noise(key, phase, i, m, (2, 3))[:, 1] for i in range(count)}
    whole = noise_seen(identified(list(range(count))), m, 64, key, phase, None)
    assert whole.keys() == expected.keys()
    for i in range(count):
        assert torch.equal(whole[i], expected[i])
    # other batch sizes, shards cut anywhere (global indices passed), and the inputs in reverse order
    for batch_size in (1, 7, 1000):
        for cut in (1, 4):
            for part in (list(range(cut)), list(range(cut, count))):
                seen = noise_seen(identified(part), m, batch_size, key, phase, part)
                for i in part:
                    assert torch.equal(seen[i], expected[i]), (batch_size, cut, i)
    reverse = list(range(count))[::-1]
    seen = noise_seen(identified(reverse), m, 13, key, phase, reverse)
    for i in reverse:
        assert torch.equal(seen[i], expected[i])


def test_the_key_the_phase_and_the_index_each_change_the_noise() -> None:
    base = keyed_noise(NoiseKey(1, 0), ESTIMATION, 5, 50, (4,))
    assert look_phase(0) == ESTIMATION  # one look of adaptive certification draws CERTIFY's estimation
    for other in (
        keyed_noise(NoiseKey(2, 0), ESTIMATION, 5, 50, (4,)),  # another seed
        keyed_noise(NoiseKey(1, 1), ESTIMATION, 5, 50, (4,)),  # the next call
        keyed_noise(NoiseKey(1, 0), SELECTION, 5, 50, (4,)),  # another phase
        keyed_noise(NoiseKey(1, 0), look_phase(1), 5, 50, (4,)),  # a later look of adaptive certification
        keyed_noise(NoiseKey(1, 0), ESTIMATION, 6, 50, (4,)),  # another input
    ):
        assert not torch.any(base == other)  # continuous draws: any coincidence would be a shared stream


def test_lane_seeds_of_one_input_are_distinct_across_phases_and_lanes() -> None:
    # MT19937 keeps 32 bits of a seed: within one input, every phase's lanes must still differ (distinct
    # generator states), whatever the key. 200 phases is more looks than any schedule has.
    for key in (NoiseKey(0, 0), NoiseKey(2**63 - 1, 10**9), NoiseKey(-5, 3)):
        for index in (0, 1, 2**40):
            seeds = [s for phase in range(200) for s in lane_seeds(key, index, phase)]
            assert len(set(seeds)) == 200 * NOISE_LANES
            assert all(0 <= s < 2**32 for s in seeds)


def test_batch_plan_follows_the_grid_of_global_indices() -> None:
    # m <= B: groups of G inputs by global index, G the largest power of two with G * m <= B; a shard
    # starting on a group boundary sees the same batches as the whole.
    assert [group_size(m, 100) for m in (1, 30, 34, 50, 51, 100, 101, 10**6)] == [64, 2, 2, 2, 1, 1, 1, 1]
    indices = np.arange(23)
    whole = [[(int(indices[r]), f, c) for r, f, c in batch] for batch in batch_plan(indices, 12, 100)]
    assert [len(b) for b in whole] == [8, 8, 7]
    shard = np.arange(8, 23)
    part = [[(int(shard[r]), f, c) for r, f, c in batch] for batch in batch_plan(shard, 12, 100)]
    assert part == whole[1:]
    # Powers of two nest: a cut at a multiple of the largest group of a call's phases is a batch boundary
    # in every phase, even where only some inputs take part (adaptive looks).
    alignment = shard_alignment([12, 30, 100], 100)
    assert alignment == 8
    active = np.array([1, 2, 5, 9, 10, 15, 16, 21])
    for m in (12, 30, 100):
        batches = [[int(active[r]) for r, _, _ in batch] for batch in batch_plan(active, m, 100)]
        assert all(len({i // alignment for i in batch}) == 1 for batch in batches)
    # m > B: each input alone in ceil(m / B) batches
    plan = list(batch_plan(np.array([4, 5]), 250, 100))
    assert plan == [
        [(0, 0, 100)],
        [(0, 100, 100)],
        [(0, 200, 50)],
        [(1, 0, 100)],
        [(1, 100, 100)],
        [(1, 200, 50)],
    ]


def test_successive_calls_draw_fresh_noise_and_a_seed_names_the_first_call() -> None:
    smoother = Smoother(lambda z: (z[:, 0] > 0).long(), 2, 1.0, seed=3)
    assert smoother.next_key() == NoiseKey(3, 0)
    assert smoother.next_key() == NoiseKey(3, 1)
    smoother.reseed(3)
    assert smoother.next_key() == NoiseKey(3, 0)
    fresh = [Smoother(lambda z: z[:, 0].long(), 2, 1.0).next_key() for _ in range(2)]
    assert fresh[0] != fresh[1]  # seed=None: entropy from the OS


def small_cnn() -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Flatten(),
            torch.nn.Linear(8 * 8 * 8, 4),
        ).eval()


def cnn_labels(model: torch.nn.Module):
    return lambda z: model(z).argmax(1)


def assert_same(a, b) -> None:
    for name in ("labels", "radii", "p_lower", "candidates", "counts_top", "samples_used"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def concatenated(parts):
    from dataclasses import replace

    arrays = {
        name: np.concatenate([getattr(p, name) for p in parts])
        for name in ("labels", "radii", "p_lower", "candidates", "counts_top", "samples_used")
    }
    return replace(parts[0], **arrays)


def test_shards_cut_on_the_batch_grid_certify_bit_identically_with_a_real_model() -> None:
    # A conv net's float results may depend on the batch it is evaluated in; cut where the whole call cuts
    # its batches (n0 = 20 at batch 100: groups of 4 inputs; n = 300: each input alone), shards evaluate
    # the very same batches, so counts, labels and radii agree bit for bit.
    x = torch.rand(12, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    smoother = Smoother(cnn_labels(small_cnn()), 4, 0.5, batch_size=100)
    key = NoiseKey(7, 0)
    whole = smoother.certify(x, 20, 300, 0.01, key=key)
    shards = [smoother.certify(x[a:b], 20, 300, 0.01, key=key, first_index=a) for a, b in ((0, 4), (4, 12))]
    assert_same(whole, concatenated(shards))
    predicted = smoother.predict(x, 40, 0.01, key=key)
    parts = [smoother.predict(x[a:b], 40, 0.01, key=key, first_index=a) for a, b in ((0, 2), (2, 12))]
    np.testing.assert_array_equal(predicted, np.concatenate(parts))


def test_adaptive_shards_certify_bit_identically() -> None:
    # Adaptive looks draw only for the inputs still running: the grid keeps each look's batches the same in
    # a shard as in the whole call.
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    smoother = Smoother(cnn_labels(small_cnn()), 4, 0.5, batch_size=128)
    options = dict(mode="budget", tolerance=0.05, max_samples=2000, n0=32, alpha=0.01, key=NoiseKey(5, 2))
    whole = certify_adaptive(smoother, x, **options)
    alignment = shard_alignment([32, *np.diff(whole.extras["looks"], prepend=0).tolist()], 128)
    assert alignment == 4  # the selection's group (n0 = 32 at batch 128) is the largest
    parts = [certify_adaptive(smoother, x[a:b], first_index=a, **options) for a, b in ((0, 4), (4, 10))]
    assert_same(whole, concatenated(parts))
    assert len(set(whole.samples_used.tolist())) > 1  # the inputs did stop at different looks


def test_a_row_wise_classifier_counts_identically_under_any_cut_and_batch_size() -> None:
    # Where the base classifier's answer for a row does not depend on the rest of the batch (here a sign,
    # computed elementwise), the counts do not depend on where shards are cut nor on the batch size.
    x = torch.randn(15, 6, generator=torch.Generator().manual_seed(3)) * 0.3
    smoother = Smoother(lambda z: (z.sum(1) > 0).long(), 2, 1.0)
    key = NoiseKey(9, 9)
    reference = smoother.vote_counts(x, 333, 1000, key=key)
    for batch_size, cut in ((7, 2), (128, 11), (5000, 14)):
        parts = [
            smoother.vote_counts(x[:cut], 333, batch_size, key=key),
            smoother.vote_counts(x[cut:], 333, batch_size, key=key, first_index=cut),
        ]
        assert torch.equal(torch.cat(parts), reference)
