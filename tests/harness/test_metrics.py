"""Metrics: hand-computed tables, and the certificate check against sound and unsound certifiers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from art_smoothing_plugin.smoothing import ABSTAIN, Smoother
from art_smoothing_plugin.statistics import binomial_upper_tail, clopper_pearson_lower, predict_test_pvalue
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
    # Every attempted point is a trial; one CERTIFY abstained on is not attacked and cannot flip.
    flipped = np.zeros(points, dtype=bool)
    flipped[certified] = (predicted != ABSTAIN) & (predicted != result.labels[certified])
    return certificate_check(flipped, alpha + alpha)  # CERTIFY and PREDICT both at level alpha


def test_certificate_check_passes_a_sound_certifier_and_catches_one_that_doubles_its_radii():
    sound = _linear_certificate_check(radius_factor=1.0, seed=0)
    doubled = _linear_certificate_check(radius_factor=2.0, seed=0)
    assert sound["trials"] == doubled["trials"] == 300
    assert not sound["flagged"]
    assert doubled["flagged"] and doubled["rate"] > 0.5


def simulated_certificate_checks(
    n: int, repetitions: int, seed: int, margins: np.ndarray, radius_factor: float = 1.0
) -> tuple[list[dict], np.ndarray]:
    """The certificate check of a linear two-class base classifier, simulated exactly from binomials and
    judged by the report's own code (``evaluations.report._certificate_check``).

    A point at signed distance d (in units of sigma) from the hyperplane has p = Phi(d) for class 1.
    CERTIFY at alpha = 0.05: n selection votes pick the candidate (ties: class 0), n fresh votes give
    the Clopper-Pearson bound p_lower and the radius Phi^-1(p_lower) (times ``radius_factor``: 1 is the
    sound certifier). The optimal attack inside that radius moves the point straight towards the
    hyperplane, where the candidate's probability is Phi(Phi^-1(p_candidate) - radius) exactly; PREDICT
    there (1,000 fresh votes, alpha_predict = 0.05) answers, abstains, or flips to the other class.
    Returns the check of each repetition, and whether the former conditional null (trials = certified
    points only) would have flagged it."""
    from types import SimpleNamespace

    from evaluations.report import _certificate_check

    alpha = alpha_predict = 0.05
    rng = np.random.default_rng(seed)
    p_one = np.broadcast_to(stats.norm.cdf(margins), (repetitions, len(margins)))
    candidate = (2 * rng.binomial(n, p_one) > n).astype(np.int64)
    p_candidate = np.where(candidate == 1, p_one, 1 - p_one)
    counts = rng.binomial(n, p_candidate)
    p_lower = clopper_pearson_lower(counts.ravel(), n, alpha).reshape(counts.shape)
    certified = p_lower > 0.5
    radius = radius_factor * stats.norm.ppf(np.where(certified, p_lower, 0.5))
    votes = rng.binomial(1000, stats.norm.cdf(stats.norm.ppf(p_candidate) - radius))
    top, runner_up = np.maximum(votes, 1000 - votes), np.minimum(votes, 1000 - votes)
    answer = np.full(votes.shape, ABSTAIN)
    pvalues = np.ones(votes.shape)
    pvalues[certified] = predict_test_pvalue(top[certified], runner_up[certified])
    answered = pvalues <= alpha_predict
    answer[answered] = np.where(2 * votes >= 1000, candidate, 1 - candidate)[answered]
    pipeline = SimpleNamespace(
        config={"certificate_check": {"confidence": 0.99, "radius_factor": radius_factor, "steps": 0}}
    )
    defence = SimpleNamespace(alpha=alpha, predict_alpha=alpha_predict)
    checks, conditional = [], []
    for row in range(repetitions):
        kept = certified[row]
        check = {
            "certified_label": candidate[row, kept],
            "predict": answer[row, kept],
            "eps": radius[row, kept],
            "l2_distance": radius[row, kept],
            "attempted": len(margins),
        }
        checks.append(_certificate_check(pipeline, defence, check))
        flipped = (check["predict"] != ABSTAIN) & (check["predict"] != check["certified_label"])
        conditional.append(certificate_check(flipped, alpha + alpha_predict)["flagged"])
    return checks, np.array(conditional)


#: The issue's setting: 420 points, 400 of them on the decision boundary (where CERTIFY abstains except
#: with probability <= alpha, and any certificate it gives is wrong), 20 at 1-3 sigma from it.
MOSTLY_ABSTAINING = np.concatenate([np.zeros(400), np.linspace(1.0, 3.0, 20)])


@pytest.mark.parametrize("n", [20, 100])
def test_a_sound_certifier_that_mostly_abstains_is_not_flagged_beyond_its_level(n):
    repetitions, level = 1000, 1 - 0.99  # the check's confidence is 0.99: a sound certifier flagged <= 1%
    checks, flagged_conditional = simulated_certificate_checks(
        n, repetitions, seed=n, margins=MOSTLY_ABSTAINING
    )
    flagged = np.array([c["flagged"] for c in checks])
    # Every attempted point is a trial, at the level the caller states: alpha + alpha_predict.
    assert all(c["trials"] == 420 and c["alpha"] == c["reference_rate"] == 0.1 for c in checks)
    assert np.mean([c["attacked"] for c in checks]) < 60  # most points abstained
    # The flag rate is within the level: more flags than this would have probability < 1e-3 if each
    # repetition were flagged with probability 0.01.
    assert binomial_upper_tail(int(flagged.sum()), repetitions, level) >= 1e-3, flagged.mean()
    if n == 20:
        # The conditional null (trials = certified points) flags this sound certifier far beyond 1%.
        assert binomial_upper_tail(int(flagged_conditional.sum()), repetitions, level) < 1e-6
    print(
        f"n={n}: flagged {flagged.mean():.3f} (attempted), {flagged_conditional.mean():.3f} (certified only)"
    )


def test_the_check_still_catches_doubled_radii_where_most_points_certify():
    margins = np.concatenate([np.zeros(20), np.linspace(1.0, 3.0, 400)])
    doubled, _ = simulated_certificate_checks(100, 50, seed=7, margins=margins, radius_factor=2.0)
    sound, _ = simulated_certificate_checks(100, 50, seed=7, margins=margins)
    assert all(c["flagged"] for c in doubled) and not any(c["flagged"] for c in sound)
