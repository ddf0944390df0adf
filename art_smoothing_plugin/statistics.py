"""The statistics of randomized smoothing, as pure functions of counts.

Nothing here samples, touches a model or holds state: every function maps counts (and the chosen error
level ``alpha``) to bounds, p-values or radii, and accepts NumPy arrays as well as scalars. The rest of
the package asks this module, and only this module, how much a count proves.

The guarantees (Cohen, Rosenfeld & Kolter 2019, Theorem 1 and Propositions 1-2):

* If the base classifier's probability of the top class under N(x, sigma^2 I) is at least ``p_lower``
  > 1/2, the smoothed classifier is constant within the L2 ball of radius ``sigma * Phi^-1(p_lower)``.
* :func:`clopper_pearson_lower` is a one-sided (1 - alpha) lower confidence bound on a binomial
  proportion; used on counts from samples drawn independently of the choice of the class, the
  certificate it feeds is wrong with probability at most ``alpha``.
* :func:`predict_test_pvalue` is the two-sided binomial test of Cohen's PREDICT; abstaining when it
  exceeds ``alpha`` makes a returned label differ from the smoothed classifier's with probability at
  most ``alpha``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

__all__ = [
    "binomial_upper_tail",
    "certified_radius",
    "clopper_pearson_interval",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "max_certifiable_radius",
    "predict_test_pvalue",
]


def _counts(successes: ArrayLike, trials: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if (
        np.any(n < 1)
        or np.any(k < 0)
        or np.any(k > n)
        or np.any(k != np.floor(k))
        or np.any(n != np.floor(n))
    ):
        raise ValueError(
            "successes and trials must be whole numbers with 0 <= successes <= trials and trials >= 1; "
            f"got successes={successes!r}, trials={trials!r}"
        )
    return k, n


def _check_alpha(alpha: float) -> None:
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be a probability strictly between 0 and 1, got {alpha!r}")


def _scalar_or_array(value: np.ndarray) -> float | np.ndarray:
    return float(value) if np.ndim(value) == 0 else value


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, alpha: float) -> float | np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    ``P(p >= bound) >= 1 - alpha`` for every true ``p``: the bound is the ``alpha`` quantile of
    Beta(k, n - k + 1), and 0 when no success was seen.
    """
    _check_alpha(alpha)
    k, n = _counts(successes, trials)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(alpha, k, n - k + 1)
    return _scalar_or_array(np.where(k == 0, 0.0, bound))


def clopper_pearson_upper(successes: ArrayLike, trials: ArrayLike, alpha: float) -> float | np.ndarray:
    """One-sided (1 - alpha) Clopper-Pearson upper bound on a binomial proportion (1 when k == n)."""
    _check_alpha(alpha)
    k, n = _counts(successes, trials)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(1.0 - alpha, k + 1, n - k)
    return _scalar_or_array(np.where(k == n, 1.0, bound))


def clopper_pearson_interval(
    successes: ArrayLike, trials: ArrayLike, alpha: float
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Two-sided (1 - alpha) Clopper-Pearson interval: each side at level alpha / 2."""
    return (
        clopper_pearson_lower(successes, trials, alpha / 2),
        clopper_pearson_upper(successes, trials, alpha / 2),
    )


def certified_radius(p_lower: ArrayLike, sigma: float) -> float | np.ndarray:
    """L2 radius ``sigma * Phi^-1(p_lower)`` certified by a lower bound ``p_lower`` on the top-class
    probability; 0 where ``p_lower <= 1/2`` (nothing is certified there, the caller abstains)."""
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    p = np.asarray(p_lower, dtype=np.float64)
    if np.any((p < 0) | (p > 1)) or np.any(np.isnan(p)):
        raise ValueError(f"p_lower must lie in [0, 1], got {p_lower!r}")
    radius = np.where(p > 0.5, sigma * stats.norm.ppf(np.clip(p, 0.5, 1.0)), 0.0)
    return _scalar_or_array(radius)


def max_certifiable_radius(n: int, alpha: float, sigma: float) -> float:
    """The largest radius ``n`` samples can ever certify: all ``n`` votes for one class give
    ``p_lower = alpha ** (1 / n)``, so the radius is ``sigma * Phi^-1(alpha ** (1 / n))``."""
    _check_alpha(alpha)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")
    return float(certified_radius(alpha ** (1.0 / int(n)), sigma))


def predict_test_pvalue(count_top: ArrayLike, count_runner_up: ArrayLike) -> float | np.ndarray:
    """Two-sided binomial test p-value of ``count_top`` successes in ``count_top + count_runner_up``
    trials against p = 1/2: Cohen's PREDICT abstains where this exceeds alpha (1.0 when both are 0)."""
    top = np.atleast_1d(np.asarray(count_top, dtype=np.int64))
    runner = np.atleast_1d(np.asarray(count_runner_up, dtype=np.int64))
    top, runner = np.broadcast_arrays(top, runner)
    if np.any(top < 0) or np.any(runner < 0):
        raise ValueError("counts must be non-negative")
    pvalues = np.ones(top.shape, dtype=np.float64)
    # binomtest is scalar-only; counts repeat a lot (e.g. all-agree rows), so compute each pair once.
    pairs, inverse = np.unique(np.stack([top.ravel(), runner.ravel()], axis=1), axis=0, return_inverse=True)
    pair_p = np.array(
        [stats.binomtest(int(a), int(a + b), 0.5).pvalue if a + b > 0 else 1.0 for a, b in pairs]
    )
    pvalues = pair_p[np.asarray(inverse).ravel()].reshape(top.shape)
    return float(pvalues[0]) if np.ndim(count_top) == 0 and np.ndim(count_runner_up) == 0 else pvalues


def binomial_upper_tail(failures: int, trials: int, p: float) -> float:
    """``P(X >= failures)`` for X ~ Binomial(trials, p): how surprising ``failures`` events are if each
    happens with probability at most ``p``. Tests and the harness's certificate check use it to decide
    whether an observed failure rate is statistically above the allowed ``alpha``."""
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    if failures <= 0:
        return 1.0
    return float(stats.binom.sf(int(failures) - 1, int(trials), float(p)))
