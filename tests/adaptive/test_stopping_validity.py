"""Validity of the stopping rules on simulated binomials (no model).

Counts with a known success probability ``p`` are drawn with NumPy and fed to the same loop the model
path runs (:func:`art_smoothing_plugin.adaptive.run_sequential`). A certificate is wrong when it claims
more than ``p`` allows; each test counts wrong certificates among ``M`` independent simulated inputs and
refuses a count that is statistically above ``alpha``: under a failure probability of at most ``alpha``,
``P(Binomial(M, alpha) >= failures)`` would be below ``1e-3`` for at most 1 seed in 1,000. ``alpha`` is
0.05 (not 0.001) so that ``M = 10,000`` inputs make the check sharp, and the hardest case, ``p`` exactly at
the threshold, is included. A control shows the check has power: the same loop with the full ``alpha`` at
every look (no split) is caught.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from art_smoothing_plugin import statistics as S
from art_smoothing_plugin.adaptive import run_sequential

ALPHA = 0.05
INPUTS = 10_000
CAP = 2_000
SIGNIFICANCE = 1e-3
LOOKS = S.sequential_looks(CAP, first_look=64, growth=1.5)
ALPHAS = S.sequential_alphas(ALPHA, len(LOOKS))


def simulate(p: float, seed: int, alphas: np.ndarray = ALPHAS, **mode):
    rng = np.random.default_rng(seed)

    def draw(active: np.ndarray, m: int) -> np.ndarray:
        return rng.binomial(m, p, size=active.size)

    return run_sequential(draw, INPUTS, LOOKS, alphas, sigma=1.0, **mode)


def assert_within_alpha(failures: int, what: str) -> None:
    tail = S.binomial_upper_tail(failures, INPUTS, ALPHA)
    assert tail > SIGNIFICANCE, (
        f"{what}: {failures} failures in {INPUTS} (rate {failures / INPUTS:.4f}) is significantly above "
        f"alpha={ALPHA} (P(Bin >= failures) = {tail:.2e})"
    )


THRESHOLDS = [0.6, float(stats.norm.cdf(1.0)), float(stats.norm.cdf(2.0))]


@pytest.mark.parametrize("threshold", THRESHOLDS)
@pytest.mark.parametrize("gap", [0.0, 0.01])
def test_certified_at_target_is_wrong_at_most_alpha(threshold, gap):
    """``p <= threshold``: every "certified at r" is wrong. Worst case ``p == threshold``: the rule then
    stops at the first look whose lower bound exceeds ``p`` (an adversarial stopping time)."""
    p = threshold - gap
    outcome = simulate(p, seed=int(1000 * threshold) + int(1000 * gap), mode="radius", threshold=threshold)
    assert_within_alpha(int(outcome.certified.sum()), f"certified at threshold {threshold:.4f}, p={p:.4f}")
    # and the returned lower bound is a valid one at the stopping time
    assert_within_alpha(int((outcome.p_lower > p).sum()), f"p_lower above p={p:.4f}")


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_early_not_certifiable_is_wrong_at_most_alpha(threshold):
    """``p >= threshold``: stopping early with "cannot be certified" (upper bound below the threshold) is
    wrong; running to the budget without a decision is an abstention, not a claim."""
    outcome = simulate(threshold, seed=7 + int(1000 * threshold), mode="radius", threshold=threshold)
    early_no = (~outcome.certified) & (outcome.stop_look < len(LOOKS) - 1)
    assert_within_alpha(int(early_no.sum()), f"early 'not certifiable' at p = threshold = {threshold:.4f}")


@pytest.mark.parametrize("p", [0.55, 0.8, 0.95, 0.995])
def test_best_radius_never_exceeds_the_true_radius_beyond_alpha(p):
    outcome = simulate(p, seed=int(1e4 * p), mode="budget", tolerance=0.05)
    radius = np.atleast_1d(S.certified_radius(outcome.p_lower, 1.0))
    true_radius = stats.norm.ppf(p)
    assert_within_alpha(int((radius > true_radius).sum()), f"budget mode at p={p}")
    assert np.all(outcome.trials <= CAP)


def test_the_check_catches_a_rule_that_spends_the_full_alpha_at_every_look():
    """Control: without the split (level alpha at each of the looks) the same check must fail."""
    naive = np.full(len(LOOKS), ALPHA)
    threshold = float(stats.norm.cdf(1.0))
    outcome = simulate(threshold, seed=11, alphas=naive / 1.0, mode="radius", threshold=threshold)
    failures = int(outcome.certified.sum())
    assert S.binomial_upper_tail(failures, INPUTS, ALPHA) < SIGNIFICANCE, failures


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_clear_cut_inputs_stop_at_the_first_look_that_can_decide(threshold):
    """p = 1 (unanimous votes) stops exactly at the first look n with alpha_k ** (1/n) > threshold;
    p = 0 at the first look with 1 - alpha_k ** (1/n) < threshold: far below the budget."""
    first_yes = next(k for k, n in enumerate(LOOKS) if ALPHAS[k] ** (1 / n) > threshold)
    first_no = next(k for k, n in enumerate(LOOKS) if 1 - ALPHAS[k] ** (1 / n) < threshold)
    sure = simulate(1.0, seed=0, mode="radius", threshold=threshold)
    hopeless = simulate(0.0, seed=0, mode="radius", threshold=threshold)
    assert sure.certified.all() and np.all(sure.stop_look == first_yes)
    assert not hopeless.certified.any() and np.all(hopeless.stop_look == first_no)
    assert LOOKS[first_yes] < CAP / 2


def test_run_sequential_refuses_a_bad_schedule_or_count_source():
    draw = lambda active, m: np.zeros(active.size, dtype=np.int64)  # noqa: E731
    with pytest.raises(ValueError, match="looks"):
        run_sequential(draw, 3, np.array([10, 5]), np.array([0.01, 0.01]), 1.0, mode="radius", threshold=0.8)
    with pytest.raises(ValueError, match="alphas"):
        run_sequential(draw, 3, np.array([5, 10]), np.array([0.5, 0.6]), 1.0, mode="radius", threshold=0.8)
    with pytest.raises(ValueError, match="draw_counts"):
        run_sequential(
            lambda a, m: np.full(a.size, m + 1),
            3,
            np.array([5]),
            np.array([0.01]),
            1.0,
            mode="budget",
            tolerance=0.1,
        )
