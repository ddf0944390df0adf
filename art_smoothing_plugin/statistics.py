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
    # sequential (adaptive) certification
    "CERTIFIED",
    "NOT_CERTIFIED",
    "UNDECIDED",
    "best_radius_should_stop",
    "reachable_radius",
    "required_top_probability",
    "sequential_alphas",
    "sequential_looks",
    "target_radius_decision",
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


# -- Sequential (adaptive) certification ------------------------------------------------------------
#
# The estimation samples are drawn in rounds and the counts are examined at a schedule of looks
# n_1 < n_2 < ... < n_K fixed before sampling starts. Look k uses one-sided Clopper-Pearson bounds at
# level alpha_k with sum_k alpha_k <= alpha. By the union bound, with probability at least 1 - alpha the
# lower bounds of *all* looks hold at once, so the lower bound at whichever look the procedure stops at
# (a stopping time that may depend on everything seen so far) holds too: the certificate is sound at
# the stopping time whatever the stopping rule. The stopping rules below only decide *when* to stop.

#: Outcome of one look of the target-radius test: the point is certified at the target radius.
CERTIFIED = 1
#: Outcome of one look of the target-radius test: the point cannot be certified at the target radius.
NOT_CERTIFIED = -1
#: Outcome of one look of the target-radius test: the counts do not settle the question yet.
UNDECIDED = 0


def _check_whole(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def sequential_looks(max_trials: int, first_look: int = 64, growth: float = 1.5) -> np.ndarray:
    """The cumulative sample sizes ``n_1 < n_2 < ... < n_K = max_trials`` at which a sequential
    certification examines its counts: ``n_1 = min(first_look, max_trials)``, then
    ``n_{k+1} = max(n_k + 1, ceil(growth * n_k))``, the last look clipped to ``max_trials`` (and the
    one before it dropped when it would lie within a factor ``sqrt(growth)`` of ``max_trials``).

    The schedule depends on nothing but its arguments; that is what makes the alpha split of
    :func:`sequential_alphas` valid. Geometric growth keeps the number of looks logarithmic in
    ``max_trials / first_look`` (19 looks from 64 to 100,000 at growth 1.5).
    """
    max_trials = _check_whole("max_trials", max_trials, 1)
    first_look = _check_whole("first_look", first_look, 1)
    if not np.isfinite(growth) or float(growth) <= 1.0:
        raise ValueError(f"growth must be a finite number > 1, got {growth!r}")
    looks = [min(first_look, max_trials)]
    while looks[-1] < max_trials:
        looks.append(min(max_trials, max(looks[-1] + 1, int(np.ceil(float(growth) * looks[-1])))))
    if len(looks) >= 3 and looks[-1] < np.sqrt(float(growth)) * looks[-2]:
        del looks[-2]  # a look just before the budget would cost a share of alpha and save little
    return np.asarray(looks, dtype=np.int64)


def sequential_alphas(alpha: float, num_looks: int, final_share: float = 0.5) -> np.ndarray:
    """Split the error budget ``alpha`` across ``num_looks`` looks (Bonferroni): the last look gets
    ``final_share * alpha`` and each earlier look an equal part of the rest, so the levels sum to
    ``alpha`` (up to floating-point rounding). With a single look it is ``[alpha]``.

    Giving the last look a large share keeps a run that goes to the budget close to fixed-n CERTIFY at
    level ``alpha``; the earlier looks decide clear-cut inputs, for which a smaller level costs only a
    number of samples proportional to ``log(1 / alpha_k)``.
    """
    _check_alpha(alpha)
    num_looks = _check_whole("num_looks", num_looks, 1)
    if not 0.0 < float(final_share) < 1.0:
        raise ValueError(f"final_share must lie strictly between 0 and 1, got {final_share!r}")
    if num_looks == 1:
        return np.array([float(alpha)])
    early = (1.0 - float(final_share)) * float(alpha) / (num_looks - 1)
    return np.append(np.full(num_looks - 1, early), float(final_share) * float(alpha))


def required_top_probability(radius: ArrayLike, sigma: float) -> float | np.ndarray:
    """``Phi(radius / sigma)``: the top-class probability bound that certifies L2 radius ``radius``.

    Cohen et al.'s radius ``sigma * Phi^-1(p_lower)`` exceeds ``radius`` exactly when ``p_lower``
    exceeds this threshold.
    """
    if not float(sigma) > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    r = np.asarray(radius, dtype=np.float64)
    if np.any(~np.isfinite(r)) or np.any(r < 0):
        raise ValueError(f"radius must be finite and >= 0, got {radius!r}")
    return _scalar_or_array(stats.norm.cdf(r / float(sigma)))


def target_radius_decision(
    successes: ArrayLike, trials: ArrayLike, alpha: float, threshold: float
) -> np.ndarray:
    """One look of the target-radius test, per input: :data:`CERTIFIED` where the one-sided
    (1 - alpha) Clopper-Pearson lower bound on the top-class probability exceeds ``threshold``,
    :data:`NOT_CERTIFIED` where the one-sided (1 - alpha) upper bound is below it, :data:`UNDECIDED`
    otherwise (an int8 array).

    ``CERTIFIED`` is wrong (the probability is really at most ``threshold``) with probability at most
    ``alpha``; so is ``NOT_CERTIFIED`` (the probability is really at least ``threshold``).
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must lie strictly between 0 and 1, got {threshold!r}")
    lower = np.asarray(clopper_pearson_lower(successes, trials, alpha))
    upper = np.asarray(clopper_pearson_upper(successes, trials, alpha))
    decision = np.where(lower > threshold, CERTIFIED, np.where(upper < threshold, NOT_CERTIFIED, UNDECIDED))
    return np.atleast_1d(decision).astype(np.int8)


def reachable_radius(
    successes: ArrayLike,
    trials: ArrayLike,
    alpha: float,
    final_trials: int,
    final_alpha: float,
    sigma: float,
) -> float | np.ndarray:
    """An optimistic forecast of the radius a run continued to ``final_trials`` samples could certify.

    With ``U`` the one-sided (1 - alpha) Clopper-Pearson upper bound on the top-class probability from
    the current counts, it is the radius that the final look (level ``final_alpha``) would certify from
    ``floor(U * final_trials)`` votes out of ``final_trials``: the best final count that is still
    plausible. It is a forecast for the stopping rule, not a certificate; it is 0 when ``U <= 1/2``.
    """
    final_trials = _check_whole("final_trials", final_trials, 1)
    upper = np.asarray(clopper_pearson_upper(successes, trials, alpha), dtype=np.float64)
    final_votes = np.floor(upper * final_trials)
    return certified_radius(clopper_pearson_lower(final_votes, final_trials, final_alpha), sigma)


def best_radius_should_stop(
    successes: ArrayLike,
    trials: ArrayLike,
    alpha: float,
    final_trials: int,
    final_alpha: float,
    sigma: float,
    tolerance: float,
) -> np.ndarray:
    """The stopping rule of the best-radius mode, per input: stop when :func:`reachable_radius` exceeds
    the radius certified now (``sigma * Phi^-1`` of the (1 - alpha) lower bound, 0 if not above 1/2) by
    at most ``tolerance``, i.e. when going on to ``final_trials`` samples cannot plausibly raise the
    radius by more than ``tolerance``. This includes every input whose upper bound is at most 1/2."""
    if not np.isfinite(tolerance) or float(tolerance) <= 0:
        raise ValueError(f"tolerance must be a positive, finite number, got {tolerance!r}")
    current = np.asarray(certified_radius(clopper_pearson_lower(successes, trials, alpha), sigma))
    reachable = np.asarray(reachable_radius(successes, trials, alpha, final_trials, final_alpha, sigma))
    return np.atleast_1d(reachable - current <= float(tolerance))
