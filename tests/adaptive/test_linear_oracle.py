"""Soundness on an oracle with a known answer: a binary linear classifier ``f(z) = [w . z + b > 0]``.

For a linear f, the smoothed classifier is f itself and the top-class probability at x is
``Phi(R / sigma)`` with ``R = |w . x + b| / ||w||``, the distance to the hyperplane: the exact certified
radius is R. A certificate is wrong when its label is not f(x) or its radius exceeds R (radius mode:
"certified at r" while R < r). Each such failure has probability at most alpha per point, so the count
over M points is checked against Binomial(M, alpha) (refused when its upper tail is below 1e-3). alpha
is 0.05 so that a few thousand points make the check sharp.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from art_smoothing_plugin import RandomizedSmoothingClassifier
from art_smoothing_plugin import statistics as S

SIGMA = 0.5
ALPHA = 0.05
DIM = 16
N0 = 50
CAP = 2_000
SIGNIFICANCE = 1e-3


@pytest.fixture(scope="module")
def oracle():
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(DIM, generator=generator)
    b = 0.3
    layer = torch.nn.Linear(DIM, 2)
    with torch.no_grad():  # logits (0, w.z + b): argmax is 1 exactly when w.z + b > 0
        layer.weight.copy_(torch.stack([torch.zeros(DIM), w]))
        layer.bias.copy_(torch.tensor([0.0, b]))
    estimator = RandomizedSmoothingClassifier(
        layer, input_shape=(DIM,), nb_classes=2, device_type="cpu", scale=SIGMA, seed=0, batch_size=8192
    )
    return estimator, w.numpy().astype(np.float64), b


def points_at(distances: np.ndarray, w: np.ndarray, b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Points at signed distance ``distances`` from the hyperplane (random side, random offset along it)."""
    rng = np.random.default_rng(seed)
    unit = w / np.linalg.norm(w)
    along = rng.normal(size=(len(distances), DIM))
    along -= np.outer(along @ unit, unit)  # orthogonal to w: does not change the distance
    sides = rng.choice([-1.0, 1.0], size=len(distances))
    x = along + np.outer(sides * distances - b / np.linalg.norm(w), unit)
    labels = (x @ w + b > 0).astype(np.int64)
    return x.astype(np.float32), labels


def assert_within_alpha(failures: int, trials: int, what: str) -> None:
    tail = S.binomial_upper_tail(failures, trials, ALPHA)
    assert tail > SIGNIFICANCE, f"{what}: {failures}/{trials} failures; P(Bin(n, alpha) >= that) = {tail:.1e}"


def test_radius_mode_never_certifies_beyond_the_true_radius_more_than_alpha(oracle):
    estimator, w, b = oracle
    target = 0.5
    # 1,500 points inside the target radius (certifying them at r is wrong), hardest ones just inside.
    inside = np.linspace(0.35, target, 1_500)
    x_in, _ = points_at(inside, w, b, seed=1)
    result = estimator.certify_adaptive(
        x_in, radius=target, max_samples=N0 + CAP, alpha=ALPHA, n0=N0, seed=1, batch_size=8192
    )
    assert_within_alpha(int(result.extras["certified"].sum()), len(inside), "certified at r with R < r")

    # Points well outside (R = 1.5 r, p = Phi(1.5) vs threshold Phi(1)): "not certified" needs a wrong
    # early futility stop (probability <= alpha) or a final count at or below the largest count that does
    # not certify (binomial tail, negligible here) or a wrong selection (negligible): at most ~alpha.
    outside = np.full(500, 1.5 * target)
    x_out, y_out = points_at(outside, w, b, seed=2)
    result = estimator.certify_adaptive(
        x_out, radius=target, max_samples=N0 + CAP, alpha=ALPHA, n0=N0, seed=2, batch_size=8192
    )
    missed = ~(result.extras["certified"] & (result.labels == y_out))
    final_alpha = result.extras["look_alphas"][-1]
    threshold = S.required_top_probability(target, SIGMA)
    counts = np.arange(CAP + 1)
    largest_failing = np.flatnonzero(
        np.atleast_1d(S.clopper_pearson_lower(counts, CAP, final_alpha)) <= threshold
    )
    final_miss = stats.binom.cdf(largest_failing.max(), CAP, stats.norm.cdf(1.5))
    assert final_miss < 1e-6
    assert_within_alpha(int(missed.sum()), len(outside), "not certified at r with R = 1.5 r")
    assert np.all(result.samples_used < N0 + CAP)  # all decided before the budget


def test_budget_mode_radii_exceed_the_true_radius_at_most_alpha(oracle):
    estimator, w, b = oracle
    distances = np.linspace(0.0, 1.5, 2_000)
    x, labels = points_at(distances, w, b, seed=3)
    result = estimator.certify_adaptive(
        x, mode="budget", tolerance=0.05, max_samples=N0 + CAP, alpha=ALPHA, n0=N0, seed=3, batch_size=8192
    )
    certified = result.labels != -1
    wrong = certified & ((result.labels != labels) | (result.radii > distances))
    assert_within_alpha(int(wrong.sum()), len(distances), "budget-mode radius above the true radius")
    # the radii are those of the returned lower bounds, and no run exceeded its budget
    assert np.allclose(result.radii[certified], SIGMA * stats.norm.ppf(result.p_lower[certified]))
    assert np.all(result.samples_used <= N0 + CAP)
