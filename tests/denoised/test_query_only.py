"""Query-only classifiers: malformed answers are refused (never counted as votes), queries are counted,
and a query budget stops work before it is exceeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_smoothing_plugin.classifiers import QueryBudgetExceeded, QueryOnlyClassifier, labels_from_output
from art_smoothing_plugin.estimators import DenoisedSmoothingClassifier

SHAPE = (1, 8, 8)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ([3, 0, 9], [3, 0, 9]),
        (np.array([3.0, 0.0, 9.0]), [3, 0, 9]),
        (torch.tensor([1, 2, 3]), [1, 2, 3]),
        (np.eye(10)[[4, 5, 6]], [4, 5, 6]),
        (np.array([[0.1] * 9 + [5.0]] * 3), [9, 9, 9]),
    ],
)
def test_valid_answers_are_read(answer, expected):
    np.testing.assert_array_equal(labels_from_output(answer, 3, 10), expected)


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        ([1, 2], "auto", "one label per input"),
        ([1, 2, 3, 4], "auto", "one label per input"),
        ([1, 2, 10], "auto", r"outside \[0, 10\)"),
        ([1, -1, 2], "auto", r"outside \[0, 10\)"),
        ([1.5, 2.0, 3.0], "auto", "integer class labels"),
        ([1.0, float("nan"), 3.0], "auto", "integer class labels"),
        ([True, False, True], "auto", "booleans"),
        (["a", "b", "c"], "auto", "numbers"),
        ([[1, 2], [3], [4]], "auto", "ragged|not an array|numbers"),
        (np.full((3, 10), np.nan), "auto", "NaN"),
        (np.zeros((3, 9)), "auto", r"\(3, 10\)"),
        (np.zeros((3, 10)), "labels", "one label per input"),
        ([1, 2, 3], "scores", r"\(3, 10\)"),
        (np.zeros((3, 10, 1)), "auto", r"\(3, 10\)"),
    ],
)
def test_malformed_answers_are_refused(answer, kind, message):
    with pytest.raises(ValueError, match=message):
        labels_from_output(answer, 3, 10, kind)


@pytest.fixture(scope="module")
def label_fn(clean_classifier):
    def labels(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return clean_classifier(torch.from_numpy(batch)).argmax(dim=1).numpy()

    return labels


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda labels: labels[:-1], id="one-label-short"),
        pytest.param(lambda labels: np.where(labels == labels[0], 10, labels), id="label-out-of-range"),
        pytest.param(lambda labels: np.eye(10)[labels] * np.nan, id="nan-scores"),
        pytest.param(lambda labels: labels + 0.5, id="fractional-labels"),
    ],
)
def test_malformed_labels_stop_certification(corrupt, label_fn, denoisers, digits):
    def malformed(batch: np.ndarray):
        return corrupt(label_fn(batch))

    estimator = DenoisedSmoothingClassifier(
        malformed, denoisers[0.25]["mse"], input_shape=SHAPE, nb_classes=10, scale=0.25, seed=0
    )
    with pytest.raises(ValueError, match="query-only classifier"):
        estimator.certify(digits.x_test[:3], n=50, n0=10)


def test_labels_and_scores_give_the_same_certificates(label_fn, clean_classifier, denoisers, digits):
    def scores(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return clean_classifier(torch.from_numpy(batch)).numpy()

    results = []
    for fn in (label_fn, scores, QueryOnlyClassifier(scores, 10, output="scores", batch_size=7)):
        estimator = DenoisedSmoothingClassifier(
            fn, denoisers[0.25]["mse"], input_shape=SHAPE, nb_classes=10, scale=0.25, seed=5, batch_size=70
        )
        results.append(estimator.certify_detailed(digits.x_test[:5], 60, n0=10))
    for other in results[1:]:
        np.testing.assert_array_equal(other.counts_top, results[0].counts_top)
        np.testing.assert_array_equal(other.labels, results[0].labels)


def test_queries_are_counted(label_fn):
    classifier = QueryOnlyClassifier(label_fn, 10, batch_size=4)
    labels = classifier(np.zeros((10, *SHAPE), dtype=np.float32))
    assert labels.shape == (10,)
    assert classifier.query_count == 10 and classifier.call_count == 3


def test_a_budget_that_cannot_cover_the_call_is_refused_before_any_query(label_fn, denoisers, digits):
    classifier = QueryOnlyClassifier(label_fn, 10, query_budget=1000)
    estimator = DenoisedSmoothingClassifier(
        classifier, denoisers[0.25]["mse"], input_shape=SHAPE, nb_classes=10, scale=0.25, seed=0
    )
    with pytest.raises(QueryBudgetExceeded, match="needs 1100"):
        estimator.certify(digits.x_test[:10], n=100, n0=10)
    assert classifier.query_count == 0 and estimator.query_count == 0
    labels, _ = estimator.certify(digits.x_test[:5], n=100, n0=10)
    assert classifier.query_count == 550 and estimator.queries_remaining == 450
    assert labels.shape == (5,)


def test_the_estimator_budget_applies_to_any_classifier(label_fn, digits):
    estimator = DenoisedSmoothingClassifier(
        label_fn, None, input_shape=SHAPE, nb_classes=10, scale=0.25, query_budget=500
    )
    with pytest.raises(QueryBudgetExceeded):
        estimator.predict_labels(digits.x_test[:6], n=100)
    assert estimator.query_count == 0
    estimator.predict_labels(digits.x_test[:5], n=100)
    assert estimator.query_count == 500 and estimator.queries_remaining == 0


def test_a_budget_exhausted_midway_raises_instead_of_certifying(label_fn, digits):
    # The adapter's own budget is checked per call, so a budget the estimator cannot see in advance
    # (another user of the same adapter spends it) still stops the run with an error.
    classifier = QueryOnlyClassifier(label_fn, 10, query_budget=300)
    estimator = DenoisedSmoothingClassifier(classifier, None, input_shape=SHAPE, nb_classes=10, scale=0.25)
    classifier.query_count = 250  # spent elsewhere after the estimator's up-front check would pass
    with pytest.raises(QueryBudgetExceeded, match="exhausted"):
        estimator.smoother.certify(torch.from_numpy(digits.x_test[:2]), 10, 100, 0.001)
    assert classifier.query_count <= 300
