"""Metrics: hand-computed tables, and the certificate check against sound and unsound certifiers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from art_smoothing_plugin.smoothing import ABSTAIN, Smoother
from evaluations.metrics import (
    abstain_rate,
    accuracy,
    average_certified_radius,
    certificate_check,
    certified_accuracy,
    certified_empirical_gaps,
    corrected_alpha,
    discordant_pairs_test,
    optimistic_envelope,
)

# Five points: correct & certified at 0.5, correct at exactly 0.25, abstained, correct at 1.0, wrong at 2.0.
LABELS = np.array([0, 1, ABSTAIN, 2, 1])
Y_TRUE = np.array([0, 1, 1, 2, 0])
RADII = np.array([0.5, 0.25, 0.0, 1.0, 2.0])


def test_certified_accuracy_by_hand():
    grid = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5]
    # Radius >= r (not >): the point certified at exactly 0.25 counts at r = 0.25; the wrong label certified
    # at 2.0 never counts; the abstention never counts.
    expected = [3 / 5, 3 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0]
    np.testing.assert_allclose(certified_accuracy(LABELS, RADII, Y_TRUE, grid), expected)


def test_certified_accuracy_is_non_increasing_on_random_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 3, 200)
    radii = np.where(labels == -1, 0.0, rng.exponential(0.5, 200))
    curve = certified_accuracy(labels, radii, rng.integers(0, 3, 200), np.linspace(0, 3, 61))
    assert np.all(np.diff(curve) <= 0)
    assert 0.0 <= curve[-1] <= curve[0] <= 1.0


def test_average_certified_radius_by_hand():
    assert average_certified_radius(LABELS, RADII, Y_TRUE) == pytest.approx((0.5 + 0.25 + 1.0) / 5)


def test_accuracy_counts_abstentions_as_wrong():
    assert accuracy([0, ABSTAIN, 2, 1], [0, 1, 2, 0]) == pytest.approx(2 / 4)
    assert abstain_rate([0, ABSTAIN, 2, ABSTAIN]) == pytest.approx(2 / 4)
    # An abstention is wrong even if the true label were -1 (never a class).
    assert accuracy([ABSTAIN], [ABSTAIN]) == 0.0


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: certified_accuracy([0, 1], [0.1], [0, 1], [0]), "same length"),
        (lambda: certified_accuracy([0], [-0.1], [0], [0]), "non-negative"),
        (lambda: accuracy([], []), "empty"),
        (lambda: accuracy([0.5], [0]), "integer labels"),
        (lambda: certificate_check([True], alpha=0.0), "alpha"),
        (lambda: certificate_check(np.zeros((2, 2), bool), alpha=0.01), "1-D"),
        (lambda: corrected_alpha(0.001, 0), "positive integer"),
        (lambda: optimistic_envelope({0.25: [1, 0], 0.5: [1, 0, 0]}), "same radius grid"),
        (lambda: discordant_pairs_test([1, 0], [True, False]), "first must be a 1-D boolean"),
        (lambda: discordant_pairs_test(np.ones(3, bool), np.ones(2, bool)), "same length"),
        (lambda: discordant_pairs_test(np.ones(3, bool), np.ones(3, bool), "bigger"), "alternative"),
    ],
)
def test_bad_input_is_refused_with_a_named_message(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_envelope_and_bonferroni():
    curves = {0.25: np.array([0.9, 0.5, 0.0]), 0.5: np.array([0.8, 0.6, 0.3])}
    np.testing.assert_allclose(optimistic_envelope(curves), [0.9, 0.6, 0.3])
    assert corrected_alpha(0.001, 4) == pytest.approx(0.00025)


def test_gaps_explained_by_abstentions():
    gaps = certified_empirical_gaps(
        [0.0, 0.25, 0.5],
        certified=[0.8, 0.6, 0.4],
        empirical=[0.85, 0.5, 0.2],
        empirical_abstain=[0, 0.15, 0.1],
    )
    assert [g["radius"] for g in gaps] == [0.25, 0.5]
    assert gaps[0]["explained_by_abstentions"] is True  # 0.5 + 0.15 >= 0.6
    assert gaps[1]["explained_by_abstentions"] is False  # 0.2 + 0.1 < 0.4
    assert gaps[1]["gap"] == pytest.approx(0.2)


def test_certificate_check_fields_and_empty_input():
    report = certificate_check(np.array([True, False, False, False]), alpha=0.01)
    assert (report["trials"], report["flips"], report["rate"]) == (4, 1, 0.25)
    # One-sided 99% Clopper-Pearson upper bound for 1 in 4, and P(Bin(4, 0.01) >= 1) = 1 - 0.99^4 = 0.039.
    assert report["upper_bound"] == pytest.approx(stats.beta.ppf(0.99, 2, 3))
    assert report["p_value"] == pytest.approx(1 - 0.99**4)
    assert report["flagged"] is False  # 0.039 is not below 1 - 0.99
    assert certificate_check(np.array([True] * 2 + [False] * 2), alpha=0.01)["flagged"] is True  # p = 6e-4
    empty = certificate_check(np.array([], dtype=bool), alpha=0.01)
    assert empty["trials"] == 0 and math.isnan(empty["rate"]) and not empty["flagged"]


def _critical_flips(trials: int, alpha: float, confidence: float) -> int:
    """Smallest flip count the check flags: P(Bin(trials, alpha) >= k) < 1 - confidence."""
    return int(stats.binom.isf(1 - confidence, trials, alpha)) + 1


@pytest.mark.parametrize("alpha", [0.001, 0.01])
def test_certificate_check_flags_five_times_alpha_and_not_alpha(alpha):
    confidence, trials = 0.99, int(400 / alpha)
    critical = _critical_flips(trials, alpha, confidence)
    # The design has power: a certifier that breaks at 5 alpha is flagged with probability > 0.999 ...
    assert stats.binom.sf(critical - 1, trials, 5 * alpha) > 0.999
    # ... and a sound one (rate alpha) is flagged with probability < 1 - confidence by construction.
    assert stats.binom.sf(critical - 1, trials, alpha) < 1 - confidence
    rng = np.random.default_rng(1234)
    unsound = certificate_check(rng.random(trials) < 5 * alpha, alpha, confidence)
    sound = certificate_check(rng.random(trials) < alpha, alpha, confidence)
    assert unsound["flagged"] and unsound["flips"] >= critical and unsound["upper_bound"] > alpha
    assert not sound["flagged"] and sound["flips"] < critical


def _linear_certificate_check(radius_factor: float, seed: int) -> dict:
    """Certify points of a base classifier whose smoothed decision boundary is known exactly, attack each
    certified point as far as its claimed radius allows, then PREDICT with fresh noise.

    Base classifier f(z) = 1[z_0 > 0]; for x = (t, 0) with t > 0 the smoothed classifier predicts 1 with
    p = Phi(t / sigma), so its true robust radius is exactly t. The optimal attack inside radius R moves x
    to (t - R', 0) with R' just below R. A sound certifier (R <= t with probability >= 1 - alpha) leaves
    the attacked point on the correct side; one that multiplies its radii by ``radius_factor`` does not."""
    sigma, alpha, points = 0.5, 0.001, 300
    generator = torch.Generator().manual_seed(seed)
    t = 0.05 + 0.95 * torch.rand(points, generator=generator)
    x = torch.stack([t, torch.zeros(points)], dim=1)
    smoother = Smoother(lambda z: (z[:, 0] > 0).long(), num_classes=2, sigma=sigma, seed=seed)
    result = smoother.certify(x, n0=100, n=2000, alpha=alpha)
    certified = result.labels != ABSTAIN
    claimed = torch.as_tensor(result.radii * radius_factor, dtype=torch.float32)
    attacked = x.clone()
    attacked[:, 0] -= 0.999 * claimed
    predicted = smoother.predict(attacked[certified], n=2000, alpha=alpha)
    flipped = (predicted != ABSTAIN) & (predicted != result.labels[certified])
    return certificate_check(flipped, alpha)


def test_certificate_check_passes_a_sound_certifier_and_catches_one_that_doubles_its_radii():
    sound = _linear_certificate_check(radius_factor=1.0, seed=0)
    doubled = _linear_certificate_check(radius_factor=2.0, seed=0)
    assert sound["trials"] >= 250 and doubled["trials"] == sound["trials"]
    assert not sound["flagged"]
    assert doubled["flagged"] and doubled["rate"] > 0.5


def test_discordant_pairs_test_counts_only_disagreements_and_can_refuse():
    equal = np.array([True, False] * 10)
    assert discordant_pairs_test(equal, ~equal)[2] > 0.5
    assert discordant_pairs_test(np.ones(8, bool), np.zeros(8, bool)) == (8, 0, 0.5**8)
    # Points both methods get (or both miss) carry no evidence: they change neither the counts nor p.
    first = np.array([True] * 9 + [False] + [True] * 30 + [False] * 30)
    second = np.array([False] * 9 + [True] + [True] * 30 + [False] * 30)
    b, c, p = discordant_pairs_test(first, second)
    assert (b, c) == (9, 1)
    assert p == pytest.approx(stats.binom.sf(b - 1, b + c, 0.5), rel=1e-12)  # P(Bin(10, 1/2) >= 9)
    assert discordant_pairs_test(second, first, "less")[2] == pytest.approx(p, rel=1e-12)
    assert discordant_pairs_test(first, second, "two-sided")[2] == pytest.approx(min(1.0, 2 * p), rel=1e-12)
    assert discordant_pairs_test(equal, equal) == (0, 0, 1.0)
