"""Adaptive certification through the denoised estimator: the same guarantee on a query-only linear
oracle, queries counted and budgets refused before sampling, and the torch options on a real denoiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_smoothing_plugin import statistics as S
from art_smoothing_plugin.classifiers import QueryBudgetExceeded, QueryOnlyClassifier
from art_smoothing_plugin.estimators import DenoisedSmoothingClassifier

SIGMA = 0.5
ALPHA = 0.05
DIM = 16
N0 = 50
CAP = 2_000
SIGNIFICANCE = 1e-3


@pytest.fixture(scope="module")
def linear_oracle():
    """A query-only binary linear classifier ``[w . z + b > 0]`` (NumPy in, labels out): its smoothed
    version is itself, and the exact radius at x is ``|w . x + b| / ||w||``."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=DIM)
    b = 0.3

    def labels(batch: np.ndarray) -> np.ndarray:
        return (batch.reshape(len(batch), DIM) @ w + b > 0).astype(np.int64)

    return labels, w, b


def points_at(distances: np.ndarray, w: np.ndarray, b: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    unit = w / np.linalg.norm(w)
    along = rng.normal(size=(len(distances), DIM))
    along -= np.outer(along @ unit, unit)
    sides = rng.choice([-1.0, 1.0], size=len(distances))
    x = along + np.outer(sides * distances - b / np.linalg.norm(w), unit)
    return x.astype(np.float32), (x @ w + b > 0).astype(np.int64)


def test_query_only_radius_mode_is_sound_and_counts_its_queries(linear_oracle):
    labels, w, b = linear_oracle
    estimator = DenoisedSmoothingClassifier(
        labels, None, input_shape=(DIM,), nb_classes=2, scale=SIGMA, clip_values=None, seed=0, batch_size=4096
    )
    target = 0.5
    # Points inside the target radius: certifying any of them at r is a failure (probability <= alpha).
    x, _ = points_at(np.linspace(0.3, target, 600), w, b, seed=1)
    result = estimator.certify_adaptive(x, radius=target, max_samples=N0 + CAP, alpha=ALPHA, n0=N0, seed=1)
    failures = int(result.extras["certified"].sum())
    tail = S.binomial_upper_tail(failures, len(x), ALPHA)
    assert tail > SIGNIFICANCE, f"{failures}/{len(x)} certified beyond the true radius (tail {tail:.1e})"
    # Every noisy sample was one query, and most points stopped long before the cap.
    assert estimator.query_count == int(result.samples_used.sum())
    assert result.samples_used.mean() < 0.5 * (N0 + CAP)

    # Far outside the radius the same points are certified, with the right label.
    x_far, y_far = points_at(np.full(200, 3 * target), w, b, seed=2)
    far = estimator.certify_adaptive(x_far, radius=target, max_samples=N0 + CAP, alpha=ALPHA, n0=N0, seed=2)
    missed = int((~(far.extras["certified"] & (far.labels == y_far))).sum())
    assert S.binomial_upper_tail(missed, len(x_far), ALPHA) > SIGNIFICANCE


def test_a_budget_that_cannot_cover_the_worst_case_is_refused_before_any_query(linear_oracle):
    labels, w, b = linear_oracle
    classifier = QueryOnlyClassifier(labels, 2, query_budget=10_000)
    estimator = DenoisedSmoothingClassifier(
        classifier, None, input_shape=(DIM,), nb_classes=2, scale=SIGMA, clip_values=None, seed=0
    )
    x, _ = points_at(np.full(6, 1.0), w, b, seed=3)
    with pytest.raises(QueryBudgetExceeded, match="needs 12000"):
        estimator.certify_adaptive(x, radius=0.5, max_samples=2_000, n0=N0)
    assert classifier.query_count == 0 and estimator.query_count == 0


def test_auto_batch_size_spends_no_query_outside_the_certification(linear_oracle):
    # A fast query-only classifier once received millions of probe queries from batch_size="auto"; now
    # "auto" takes its own batch size and every query it sees is one of the certification's samples.
    labels, w, b = linear_oracle
    calls: list[int] = []

    def counted(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return labels(batch)

    x, _ = points_at(np.full(4, 1.0), w, b, seed=5)
    classifier = QueryOnlyClassifier(counted, 2, batch_size=128, query_budget=len(x) * (N0 + CAP))
    estimator = DenoisedSmoothingClassifier(
        classifier, None, input_shape=(DIM,), nb_classes=2, scale=SIGMA, clip_values=None, seed=0
    )
    result = estimator.certify_adaptive(x, radius=0.5, max_samples=N0 + CAP, n0=N0, batch_size="auto", seed=5)
    assert sum(calls) == int(result.samples_used.sum()) == estimator.query_count == classifier.query_count
    assert max(calls) <= 128


def test_auto_batch_size_probes_a_torch_chain_without_spending_its_budget(linear_oracle):
    # A torch classifier may be probed (it runs here), but through an uncounted copy of the chain: the
    # query count is the certification's samples and a budget of the worst case is enough.
    _, w, b = linear_oracle
    linear = torch.nn.Linear(DIM, 1)
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(w, dtype=torch.float32)[None])
        linear.bias.fill_(b)
    model = torch.nn.Sequential(linear, torch.nn.Flatten(0), Stack())
    x, _ = points_at(np.full(3, 1.0), w, b, seed=6)
    estimator = DenoisedSmoothingClassifier(
        model,
        None,
        input_shape=(DIM,),
        nb_classes=2,
        scale=SIGMA,
        clip_values=None,
        seed=0,
        query_budget=len(x) * (N0 + CAP),
    )
    result = estimator.certify_adaptive(x, radius=0.5, max_samples=N0 + CAP, n0=N0, batch_size="auto", seed=6)
    assert estimator.query_count == int(result.samples_used.sum())


class Stack(torch.nn.Module):
    """Margins m to two-class logits (-m, m)."""

    def forward(self, margin: torch.Tensor) -> torch.Tensor:
        return torch.stack([-margin, margin], dim=1)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"radius": 0.0}, "radius"),
        ({"radius": 0.5, "max_samples": 50}, "max_samples"),
        ({"mode": "x"}, "mode"),
    ],
)
def test_bad_adaptive_arguments_are_refused_by_name(linear_oracle, kwargs, name):
    labels, w, b = linear_oracle
    estimator = DenoisedSmoothingClassifier(
        labels, None, input_shape=(DIM,), nb_classes=2, scale=SIGMA, clip_values=None, seed=0
    )
    x, _ = points_at(np.full(2, 1.0), w, b, seed=4)
    with pytest.raises(ValueError, match=name):
        estimator.certify_adaptive(x, n0=N0, **kwargs)
    assert estimator.query_count == 0


def test_torch_options_on_a_denoiser_keep_the_decisions(clean_classifier, denoisers, digits):
    estimator = DenoisedSmoothingClassifier(
        clean_classifier, denoisers[0.25]["mse"], input_shape=(1, 8, 8), nb_classes=10, scale=0.25, seed=0
    )
    x = digits.x_test[:6]
    plain = estimator.certify_adaptive(x, radius=0.1, max_samples=1_100, n0=100, seed=3)
    fast = estimator.certify_adaptive(
        x, radius=0.1, max_samples=1_100, n0=100, seed=3, precision="bf16", channels_last=True
    )
    threshold = S.required_top_probability(0.1, 0.25)
    for result in (plain, fast):
        assert result.labels.shape == (6,) and np.all(result.samples_used <= 1_100)
        # "certified at r" is exactly a lower bound above Phi(r / sigma), for a label that is not -1
        certified = result.extras["certified"]
        np.testing.assert_array_equal(certified, (result.p_lower > threshold) & (result.labels != -1))
    assert plain.extras["certified"].any()
    for module in (estimator.denoiser, clean_classifier):  # undo the format change for other tests
        module.to(memory_format=torch.contiguous_format)
