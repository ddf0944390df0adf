"""Adaptive certification at a target radius agrees with fixed-n CERTIFY on a small trained model.

The two runs use independent noise, so they may disagree on points whose top-class probability p lies
near the threshold t = Phi(r / sigma); elsewhere disagreement is rare, with a bound derived below, and
the test refuses a disagreement count that is implausible under that bound.

Bound. Fixed-n uses n0 selection and N estimation samples at level alpha; adaptive uses n0 selection
samples and the same cap N, its last look at level alpha_K. For one point with top-class probability p:

* p <= t: each run certifies only by a wrong certificate (probability <= alpha each), so
  P(disagree) <= 2 alpha.
* p > t: disagreement needs one run not to certify. Fixed-n fails to certify only if its selection
  misses the top class (<= P(Bin(n0, p) <= n0/2)) or its count is <= k_fixed, the largest count whose
  lower bound does not exceed t (P = F(k_fixed; N, p)). Adaptive fails only if its selection misses,
  an early "not certifiable" is wrong (<= alpha, union bound over the looks' upper bounds), or it
  reaches the last look with a count <= k_K (<= F(k_K; N, p)). So
  P(disagree) <= pi(p) = 2 P(Bin(n0, p) <= n0/2) + alpha + F(k_fixed; N, p) + F(k_K; N, p), which
  decreases in p.

p is unknown: a third, independent reference run (N_REF samples per point) gives simultaneous
Clopper-Pearson intervals [lo, hi] for every class probability of every point (level BETA in all), hence
for p = max_c p_c. Each point's disagreement probability is then at most pi_max = 2 alpha if hi <= t,
pi(lo) if lo > t, and pi(t) otherwise. Disagreements are independent across points, so their number is
stochastically below a Poisson-binomial variable with these probabilities; the test fails when the
observed count lies in that variable's upper tail of probability < 1e-3.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from art_smoothing_plugin import Smoother
from art_smoothing_plugin import statistics as S

RADIUS = 0.25
N0 = 50
N = 2_000
N_REF = 20_000
ALPHA = 0.001
BETA = 1e-3
POINTS = 120
SIGNIFICANCE = 1e-3


def poisson_binomial_upper_tail(count: int, probabilities: np.ndarray) -> float:
    """P(sum of independent Bernoulli(probabilities) >= count), by dynamic programming."""
    distribution = np.array([1.0])
    for q in probabilities:
        distribution = np.append(distribution * (1 - q), 0.0) + np.append(0.0, distribution * q)
    return float(distribution[count:].sum())


def largest_failing_count(trials: int, alpha: float, threshold: float) -> int:
    lower = np.atleast_1d(S.clopper_pearson_lower(np.arange(trials + 1), trials, alpha))
    return int(np.flatnonzero(lower <= threshold).max())


def test_adaptive_decisions_agree_with_fixed_n_within_the_derived_bound(
    digits_estimator, digits, digits_sigma
):
    estimator = digits_estimator
    x = digits.x_test[:POINTS]
    threshold = float(S.required_top_probability(RADIUS, digits_sigma))

    fixed = estimator.certify_detailed(x, N, n0=N0, alpha=ALPHA, seed=1)
    adaptive = estimator.certify_adaptive(x, radius=RADIUS, max_samples=N0 + N, alpha=ALPHA, n0=N0, seed=2)
    fixed_certified = fixed.p_lower > threshold
    adaptive_certified = adaptive.extras["certified"]
    disagreements = int(np.sum(fixed_certified != adaptive_certified))

    reference = Smoother(lambda z: estimator.model(z).argmax(1), 10, digits_sigma, batch_size=8192, seed=3)
    counts = reference.vote_counts(torch.from_numpy(x), N_REF).numpy()
    level = BETA / (2 * counts.size)  # two-sided, union over points and classes
    lo = np.max(np.atleast_1d(S.clopper_pearson_lower(counts, N_REF, level)).reshape(counts.shape), axis=1)
    hi = np.max(np.atleast_1d(S.clopper_pearson_upper(counts, N_REF, level)).reshape(counts.shape), axis=1)

    k_fixed = largest_failing_count(N, ALPHA, threshold)
    k_last = largest_failing_count(N, float(adaptive.extras["look_alphas"][-1]), threshold)

    def pi(p: np.ndarray) -> np.ndarray:
        selection_miss = stats.binom.cdf(N0 // 2, N0, p)
        bound = 2 * selection_miss + ALPHA + stats.binom.cdf(k_fixed, N, p) + stats.binom.cdf(k_last, N, p)
        return np.minimum(bound, 1.0)

    pi_max = np.where(
        hi <= threshold, 2 * ALPHA, np.where(lo > threshold, pi(lo), pi(np.full_like(lo, threshold)))
    )
    tail = poisson_binomial_upper_tail(disagreements, pi_max)
    assert tail > SIGNIFICANCE, (
        f"{disagreements} disagreements in {POINTS} points; the bound allows about {pi_max.sum():.2f} "
        f"(P(>= observed) = {tail:.1e})"
    )
    # the bound is informative: most points are clear-cut, and the decisions do not all coincide by luck
    assert pi_max.sum() < 0.2 * POINTS
    assert 0 < fixed_certified.sum() < POINTS
    # the adaptive run never exceeds its budget and saves samples on clear-cut points
    assert np.all(adaptive.samples_used <= N0 + N)
    assert adaptive.samples_used.mean() < N0 + N
