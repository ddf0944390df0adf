"""What ART's classes hand down to both estimators answers for the smoothed classifier, or refuses clearly:
``predict``'s ``is_abstain`` keyword, ``fit_generator``, the class-gradient, loss and activation methods,
ART's randomized-smoothing type, channels-last inputs. Tiny models with known behaviour, no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_smoothing_plugin import ABSTAIN, DenoisedSmoothingClassifier, RandomizedSmoothingClassifier
from art_smoothing_plugin.statistics import binomial_upper_tail

SIGMA = 0.1
ALPHA = 0.001
SAMPLES = 64
#: Binomial-tail limit of the tests below: a count is called too high when P(count or more) < this.
REJECT_BELOW = 1e-3


class Boundary(torch.nn.Module):
    """Two classes split by the hyperplane z_0 = 0.5 (class 1 beyond it), with steep logits; the other
    coordinate does not matter. At z_0 = 0.5 the noise sends half the draws each way."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        margin = 20.0 * (z[:, 0] - 0.5)
        return torch.stack([-margin, margin], dim=1)


def make(kind: str, model: torch.nn.Module, input_shape=(2,), nb_classes=2, **kwargs):
    """The randomized estimator around ``model``, or the denoised one with ``model`` as its classifier and
    no denoiser: the same smoothed classifier, through each estimator's own code."""
    options = {"scale": SIGMA, "alpha": ALPHA, "sample_size": SAMPLES, "seed": 0, "clip_values": (0.0, 1.0)}
    options.update(kwargs)
    if kind == "randomized":
        return RandomizedSmoothingClassifier(
            model, input_shape=input_shape, nb_classes=nb_classes, device_type="cpu", **options
        )
    return DenoisedSmoothingClassifier(model, None, input_shape=input_shape, nb_classes=nb_classes, **options)


KINDS = ["randomized", "denoised"]


def boundary_points(on_boundary: int = 40) -> np.ndarray:
    """One point deep in class 0, one deep in class 1, then ``on_boundary`` points on the boundary."""
    x = np.full((2 + on_boundary, 2), 0.3, dtype=np.float32)
    x[0, 0], x[1, 0], x[2:, 0] = 0.0, 1.0, 0.5
    return x


def one_hot(labels: np.ndarray, nb_classes: int) -> np.ndarray:
    rows = np.zeros((len(labels), nb_classes), dtype=np.float32)
    answered = np.flatnonzero(labels != ABSTAIN)
    rows[answered, labels[answered]] = 1.0
    return rows


# -- predict(is_abstain=...) -------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_predict_default_is_frequencies(kind) -> None:
    frequencies = make(kind, Boundary()).predict(boundary_points(), seed=7)
    np.testing.assert_allclose(frequencies.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(frequencies[:2], [[1.0, 0.0], [0.0, 1.0]])
    assert np.all(frequencies.max(axis=1) > 0)  # never a zero row, even on the boundary


@pytest.mark.parametrize("kind", KINDS)
def test_predict_is_abstain_true_gives_arts_rows_from_predict(kind) -> None:
    estimator, x = make(kind, Boundary()), boundary_points()
    rows = estimator.predict(x, batch_size=8, is_abstain=True, seed=7)
    # The same draws (same seed, same samples per forward pass) through Cohen's PREDICT at level alpha.
    labels = estimator.predict_labels(x, n=SAMPLES, alpha=ALPHA, batch_size=8 * SAMPLES, seed=7)
    np.testing.assert_array_equal(rows, one_hot(labels, 2))
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows[:2], [[1.0, 0.0], [0.0, 1.0]])
    # On the boundary PREDICT answers with probability at most alpha per point: zero rows.
    answered = int(np.count_nonzero(rows[2:].sum(axis=1)))
    assert binomial_upper_tail(answered, len(x) - 2, ALPHA) >= REJECT_BELOW, answered


@pytest.mark.parametrize("kind", KINDS)
def test_predict_is_abstain_false_gives_one_hot_of_the_smoothed_argmax(kind) -> None:
    estimator, x = make(kind, Boundary()), boundary_points()
    rows = estimator.predict(x, batch_size=8, is_abstain=False, seed=7)
    frequencies = estimator.predict(x, batch_size=8, seed=7)
    np.testing.assert_array_equal(rows, one_hot(frequencies.argmax(axis=1), 2))
    np.testing.assert_array_equal(rows.sum(axis=1), 1.0)


@pytest.mark.parametrize("kind", KINDS)
def test_predict_refuses_a_bad_is_abstain(kind) -> None:
    with pytest.raises(ValueError, match="is_abstain"):
        make(kind, Boundary()).predict(boundary_points(), is_abstain="yes")
