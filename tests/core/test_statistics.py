"""The statistics module against independent references: scipy's exact binomial test and its
Clopper-Pearson intervals, hand-computed values, and exact coverage sums over the binomial distribution."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from art_smoothing_plugin.statistics import (
    binomial_upper_tail,
    certified_radius,
    clopper_pearson_interval,
    clopper_pearson_lower,
    clopper_pearson_upper,
    max_certifiable_radius,
    predict_test_pvalue,
)

# (successes, trials) pairs covering the edges (0, n), the middle and the skewed cases.
COUNT_CASES = [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (7, 20), (50, 100), (99, 100), (9990, 10000)]
ALPHAS = [0.001, 0.05, 0.3]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize(("k", "n"), COUNT_CASES)
def test_one_sided_bounds_match_scipy_exact_binomial_test(k: int, n: int, alpha: float) -> None:
    # binomtest's one-sided 'exact' interval is Clopper-Pearson, computed independently of our beta.ppf.
    reference_lower = stats.binomtest(k, n, alternative="greater").proportion_ci(1 - alpha, "exact").low
    reference_upper = stats.binomtest(k, n, alternative="less").proportion_ci(1 - alpha, "exact").high
    assert clopper_pearson_lower(k, n, alpha) == pytest.approx(reference_lower, rel=1e-9, abs=1e-12)
    assert clopper_pearson_upper(k, n, alpha) == pytest.approx(reference_upper, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("k", "n"), COUNT_CASES)
def test_two_sided_interval_matches_scipy(k: int, n: int) -> None:
    reference = stats.binomtest(k, n).proportion_ci(0.95, "exact")
    low, high = clopper_pearson_interval(k, n, 0.05)
    assert low == pytest.approx(reference.low, rel=1e-9, abs=1e-12)
    assert high == pytest.approx(reference.high, rel=1e-9, abs=1e-12)


def test_bounds_hand_computed_edges() -> None:
    # All n successes: P(X = n) = p^n = alpha at the bound, so the lower bound is alpha^(1/n).
    assert clopper_pearson_lower(100, 100, 0.01) == pytest.approx(0.01 ** (1 / 100), rel=1e-12)
    # No success: the upper bound solves (1 - p)^n = alpha.
    assert clopper_pearson_upper(0, 100, 0.01) == pytest.approx(1 - 0.01 ** (1 / 100), rel=1e-12)
    assert clopper_pearson_lower(0, 100, 0.01) == 0.0
    assert clopper_pearson_upper(100, 100, 0.01) == 1.0
    # One trial, one success: lower bound = alpha.
    assert clopper_pearson_lower(1, 1, 0.2) == pytest.approx(0.2, rel=1e-12)


def test_bounds_accept_arrays_elementwise() -> None:
    k = np.array([0, 5, 10])
    lower = clopper_pearson_lower(k, 10, 0.05)
    assert isinstance(lower, np.ndarray) and lower.shape == (3,)
    for i, ki in enumerate(k):
        assert lower[i] == pytest.approx(clopper_pearson_lower(int(ki), 10, 0.05), rel=1e-12)
    assert isinstance(clopper_pearson_lower(5, 10, 0.05), float)


@pytest.mark.parametrize("p", [0.02, 0.3, 0.5, 0.77, 0.95, 0.999])
@pytest.mark.parametrize("alpha", [0.01, 0.1])
def test_lower_bound_exact_coverage(p: float, alpha: float) -> None:
    # Exact coverage, summed over the binomial distribution: P(lower(X) > p) must not exceed alpha for
    # any p. This is the property every certificate rests on; no sampling, so the check is exact.
    n = 60
    k = np.arange(n + 1)
    lower = np.asarray(clopper_pearson_lower(k, n, alpha))
    upper = np.asarray(clopper_pearson_upper(k, n, alpha))
    pmf = stats.binom.pmf(k, n, p)
    assert pmf[lower > p].sum() <= alpha + 1e-12
    assert pmf[upper < p].sum() <= alpha + 1e-12


def test_bounds_are_monotone_in_counts_and_alpha() -> None:
    lower = np.asarray(clopper_pearson_lower(np.arange(101), 100, 0.05))
    assert np.all(np.diff(lower) > 0)
    assert clopper_pearson_lower(80, 100, 0.001) < clopper_pearson_lower(80, 100, 0.05)


@pytest.mark.parametrize(
    ("k", "n", "alpha"), [(-1, 10, 0.05), (11, 10, 0.05), (1.5, 10, 0.05), (0, 0, 0.05), (5, 10.5, 0.05)]
)
def test_bounds_refuse_impossible_counts(k: float, n: float, alpha: float) -> None:
    with pytest.raises(ValueError, match="successes and trials"):
        clopper_pearson_lower(k, n, alpha)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_bounds_refuse_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_lower(5, 10, alpha)
    with pytest.raises(ValueError, match="alpha"):
        clopper_pearson_upper(5, 10, alpha)


def test_certified_radius_hand_values() -> None:
    # Phi(1) = 0.841344746..., Phi(2) = 0.977249868...: radius sigma * 1 and sigma * 2.
    assert certified_radius(0.8413447460685429, 0.5) == pytest.approx(0.5, rel=1e-9)
    assert certified_radius(0.9772498680518208, 0.25) == pytest.approx(0.5, rel=1e-9)
    # Nothing is certified at or below 1/2.
    assert certified_radius(0.5, 1.0) == 0.0
    assert certified_radius(0.2, 1.0) == 0.0
    radii = certified_radius(np.array([0.1, 0.8413447460685429]), 2.0)
    np.testing.assert_allclose(radii, [0.0, 2.0], rtol=1e-9)


def test_certified_radius_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sigma"):
        certified_radius(0.9, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        certified_radius(0.9, -1.0)
    with pytest.raises(ValueError, match="p_lower"):
        certified_radius(1.2, 1.0)
    with pytest.raises(ValueError, match="p_lower"):
        certified_radius(float("nan"), 1.0)


def test_max_certifiable_radius_published_values() -> None:
    # anchors.md: 3.81 sigma at n = 1e5 and 3.20 sigma at n = 1e4, alpha = 0.001 (Cohen et al.).
    assert round(max_certifiable_radius(100_000, 0.001, 1.0), 2) == 3.81
    assert round(max_certifiable_radius(10_000, 0.001, 1.0), 2) == 3.20
    assert max_certifiable_radius(100_000, 0.001, 0.5) == pytest.approx(
        0.5 * max_certifiable_radius(100_000, 0.001, 1.0), rel=1e-12
    )
    # It is what n unanimous votes certify.
    unanimous = certified_radius(clopper_pearson_lower(10_000, 10_000, 0.001), 1.0)
    assert max_certifiable_radius(10_000, 0.001, 1.0) == pytest.approx(unanimous, rel=1e-9)
    with pytest.raises(ValueError, match="n must"):
        max_certifiable_radius(0, 0.001, 1.0)


@pytest.mark.parametrize(("top", "second"), [(10, 0), (60, 40), (51, 49), (7, 3), (1, 0), (500, 430)])
def test_predict_pvalue_matches_scipy_binomtest(top: int, second: int) -> None:
    assert predict_test_pvalue(top, second) == pytest.approx(
        stats.binomtest(top, top + second, 0.5).pvalue, rel=1e-12
    )


def test_predict_pvalue_hand_values_and_arrays() -> None:
    # 10 of 10: two-sided p = 2 * 0.5^10.
    assert predict_test_pvalue(10, 0) == pytest.approx(2 * 0.5**10, rel=1e-12)
    assert predict_test_pvalue(0, 0) == 1.0
    values = predict_test_pvalue(np.array([10, 0, 10, 5]), np.array([0, 0, 0, 5]))
    assert isinstance(values, np.ndarray) and values.shape == (4,)
    np.testing.assert_allclose(values, [2 * 0.5**10, 1.0, 2 * 0.5**10, 1.0], rtol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        predict_test_pvalue(-1, 3)


@pytest.mark.parametrize(
    ("k", "n", "p"), [(0, 10, 0.3), (1, 10, 0.3), (4, 10, 0.3), (10, 10, 0.3), (3, 50, 0.01)]
)
def test_binomial_upper_tail_hand_sum(k: int, n: int, p: float) -> None:
    by_hand = sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))
    assert binomial_upper_tail(k, n, p) == pytest.approx(by_hand, rel=1e-10)


def test_binomial_upper_tail_edges() -> None:
    assert binomial_upper_tail(0, 5, 0.1) == 1.0
    assert binomial_upper_tail(-3, 5, 0.1) == 1.0
    assert binomial_upper_tail(6, 5, 0.1) == 0.0
    with pytest.raises(ValueError, match="p must"):
        binomial_upper_tail(1, 5, 1.5)
