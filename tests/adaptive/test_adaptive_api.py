"""The adaptive API on the core and the estimator: bad inputs refused by name, the one-look schedule is
exactly fixed-n CERTIFY, the result object is complete, and the speed options keep the answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_smoothing_plugin import ABSTAIN, Smoother
from art_smoothing_plugin.adaptive import certify_adaptive
from art_smoothing_plugin.performance import accelerated_labels, autotune_batch_size, resolve_precision


@pytest.fixture(scope="module")
def smoother(digits_estimator, digits_sigma):
    return Smoother(lambda z: digits_estimator.model(z).argmax(1), 10, digits_sigma, batch_size=4096, seed=0)


@pytest.fixture(scope="module")
def x_few(digits):
    return torch.from_numpy(digits.x_test[:8])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        (dict(radius=0.0), "radius"),
        (dict(radius=-0.5), "radius"),
        (dict(radius=float("nan")), "radius"),
        (dict(), "radius"),  # radius mode without a radius
        (dict(radius=0.25, max_samples=100, n0=100), "max_samples"),  # budget not above n0
        (dict(radius=0.25, max_samples=50, n0=100), "max_samples"),  # budget below n0
        (dict(mode="budget", tolerance=0.0), "tolerance"),
        (dict(mode="budget", tolerance=-1.0), "tolerance"),
        (dict(mode="budget"), "tolerance"),
        (dict(radius=0.25, alpha=0.0), "alpha"),
        (dict(radius=0.25, alpha=1.0), "alpha"),
        (dict(radius=0.25, alpha=1.5), "alpha"),
        (dict(mode="fastest", radius=0.25), "mode"),
        (dict(radius=0.25, tolerance=0.1), "tolerance"),  # tolerance only means something in budget mode
        (dict(radius=0.25, n0=0), "n0"),
        (dict(radius=0.25, growth=1.0), "growth"),
        (dict(radius=0.25, final_share=0.0), "final_share"),
        (dict(radius=0.25, first_look=0), "first_look"),
        (dict(radius=100.0), "radius"),  # Phi(r / sigma) == 1: nothing can certify it
    ],
)
def test_bad_arguments_are_refused_by_name_before_sampling(smoother, digits_estimator, x_few, kwargs, name):
    calls = []
    counting = Smoother(lambda z: calls.append(1) or smoother.base_classifier(z), 10, smoother.sigma)
    with pytest.raises(ValueError, match=name):
        certify_adaptive(counting, x_few, **kwargs)
    assert not calls  # refused before any forward pass
    with pytest.raises(ValueError, match=name):
        digits_estimator.certify_adaptive(x_few.numpy(), **kwargs)


def test_a_single_look_is_exactly_fixed_n_certify(smoother, x_few):
    """With first_look >= the estimation cap there is one look at level alpha: the same draws from the
    same seed give the same certificates as Smoother.certify, in both modes."""
    n0, n, alpha = 30, 500, 0.01
    for mode, options in (("radius", dict(radius=0.25)), ("budget", dict(tolerance=0.1))):
        smoother.reseed(5)
        fixed = smoother.certify(x_few, n0, n, alpha)
        smoother.reseed(5)
        adaptive = certify_adaptive(
            smoother, x_few, mode=mode, max_samples=n0 + n, alpha=alpha, n0=n0, first_look=n, **options
        )
        assert np.array_equal(adaptive.counts_top, fixed.counts_top)
        assert np.array_equal(adaptive.labels, fixed.labels)
        assert np.allclose(adaptive.radii[adaptive.radii < 0.25], fixed.radii[adaptive.radii < 0.25])
        assert np.array_equal(adaptive.samples_used, fixed.samples_used)


def test_result_fields_are_consistent(smoother, x_few, digits_sigma):
    smoother.reseed(1)
    result = certify_adaptive(smoother, x_few, radius=0.25, max_samples=5_100, alpha=0.001, n0=100)
    extras = result.extras
    assert result.n0 == 100 and result.n == 5_000 and result.alpha == 0.001 and result.sigma == digits_sigma
    assert set(extras) >= {
        "mode",
        "target_radius",
        "certified",
        "p_upper",
        "stop_look",
        "looks",
        "look_alphas",
    }
    assert extras["look_alphas"].sum() == pytest.approx(0.001)
    assert np.array_equal(result.samples_used, 100 + extras["looks"][extras["stop_look"]])
    # the decision, the radius and the bound say the same thing
    assert np.array_equal(result.certified_at(0.25), extras["certified"])
    assert np.all(result.p_lower <= extras["p_upper"])
    assert np.all((result.labels == ABSTAIN) == (result.p_lower <= 0.5))
    assert len(result.to_records()) == len(x_few)


def test_empty_batch_and_seed_reproducibility(digits_estimator, digits):
    empty = digits_estimator.certify_adaptive(digits.x_test[:0], radius=0.25, max_samples=1_000)
    assert len(empty) == 0
    first = digits_estimator.certify_adaptive(
        digits.x_test[:6], mode="budget", tolerance=0.1, max_samples=3_000, seed=4
    )
    again = digits_estimator.certify_adaptive(
        digits.x_test[:6], mode="budget", tolerance=0.1, max_samples=3_000, seed=4
    )
    assert np.array_equal(first.counts_top, again.counts_top) and np.array_equal(first.radii, again.radii)


def test_precision_and_channels_last_options(digits_estimator, digits):
    x = digits.x_test[:40]
    result = digits_estimator.certify_adaptive(
        x, radius=0.25, max_samples=2_000, seed=6, precision="bf16", channels_last=True, batch_size="auto"
    )
    plain = digits_estimator.certify_adaptive(x, radius=0.25, max_samples=2_000, seed=6)
    # bf16 changes the base classifier only where its logits nearly tie: decisions match on most points
    assert np.mean(result.extras["certified"] == plain.extras["certified"]) >= 0.9
    labels = lambda z: digits_estimator.model(z).argmax(1)  # noqa: E731
    z = torch.from_numpy(x)
    assert torch.equal(accelerated_labels(labels, channels_last=True)(z), labels(z))
    assert accelerated_labels(labels) is labels
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int8")


def test_cpu_batch_probe_picks_the_fastest_batch():
    """A fake clock whose cost per sample is lowest at 256 (a cache sweet spot): the probe returns 256."""
    clock = [0.0]

    def timer() -> float:
        return clock[0]

    def labels(z: torch.Tensor) -> torch.Tensor:
        per_sample = 1e-5 * (1 + abs(np.log2(len(z)) - 8) / 4)
        clock[0] += per_sample * len(z)
        return torch.zeros(len(z), dtype=torch.int64)

    example = torch.zeros(1, 1, 4, 4)
    assert autotune_batch_size(labels, example, min_batch=32, max_batch=4096, timer=timer) == 256
    real = autotune_batch_size(
        lambda z: z.flatten(1).sum(1).long(), example, max_batch=1024, time_budget_s=0.2
    )
    assert real in {32, 64, 128, 256, 512, 1024}
    with pytest.raises(ValueError, match="example"):
        autotune_batch_size(labels, torch.zeros(3, dtype=torch.int64))
