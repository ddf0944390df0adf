"""What ART's classes hand down to both estimators answers for the smoothed classifier, or refuses clearly:
``predict``'s ``is_abstain`` keyword, ``fit_generator``, the class-gradient, loss and activation methods,
ART's randomized-smoothing type, channels-last inputs. Tiny models with known behaviour, no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

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


# -- fit_generator -------------------------------------------------------------------------------------------
class InputRecorder(torch.nn.Module):
    """A linear model that records, in training mode, the sum of squares and count of the values it sees."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.linear = torch.nn.Linear(4, 2)
        self.sum_squares, self.count = 0.0, 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.sum_squares += float((z.detach() ** 2).sum())
            self.count += z.numel()
        return self.linear(z)


def trainable(model: torch.nn.Module, scale: float = 0.5) -> RandomizedSmoothingClassifier:
    return RandomizedSmoothingClassifier(
        model,
        torch.nn.CrossEntropyLoss(),
        (4,),
        2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        clip_values=(0.0, 1.0),
        device_type="cpu",
        scale=scale,
        seed=3,
    )


def data_generators(x: np.ndarray, y: np.ndarray, batch_size: int):
    """ART's PyTorch data generator (its own training loop in ART) and a plain DataGenerator."""
    from art.data_generators import NumpyDataGenerator, PyTorchDataGenerator

    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)), batch_size=batch_size
    )
    return {
        "pytorch": PyTorchDataGenerator(loader, size=len(x), batch_size=batch_size),
        "numpy": NumpyDataGenerator(x, y, batch_size=batch_size, shuffle=False),
    }


@pytest.mark.parametrize("generator_kind", ["pytorch", "numpy"])
def test_fit_generator_adds_the_noise_fit_adds(generator_kind) -> None:
    # Clean inputs are all zero, so what the model sees is the noise alone: under N(0, scale^2) noise the
    # sum of squares / scale^2 is chi-square with as many degrees of freedom as values seen.
    scale, x = 0.5, np.zeros((64, 4), dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[np.arange(64) % 2]
    recorders = {"fit": InputRecorder(), "fit_generator": InputRecorder()}
    trainable(recorders["fit"], scale).fit(x, y, batch_size=16, nb_epochs=3)
    trainable(recorders["fit_generator"], scale).fit_generator(
        data_generators(x, y, 16)[generator_kind], nb_epochs=3
    )
    for name, recorder in recorders.items():
        assert recorder.count == 3 * x.size, name  # three epochs of every input
        statistic = recorder.sum_squares / scale**2
        low, high = stats.chi2.ppf([1e-6, 1 - 1e-6], recorder.count)
        assert low < statistic < high, (name, (recorder.sum_squares / recorder.count) ** 0.5)


@pytest.mark.parametrize("generator_kind", ["pytorch", "numpy"])
def test_fit_generator_trains_exactly_as_fit(generator_kind) -> None:
    # One batch of identical rows per epoch: fit's shuffling cannot reorder anything, so the same noise
    # stream must give the same weights, bit for bit.
    x = np.full((32, 4), 0.3, dtype=np.float32)
    y = np.ones(32, dtype=np.int64)
    by_fit, by_generator = InputRecorder(seed=1), InputRecorder(seed=1)
    trainable(by_fit).fit(x, y, batch_size=32, nb_epochs=4)
    trainable(by_generator).fit_generator(data_generators(x, y, 32)[generator_kind], nb_epochs=4)
    for a, b in zip(by_fit.parameters(), by_generator.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not by_generator.training  # left in eval mode, as fit leaves it


def test_fit_generator_refuses_what_is_not_a_data_generator() -> None:
    with pytest.raises(ValueError, match="DataGenerator"):
        trainable(InputRecorder()).fit_generator([(np.zeros((2, 4)), np.zeros(2))], nb_epochs=1)
