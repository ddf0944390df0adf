"""The pure functions of sequential certification in statistics.py: schedule, alpha split, one look's
decision, and the best-radius stopping rule, against values derived by hand from Clopper-Pearson."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from art_smoothing_plugin import statistics as S


def test_looks_are_a_fixed_geometric_schedule_ending_at_the_budget():
    looks = S.sequential_looks(100_000, first_look=64, growth=1.5)
    assert looks[0] == 64 and looks[-1] == 100_000
    assert np.all(np.diff(looks) > 0)
    # each look is ceil(1.5 * previous), except the last, clipped to the budget
    assert np.all(looks[1:-1] == np.ceil(1.5 * looks[:-2]))
    assert looks[-1] >= np.sqrt(1.5) * looks[-2]  # no look just before the budget
    assert len(looks) == 19
    assert S.sequential_looks(10, first_look=64).tolist() == [10]
    assert S.sequential_looks(5, first_look=1, growth=1.01).tolist() == [1, 2, 3, 4, 5]


def test_alphas_split_the_budget_with_the_final_share_last():
    alphas = S.sequential_alphas(0.001, 18, final_share=0.5)
    assert alphas.sum() == pytest.approx(0.001, rel=1e-12)
    assert alphas[-1] == pytest.approx(0.0005)
    assert np.allclose(alphas[:-1], 0.0005 / 17)
    assert S.sequential_alphas(0.01, 1).tolist() == [0.01]


def test_required_top_probability_is_phi_of_radius_over_sigma():
    assert S.required_top_probability(0.5, 0.5) == pytest.approx(stats.norm.cdf(1.0))
    assert S.required_top_probability(0.0, 0.5) == pytest.approx(0.5)
    # a radius is certified exactly when p_lower exceeds it: sigma * Phi^-1(threshold) == radius
    assert S.certified_radius(S.required_top_probability(0.3, 0.25), 0.25) == pytest.approx(0.3)


def test_target_decision_on_counts_with_known_bounds():
    # 100 of 100 votes: the lower bound is alpha ** (1 / 100) = 0.9333 at alpha = 0.001
    lower_all = 0.001 ** (1 / 100)
    assert S.target_radius_decision(100, 100, 0.001, lower_all - 1e-6)[0] == S.CERTIFIED
    assert S.target_radius_decision(100, 100, 0.001, lower_all + 1e-6)[0] == S.UNDECIDED
    # 0 of 100 votes: the upper bound is 1 - alpha ** (1 / 100) = 0.0667
    assert S.target_radius_decision(0, 100, 0.001, 0.5)[0] == S.NOT_CERTIFIED
    assert S.target_radius_decision(0, 100, 0.001, 0.06)[0] == S.UNDECIDED
    # vectorised, and never both sides at once
    counts = np.arange(0, 1001, 7)
    decisions = S.target_radius_decision(counts, 1000, 0.01, 0.8)
    lower = S.clopper_pearson_lower(counts, 1000, 0.01)
    upper = S.clopper_pearson_upper(counts, 1000, 0.01)
    assert np.array_equal(decisions == S.CERTIFIED, lower > 0.8)
    assert np.array_equal(decisions == S.NOT_CERTIFIED, upper < 0.8)
    assert set(np.unique(decisions)) == {S.CERTIFIED, S.NOT_CERTIFIED, S.UNDECIDED}


def test_reachable_radius_is_the_max_radius_for_unanimous_votes_and_zero_below_half():
    reachable = S.reachable_radius(50, 50, 0.001, 100_000, 0.0005, 0.5)
    assert reachable == pytest.approx(S.max_certifiable_radius(100_000, 0.0005, 0.5))
    assert S.reachable_radius(10, 100, 0.001, 100_000, 0.0005, 0.5) == 0.0


def test_best_radius_rule_stops_when_the_forecast_gain_is_within_tolerance():
    # unanimous after 100: the final look could certify ~3.9 sigma, far above today's radius
    assert not S.best_radius_should_stop(100, 100, 1e-4, 100_000, 5e-4, 1.0, tolerance=0.1)[0]
    # a tolerance larger than the whole forecast stops at once
    assert S.best_radius_should_stop(100, 100, 1e-4, 100_000, 5e-4, 1.0, tolerance=5.0)[0]
    # hopeless (upper bound below 1/2): stop
    assert S.best_radius_should_stop(20, 100, 1e-4, 100_000, 5e-4, 1.0, tolerance=0.01)[0]
    # p ~ 0.9 seen on 90,000 samples: the forecast at 100,000 (1.285) beats today's 1.260 by 0.024
    assert S.best_radius_should_stop(81_000, 90_000, 1e-4, 100_000, 5e-4, 1.0, tolerance=0.03)[0]
    assert not S.best_radius_should_stop(81_000, 90_000, 1e-4, 100_000, 5e-4, 1.0, tolerance=0.02)[0]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: S.sequential_looks(0), "max_trials"),
        (lambda: S.sequential_looks(100, first_look=0), "first_look"),
        (lambda: S.sequential_looks(100, growth=1.0), "growth"),
        (lambda: S.sequential_alphas(0.0, 3), "alpha"),
        (lambda: S.sequential_alphas(0.01, 3, final_share=1.0), "final_share"),
        (lambda: S.required_top_probability(-0.1, 0.5), "radius"),
        (lambda: S.target_radius_decision(5, 10, 0.01, 1.0), "threshold"),
        (lambda: S.best_radius_should_stop(5, 10, 0.01, 100, 0.01, 1.0, tolerance=0.0), "tolerance"),
    ],
)
def test_bad_arguments_are_refused_by_name(call, name):
    with pytest.raises(ValueError, match=name):
        call()
