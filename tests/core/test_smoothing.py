"""PREDICT and CERTIFY against an exact oracle, abstention, reproducibility and the independence of n0 and n.

The oracle: a linear base classifier f(x) = [w.x + b > 0] in d dimensions. Under N(0, sigma^2 I) noise,
w.(x + delta) + b ~ N(w.x + b, sigma^2 |w|^2), so the smoothed classifier has the same decision hyperplane,
its true L2 radius at x is R = |w.x + b| / |w| and its true top-class probability is pA = Phi(R / sigma).
A certificate (c, r) is wrong exactly when c is not the true class or r > R; Cohen's theorem bounds the
probability of that by alpha per input, so over M independent inputs the number of wrong certificates is
stochastically below Binomial(M, alpha). Every bound below is computed from these distributions, exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from art_smoothing_plugin.smoothing import (
    ABSTAIN,
    SmoothedSoftClassifier,
    Smoother,
    certificate_from_counts,
)
from art_smoothing_plugin.statistics import (
    binomial_upper_tail,
    certified_radius,
    clopper_pearson_lower,
    max_certifiable_radius,
)

DIM = 8
SIGMA = 0.5
#: Reject "the failure rate is at most alpha" when the binomial tail of the observed count is below this.
REJECT_BELOW = 1e-3


class LinearOracle:
    """f(x) = 1 where w.x + b > 0, else 0, with closed-form smoothed radius and probability."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=DIM)
        self.b = 0.3
        self._w_t = torch.from_numpy(self.w)

    def labels(self, z: torch.Tensor) -> torch.Tensor:
        return (z.reshape(z.shape[0], -1).to(torch.float64) @ self._w_t + self.b > 0).to(torch.int64)

    def points_at(self, signed_radii: np.ndarray, seed: int) -> np.ndarray:
        """Points at signed distance ``signed_radii`` from the hyperplane (class 1 on the positive side),
        each at a random place along it."""
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(len(signed_radii), DIM))
        norm = np.linalg.norm(self.w)
        on_plane = z - np.outer((z @ self.w + self.b) / norm**2, self.w)
        return on_plane + np.outer(signed_radii, self.w / norm)

    def true_radius(self, x: np.ndarray) -> np.ndarray:
        return np.abs(x @ self.w + self.b) / np.linalg.norm(self.w)

    def true_label(self, x: np.ndarray) -> np.ndarray:
        return (x @ self.w + self.b > 0).astype(np.int64)


def wrong_certificates(labels: np.ndarray, radii: np.ndarray, oracle: LinearOracle, x: np.ndarray) -> int:
    """Certificates that claim something false: a wrong class, or a radius beyond the true one."""
    certified = labels != ABSTAIN
    wrong_class = certified & (labels != oracle.true_label(x))
    too_large = certified & (radii > oracle.true_radius(x))
    return int(np.sum(wrong_class | too_large))


def failure_rate_is_plausible(failures: int, trials: int, alpha: float) -> bool:
    """The soundness check: is ``failures`` of ``trials`` consistent with a failure rate <= alpha?"""
    return binomial_upper_tail(failures, trials, alpha) >= REJECT_BELOW


def radius_per_count(n: int, alpha: float, sigma: float) -> np.ndarray:
    """The radius CERTIFY returns for each possible count 0..n of the candidate (0 where it abstains)."""
    return np.asarray(certified_radius(clopper_pearson_lower(np.arange(n + 1), n, alpha), sigma))


# -- soundness, power and tightness on the exact oracle ---------------------------------------------
ORACLE_M = 400  # inputs
ORACLE_N0, ORACLE_N = 100, 10_000
ORACLE_ALPHA = 0.05  # large, so that a wrong failure rate shows with few inputs
# True radii in [0.75, 2.5] sigma. Below ~0.5 sigma the statistical error of the radius (about
# sigma * sqrt(pA (1 - pA) / n) / phi(R / sigma)) is as large as 10% of R, so an unsound x1.1 could go
# unseen there; the design check in the test computes the exact detection probability for these radii.
ORACLE_RADII_IN_SIGMA = (0.75, 2.5)


@pytest.fixture(scope="module")
def oracle_run() -> dict:
    oracle = LinearOracle(seed=0)
    rng = np.random.default_rng(1)
    radii = SIGMA * rng.uniform(*ORACLE_RADII_IN_SIGMA, size=ORACLE_M)
    signs = np.where(np.arange(ORACLE_M) % 2 == 0, 1.0, -1.0)  # both classes
    x = oracle.points_at(signs * radii, seed=2)
    # batch_size = n: each batch holds one input's samples (the broadcast path of count_votes).
    smoother = Smoother(oracle.labels, num_classes=2, sigma=SIGMA, batch_size=ORACLE_N, seed=3)
    result = smoother.certify(torch.from_numpy(x), ORACLE_N0, ORACLE_N, ORACLE_ALPHA)
    return {"oracle": oracle, "x": x, "result": result}


def test_oracle_points_are_where_they_were_placed(oracle_run: dict) -> None:
    oracle, x = oracle_run["oracle"], oracle_run["x"]
    radii = oracle.true_radius(x)
    assert radii.min() >= SIGMA * ORACLE_RADII_IN_SIGMA[0] - 1e-9
    assert radii.max() <= SIGMA * ORACLE_RADII_IN_SIGMA[1] + 1e-9
    assert set(oracle.true_label(x)) == {0, 1}


def test_exact_probability_of_a_wrong_radius_is_at_most_alpha() -> None:
    # Exact, no sampling: P(CERTIFY's radius > R) = sum over counts k of Binom(n, pA) pmf at the k whose
    # radius exceeds R. Cohen's guarantee says this is <= alpha for every R.
    n, alpha = 2000, 0.05
    radius_of_count = radius_per_count(n, alpha, SIGMA)
    for true_radius in SIGMA * np.linspace(0.01, 3.0, 60):
        pmf = stats.binom.pmf(np.arange(n + 1), n, stats.norm.cdf(true_radius / SIGMA))
        assert pmf[radius_of_count > true_radius].sum() <= alpha + 1e-12


def test_certified_radii_are_sound_at_the_allowed_rate(oracle_run: dict) -> None:
    oracle, x, result = oracle_run["oracle"], oracle_run["x"], oracle_run["result"]
    failures = wrong_certificates(result.labels, result.radii, oracle, x)
    assert failures <= ORACLE_M  # sanity
    assert failure_rate_is_plausible(failures, ORACLE_M, ORACLE_ALPHA), (
        f"{failures} of {ORACLE_M} certificates exceed the true radius; at alpha={ORACLE_ALPHA} the "
        f"binomial tail is {binomial_upper_tail(failures, ORACLE_M, ORACLE_ALPHA):.2e}"
    )


def test_the_soundness_check_catches_radii_ten_percent_too_large(oracle_run: dict) -> None:
    oracle, x, result = oracle_run["oracle"], oracle_run["x"], oracle_run["result"]
    # Design check (no sampling): the exact probability that x1.1 radii exceed the true radius at each
    # point, times the probability that the n0 selection samples pick the true class (a tie goes to the
    # lower class index, so count a tie as a loss).
    radius_of_count = radius_per_count(ORACLE_N, ORACLE_ALPHA, SIGMA)
    true_radii = oracle.true_radius(x)
    p_true = stats.norm.cdf(true_radii / SIGMA)
    k = np.arange(ORACLE_N + 1)
    detect = np.array(
        [
            stats.binom.pmf(k, ORACLE_N, p)[1.1 * radius_of_count > r].sum()
            * stats.binom.sf(ORACLE_N0 // 2, ORACLE_N0, p)
            for p, r in zip(p_true, true_radii, strict=True)
        ]
    )
    critical = next(
        f for f in range(ORACLE_M + 1) if not failure_rate_is_plausible(f, ORACLE_M, ORACLE_ALPHA)
    )
    # Failures of the unsound variant dominate Binomial(M, min detect): the power is at least this.
    power = stats.binom.sf(critical - 1, ORACLE_M, detect.min())
    assert power > 1 - 1e-6, f"the oracle design cannot catch x1.1 (min detection {detect.min():.3f})"

    unsound_failures = wrong_certificates(result.labels, 1.1 * result.radii, oracle, x)
    assert not failure_rate_is_plausible(unsound_failures, ORACLE_M, ORACLE_ALPHA), (
        f"radii x1.1 gave only {unsound_failures} wrong certificates of {ORACLE_M}"
    )


def test_certified_radii_are_tight(oracle_run: dict) -> None:
    # What n samples can certify: the radius at the 0.1% lower quantile of the count N_A ~ Bin(n, pA).
    # CERTIFY falls below it only if N_A falls below that quantile (probability <= 0.001) or the n0
    # selection samples pick the wrong class; both are bounded exactly, and the count of such inputs
    # must not be statistically above that bound.
    oracle, x, result = oracle_run["oracle"], oracle_run["x"], oracle_run["result"]
    quantile = 1e-3
    radius_of_count = radius_per_count(ORACLE_N, ORACLE_ALPHA, SIGMA)
    true_radii = oracle.true_radius(x)
    p_true = stats.norm.cdf(true_radii / SIGMA)
    achievable = radius_of_count[stats.binom.ppf(quantile, ORACLE_N, p_true).astype(np.int64)]
    wrong_selection = stats.binom.cdf(ORACLE_N0 // 2, ORACLE_N0, p_true).max()
    short = int(np.sum((result.labels != oracle.true_label(x)) | (result.radii < achievable)))
    assert binomial_upper_tail(short, ORACLE_M, quantile + wrong_selection) >= REJECT_BELOW, (
        f"{short} of {ORACLE_M} radii fall below what {ORACLE_N} samples certify at the {quantile} quantile"
    )
    # In words: the radii lose little to the statistics (most of the gap is the alpha = 0.05 bound).
    assert np.median(result.radii / true_radii) > 0.95
    assert np.all(result.samples_used == ORACLE_N0 + ORACLE_N)


def test_far_points_certify_the_largest_radius_n_samples_allow() -> None:
    # At R = 6 sigma, pA = 1 - 1e-9: all n votes agree (with probability > 0.9999), and the radius is
    # exactly sigma * Phi^-1(alpha^(1/n)): 3.20 sigma at n = 1e4, alpha = 0.001.
    oracle = LinearOracle(seed=0)
    x = oracle.points_at(np.array([6.0, -6.0]) * SIGMA, seed=5)
    result = Smoother(oracle.labels, 2, SIGMA, 10_000, seed=0).certify(
        torch.from_numpy(x), 100, 10_000, 0.001
    )
    np.testing.assert_array_equal(result.labels, oracle.true_label(x))
    np.testing.assert_allclose(result.radii, max_certifiable_radius(10_000, 0.001, SIGMA), rtol=1e-12)
    assert result.radii[0] == pytest.approx(3.20 * SIGMA, abs=0.005 * SIGMA)


# -- abstention ---------------------------------------------------------------------------------------
BOUNDARY_M = 200


@pytest.fixture(scope="module")
def boundary_points() -> tuple[LinearOracle, np.ndarray]:
    oracle = LinearOracle(seed=0)
    return oracle, oracle.points_at(np.zeros(BOUNDARY_M), seed=7)


def test_predict_abstains_at_the_decision_boundary(boundary_points) -> None:
    # pA = 1/2 exactly: Cohen's test rejects "top two are equally likely" with probability <= alpha, so
    # PREDICT returns a class at most that often; every other output is -1, never class 0.
    oracle, x = boundary_points
    alpha = 0.01
    labels = Smoother(oracle.labels, 2, SIGMA, seed=11).predict(torch.from_numpy(x), 1000, alpha)
    assert labels.dtype == np.int64 and labels.shape == (BOUNDARY_M,)
    assert set(np.unique(labels)) <= {ABSTAIN, 0, 1}
    answered = int(np.sum(labels != ABSTAIN))
    assert failure_rate_is_plausible(answered, BOUNDARY_M, alpha), f"answered {answered} of {BOUNDARY_M}"
    assert int(np.sum(labels == 0)) <= answered  # abstention is -1, never encoded as class 0


def test_certify_abstains_at_the_decision_boundary(boundary_points) -> None:
    oracle, x = boundary_points
    alpha = 0.01
    result = Smoother(oracle.labels, 2, SIGMA, seed=12).certify(torch.from_numpy(x), 100, 1000, alpha)
    certified = ~result.abstained
    assert failure_rate_is_plausible(int(certified.sum()), BOUNDARY_M, alpha)
    assert np.all(result.labels[result.abstained] == ABSTAIN)
    assert np.all(result.radii[result.abstained] == 0.0)
    assert np.all(result.p_lower[result.abstained] <= 0.5)
    # The candidate is still reported, and it is a class.
    assert set(np.unique(result.candidates)) <= {0, 1}


def test_predict_answers_far_from_the_boundary() -> None:
    oracle = LinearOracle(seed=0)
    x = oracle.points_at(np.array([1.5, -1.5, 2.0, -2.0]) * SIGMA, seed=8)
    labels = Smoother(oracle.labels, 2, SIGMA, seed=0).predict(torch.from_numpy(x), 1000, 0.001)
    # pA >= Phi(1.5) = 0.933: with 1000 draws the test rejects with probability > 1 - 1e-100.
    np.testing.assert_array_equal(labels, oracle.true_label(x))


# -- reproducibility and independence ------------------------------------------------------------------
def test_same_seed_same_result_and_different_seeds_differ(boundary_points) -> None:
    oracle, x = boundary_points
    xt = torch.from_numpy(x)

    def certify(seed: int):
        return Smoother(oracle.labels, 2, SIGMA, batch_size=333, seed=seed).certify(xt, 50, 200, 0.05)

    first, again, other = certify(21), certify(21), certify(22)
    for name in ("labels", "radii", "p_lower", "candidates", "counts_top"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))
    # At pA = 1/2 each count is Binomial(200, 1/2): 200 inputs all agreeing by chance is impossible.
    assert not np.array_equal(first.counts_top, other.counts_top)


def test_fresh_noise_on_every_call_and_reseed_restarts_it(boundary_points) -> None:
    oracle, x = boundary_points
    xt = torch.from_numpy(x)
    smoother = Smoother(oracle.labels, 2, SIGMA, seed=5)
    first = smoother.vote_counts(xt, 100)
    second = smoother.vote_counts(xt, 100)
    assert not torch.equal(first, second)
    smoother.reseed(5)
    assert torch.equal(smoother.vote_counts(xt, 100), first)
    unseeded = Smoother(oracle.labels, 2, SIGMA)
    assert not torch.equal(unseeded.vote_counts(xt, 100), unseeded.vote_counts(xt, 100))


def test_selection_and_estimation_samples_are_independent() -> None:
    # At pA = 1/2 with n0 = n = 100: if the n estimation samples were the n0 selection samples, the
    # candidate's count would always be >= 50. Independent, it is Binomial(100, 1/2) whatever the
    # candidate, so P(count < 50) = 0.4602; accept the observed fraction between its 1e-6 quantiles.
    oracle = LinearOracle(seed=0)
    m = 400
    x = torch.from_numpy(oracle.points_at(np.zeros(m), seed=9))
    result = Smoother(oracle.labels, 2, SIGMA, seed=13).certify(x, 100, 100, 0.05)
    below_half = int(np.sum(result.counts_top < 50))
    p_below = stats.binom.cdf(49, 100, 0.5)
    low, high = stats.binom.ppf([1e-6, 1 - 1e-6], m, p_below)
    assert low <= below_half <= high, f"{below_half} of {m} candidate counts below 50"


def test_selection_noise_is_not_reused_for_estimation() -> None:
    seen: list[torch.Tensor] = []

    def record(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.clone())
        return torch.zeros(z.shape[0], dtype=torch.int64)

    Smoother(record, 2, 1.0, batch_size=1000, seed=0).certify(torch.zeros(1, 4), 50, 50, 0.1)
    assert [len(s) for s in seen] == [50, 50]
    assert not torch.allclose(seen[0], seen[1])


# -- the result object and the counts-to-certificate step -------------------------------------------------
def test_certificate_from_counts_hand_computed() -> None:
    n, alpha, sigma = 100, 0.01, 0.25
    result = certificate_from_counts(np.array([3, 1, 2]), np.array([100, 50, 90]), 10, n, alpha, sigma)
    bound_all = alpha ** (1 / n)
    bound_90 = stats.beta.ppf(alpha, 90, 11)
    np.testing.assert_allclose(result.p_lower, [bound_all, stats.beta.ppf(alpha, 50, 51), bound_90])
    np.testing.assert_array_equal(result.labels, [3, ABSTAIN, 2])
    np.testing.assert_allclose(
        result.radii, [sigma * stats.norm.ppf(bound_all), 0.0, sigma * stats.norm.ppf(bound_90)]
    )
    np.testing.assert_array_equal(result.candidates, [3, 1, 2])
    np.testing.assert_array_equal(result.samples_used, [110, 110, 110])
    assert len(result) == 3
    np.testing.assert_array_equal(result.certified_at(0.0), [True, False, True])
    np.testing.assert_array_equal(result.certified_at(0.0, y_true=np.array([3, 1, 0])), [True, False, False])
    records = result.to_records()
    assert records[1] == {
        "label": ABSTAIN,
        "radius": 0.0,
        "p_lower": pytest.approx(result.p_lower[1]),
        "candidate": 1,
        "count_top": 50,
        "samples_used": 110,
    }


# -- the smoothed soft classifier -----------------------------------------------------------------------
def test_smoothed_soft_classifier_is_log_mean_softmax_over_its_draws() -> None:
    torch.manual_seed(0)
    base = torch.nn.Linear(4, 3)
    x = torch.rand(5, 4)
    soft = SmoothedSoftClassifier(base, sigma=0.3, num_samples=16, noise_seed=42)
    out = soft(x)
    assert out.shape == (5, 3)
    torch.testing.assert_close(out.exp().sum(dim=1), torch.ones(5))
    # The same draws by hand: noise_seed fixes them, so the objective is deterministic across calls.
    from art_smoothing_plugin.sampling import gaussian_copies, make_generator

    noisy = gaussian_copies(x, 16, 0.3, make_generator(42))
    expected = torch.softmax(base(noisy), dim=1).reshape(5, 16, 3).mean(dim=1).log()
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(soft(x), out)
    unseeded = SmoothedSoftClassifier(base, sigma=0.3, num_samples=16)
    assert not torch.equal(unseeded(x), unseeded(x))
    # Gradients flow to the input.
    xg = x.clone().requires_grad_(True)
    soft(xg)[:, 0].sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
