"""RandomizedSmoothingClassifier as an ART estimator: drop-in construction, ART's return values, one noise
space under preprocessing, parameters, eval mode, gradients, and soundness through the estimator."""

from __future__ import annotations

import copy
import inspect

import numpy as np
import pytest
import torch
from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
from scipy import stats

from art_smoothing_plugin import ABSTAIN, RandomizedSmoothingClassifier
from art_smoothing_plugin.statistics import binomial_upper_tail

REJECT_BELOW = 1e-3


# -- drop-in construction -------------------------------------------------------------------------------
def test_constructor_takes_arts_arguments_in_arts_order() -> None:
    art_names = list(inspect.signature(PyTorchRandomizedSmoothing.__init__).parameters)[1:]
    our_names = list(inspect.signature(RandomizedSmoothingClassifier.__init__).parameters)[1:]
    assert our_names[: len(art_names)] == art_names
    for name in art_names:  # same defaults where ART has one
        art_default = inspect.signature(PyTorchRandomizedSmoothing.__init__).parameters[name].default
        if art_default is not inspect.Parameter.empty:
            our_default = inspect.signature(RandomizedSmoothingClassifier.__init__).parameters[name].default
            assert our_default == art_default, name


def test_the_same_arguments_build_arts_class_and_ours(make_mlp) -> None:
    model = make_mlp()
    arguments = [
        model,
        torch.nn.CrossEntropyLoss(),
        (1, 8, 8),
        10,
        torch.optim.SGD(model.parameters(), lr=0.1),
        True,
        (0.0, 1.0),
        None,
        None,
        (0.0, 1.0),
        "cpu",
        16,
        0.3,
        0.01,
    ]
    art_estimator = PyTorchRandomizedSmoothing(*arguments)
    ours = RandomizedSmoothingClassifier(*arguments)
    for name in ("input_shape", "nb_classes", "sample_size", "scale", "alpha", "channels_first"):
        assert getattr(ours, name) == getattr(art_estimator, name), name
    np.testing.assert_array_equal(ours.clip_values, art_estimator.clip_values)
    assert ours.n0 == 100 and ours.smoothed_gradients is True  # our additions, with their defaults


# -- ART's return values ---------------------------------------------------------------------------------
def test_certify_returns_arts_numpy_pair(trained_estimator, test_subset) -> None:
    x, y = test_subset
    labels, radii = trained_estimator.certify(x, n=500, batch_size=400, alpha=0.001, seed=1)
    assert isinstance(labels, np.ndarray) and isinstance(radii, np.ndarray)
    assert labels.shape == radii.shape == (len(x),)
    assert labels.dtype == np.int64 and radii.dtype == np.float64
    assert set(np.unique(labels)) <= {ABSTAIN, *range(10)}
    assert np.all(radii[labels == ABSTAIN] == 0.0)
    assert np.all(radii[labels != ABSTAIN] > 0.0)
    # A model at 97% smoothed accuracy certifies most digits correctly at alpha = 0.001 with n = 500.
    assert np.mean(labels == y) > 0.85
    detailed = trained_estimator.certify_detailed(x, 500, 400, alpha=0.001, seed=1)
    np.testing.assert_array_equal(detailed.labels, labels)
    np.testing.assert_array_equal(detailed.radii, radii)


def test_certify_options_n0_alpha_seed_and_tensors(trained_estimator, test_subset, digits_sigma) -> None:
    x = test_subset[0][:20]
    loose = trained_estimator.certify_detailed(x, 300, n0=17, alpha=0.05, seed=2)
    strict = trained_estimator.certify_detailed(torch.from_numpy(x), 300, n0=17, alpha=0.001, seed=2)
    assert np.all(loose.samples_used == 317) and loose.n0 == 17 and loose.n == 300
    # Same seed, same counts; a smaller alpha can only lower the bound.
    np.testing.assert_array_equal(loose.counts_top, strict.counts_top)
    assert np.all(strict.p_lower <= loose.p_lower) and np.all(strict.radii <= loose.radii)
    assert strict.alpha == 0.001 and strict.sigma == digits_sigma


def test_predict_returns_frequencies_never_a_zero_row(trained_estimator, digits) -> None:
    frequencies = trained_estimator.predict(digits.x_test, batch_size=50)
    assert frequencies.shape == (len(digits.x_test), 10) and frequencies.dtype == np.float32
    np.testing.assert_allclose(frequencies.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(frequencies.max(axis=1) > 0)
    # Each entry is a count out of sample_size draws.
    counts = frequencies * trained_estimator.sample_size
    np.testing.assert_allclose(counts, np.round(counts), atol=1e-4)
    assert np.mean(frequencies.argmax(axis=1) == digits.y_test) > 0.9


def test_predict_labels_abstains_with_minus_one(trained_estimator, test_subset) -> None:
    x, y = test_subset
    labels = trained_estimator.predict_labels(x, n=200, alpha=0.001, seed=0)
    assert labels.dtype == np.int64 and labels.shape == (len(x),)
    assert set(np.unique(labels)) <= {ABSTAIN, *range(10)}
    answered = labels != ABSTAIN
    assert np.mean(labels[answered] == y[answered]) > 0.9


# -- one noise space ---------------------------------------------------------------------------------
class Standardise(torch.nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (z - 0.5) / 0.5


def test_preprocessing_does_not_change_the_noise_space(digits, make_mlp, make_estimator) -> None:
    # The same network two ways: ART preprocessing (mean 0.5, std 0.5) outside, or the same
    # standardisation inside the model with identity preprocessing. If noise were added after the
    # preprocessing anywhere (ART's fit does), that path would see sigma / 0.5 and the two would differ.
    init = make_mlp(seed=3)
    outside_model, inside_model = copy.deepcopy(init), torch.nn.Sequential(Standardise(), copy.deepcopy(init))
    outside = make_estimator(outside_model, preprocessing=(0.5, 0.5), seed=4)
    inside = make_estimator(inside_model, seed=4)
    x, y = digits.x_train[:256], digits.y_train[:256]
    for estimator in (outside, inside):
        estimator.fit(x, y, batch_size=64, nb_epochs=2)
    for a, b in zip(outside_model.parameters(), inside_model[1].parameters(), strict=True):
        torch.testing.assert_close(a, b)

    x_test = digits.x_test[:40]
    labels_a, radii_a = outside.certify(x_test, 200, seed=5)
    labels_b, radii_b = inside.certify(x_test, 200, seed=5)
    np.testing.assert_array_equal(labels_a, labels_b)
    np.testing.assert_array_equal(radii_a, radii_b)
    np.testing.assert_array_equal(outside.predict(x_test, seed=6), inside.predict(x_test, seed=6))
    np.testing.assert_array_equal(
        outside.predict_labels(x_test, 100, seed=7), inside.predict_labels(x_test, 100, seed=7)
    )
    outside.seed = inside.seed = 8  # restart both noise streams
    torch.testing.assert_close(
        torch.from_numpy(outside.loss_gradient(x_test, digits.y_test[:40])),
        torch.from_numpy(inside.loss_gradient(x_test, digits.y_test[:40])),
    )


class LinearLogits(torch.nn.Module):
    """Logits (0, v.z + c): class 1 where v.z + c > 0, a linear classifier of its (preprocessed) input."""

    def __init__(self, v: np.ndarray, c: float) -> None:
        super().__init__()
        self.v = torch.nn.Parameter(torch.from_numpy(v).float(), requires_grad=False)
        self.c = c

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        score = z.reshape(z.shape[0], -1) @ self.v + self.c
        return torch.stack([torch.zeros_like(score), score], dim=1)


def test_estimator_radii_are_sound_in_raw_units_under_preprocessing() -> None:
    # The model is linear in preprocessed units u = (x - m) / s, so linear in raw units with weight v / s
    # and offset c - v.1 m / s; the true raw radius is |v.u + c| / (|v| / s). Certified radii must be in
    # raw units: sound at the alpha rate, and radii in preprocessed units (x 1/s) must fail the check.
    dim, mean, std, sigma = 6, 0.5, 0.25, 0.3
    m, n, alpha = 300, 2000, 0.1
    rng = np.random.default_rng(0)
    v, c = rng.normal(size=dim), 0.2
    w_raw, b_raw = v / std, c - v.sum() * mean / std
    radii_true = sigma * rng.uniform(0.75, 2.5, size=m)
    signs = np.where(np.arange(m) % 2 == 0, 1.0, -1.0)
    z = rng.normal(size=(m, dim))
    on_plane = z - np.outer((z @ w_raw + b_raw) / (w_raw @ w_raw), w_raw)
    x = (on_plane + np.outer(signs * radii_true, w_raw / np.linalg.norm(w_raw))).astype(np.float32)
    estimator = RandomizedSmoothingClassifier(
        LinearLogits(v, c), None, (dim,), 2, preprocessing=(mean, std), device_type="cpu", scale=sigma, seed=1
    )
    labels, radii = estimator.certify(x, n, batch_size=n, alpha=alpha)
    true_labels = (x @ w_raw + b_raw > 0).astype(np.int64)
    true_radii = np.abs(x @ w_raw + b_raw) / np.linalg.norm(w_raw)

    def failures(certified_radii: np.ndarray) -> int:
        certified = labels != ABSTAIN
        return int(np.sum(certified & ((labels != true_labels) | (certified_radii > true_radii))))

    assert binomial_upper_tail(failures(radii), m, alpha) >= REJECT_BELOW
    assert binomial_upper_tail(failures(radii / std), m, alpha) < REJECT_BELOW
    assert np.median(radii / true_radii) > 0.85


# -- parameters -------------------------------------------------------------------------------------------
def test_set_params_get_params_round_trip(trained_estimator, make_mlp, make_estimator) -> None:
    changes = dict(
        scale=0.4, alpha=0.02, sample_size=8, n0=50, batch_size=123, seed=7, smoothed_gradients=False
    )
    trained_estimator.set_params(**changes)
    params = trained_estimator.get_params()
    for name, value in changes.items():
        assert params[name] == value, name
    assert trained_estimator.smoother.sigma == 0.4 and trained_estimator.smoother.batch_size == 123
    # The parameters of one estimator configure another identically.
    other = make_estimator(make_mlp(seed=1))
    other.set_params(**{k: v for k, v in params.items() if k not in ("model", "optimizer")})
    assert {k: other.get_params()[k] for k in changes} == changes


@pytest.mark.parametrize(
    ("name", "value"),
    [("scale", -0.1), ("scale", 0.0), ("alpha", 1.0), ("sample_size", 0), ("n0", 0), ("batch_size", 0)],
)
def test_set_params_refuses_bad_values(trained_estimator, name: str, value: float) -> None:
    before = trained_estimator.get_params()[name]
    with pytest.raises(ValueError, match=name):
        trained_estimator.set_params(**{name: value})
    assert trained_estimator.get_params()[name] == before
    assert trained_estimator.smoother.sigma == trained_estimator.scale


def test_clone_for_refitting_keeps_parameters_and_resets_weights(trained_estimator, digits) -> None:
    trained_estimator.set_params(scale=0.3, alpha=0.01, sample_size=8, n0=40, seed=3)
    clone = trained_estimator.clone_for_refitting()
    assert type(clone) is RandomizedSmoothingClassifier
    original, cloned = trained_estimator.get_params(), clone.get_params()
    for name in ("scale", "alpha", "sample_size", "n0", "seed", "batch_size", "input_shape", "nb_classes"):
        assert cloned[name] == original[name], name
    np.testing.assert_array_equal(cloned["clip_values"], original["clip_values"])
    assert clone.smoother.sigma == 0.3
    assert clone.model is not trained_estimator.model
    trained_weights = trained_estimator.model[1].weight
    assert not torch.equal(clone.model[1].weight, trained_weights)
    clone.fit(digits.x_train[:128], digits.y_train[:128], batch_size=64, nb_epochs=1)
    assert clone.predict(digits.x_test[:5]).shape == (5, 10)


# -- training, eval mode, gradients --------------------------------------------------------------------
def test_fit_trains_with_noise_and_takes_arts_arguments(digits, make_mlp, make_estimator) -> None:
    estimator = make_estimator(make_mlp(seed=5), seed=5)
    before = np.mean(estimator.predict(digits.x_test).argmax(1) == digits.y_test)
    one_hot = np.eye(10, dtype=np.float32)[digits.y_train]  # what ART's trainers pass
    estimator.fit(digits.x_train, one_hot, batch_size=64, nb_epochs=8, verbose=False, drop_last=True)
    after = np.mean(estimator.predict(digits.x_test).argmax(1) == digits.y_test)
    assert before < 0.3 < 0.85 < after
    assert not estimator.model.training
    no_optimizer = make_estimator(make_mlp(), optimizer=None)
    with pytest.raises(ValueError, match="optimizer"):
        no_optimizer.fit(digits.x_train[:10], digits.y_train[:10])


class TrainingModeRecorder(torch.nn.Module):
    """Dropout model that records whether it ran in training mode."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.5), torch.nn.Linear(64, 10))
        self.modes: list[bool] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return self.net(z)


def test_sampling_runs_the_model_in_eval_mode(digits, make_estimator) -> None:
    model = TrainingModeRecorder()
    estimator = make_estimator(model)
    x = digits.x_test[:4]
    for call in (
        lambda: estimator.certify(x, 50),
        lambda: estimator.predict_labels(x, 50),
        lambda: estimator.predict(x),
    ):
        model.train()
        model.modes.clear()
        call()
        assert model.modes and not any(model.modes)


def test_loss_gradient_numpy_and_torch(trained_estimator, test_subset) -> None:
    x, y = test_subset[0][:8], test_subset[1][:8]
    gradient = trained_estimator.loss_gradient(x, y)
    assert isinstance(gradient, np.ndarray) and gradient.shape == x.shape and gradient.dtype == np.float32
    x_t, y_t = torch.from_numpy(x), torch.from_numpy(y)
    gradient_t = trained_estimator.loss_gradient(x_t, y_t)
    assert isinstance(gradient_t, torch.Tensor) and gradient_t.shape == x_t.shape
    assert gradient_t.dtype == x_t.dtype and gradient_t.device == x_t.device
    # One-hot labels (ART's format) give the same gradient as indices with the same noise.
    trained_estimator.seed = 1
    from_indices = trained_estimator.loss_gradient(x, y)
    trained_estimator.seed = 1
    from_one_hot = trained_estimator.loss_gradient(x, np.eye(10, dtype=np.float32)[y])
    np.testing.assert_array_equal(from_indices, from_one_hot)


def test_loss_gradient_is_the_smoothed_soft_classifiers_by_default(trained_estimator, test_subset) -> None:
    x, y = test_subset[0][:8], test_subset[1][:8]
    trained_estimator.seed = 9
    smoothed = trained_estimator.loss_gradient(x, y)
    # The same objective built by hand from the module view, with the same noise stream.
    trained_estimator.seed = 9
    x_t = torch.from_numpy(x).requires_grad_(True)
    soft = trained_estimator.smoothed_module()
    torch.nn.functional.nll_loss(soft(x_t), torch.from_numpy(y)).backward()
    np.testing.assert_allclose(smoothed, x_t.grad.numpy(), rtol=1e-5, atol=1e-7)
    # sampling=False is the base model's gradient at the clean input.
    base = trained_estimator.loss_gradient(x, y, sampling=False)
    x_b = torch.from_numpy(x).requires_grad_(True)
    torch.nn.functional.cross_entropy(trained_estimator.model(x_b), torch.from_numpy(y)).backward()
    np.testing.assert_allclose(base, x_b.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(base, smoothed)


def test_module_views(trained_estimator, test_subset, digits_sigma) -> None:
    x = torch.from_numpy(test_subset[0][:6])
    base = trained_estimator.base_module()
    torch.testing.assert_close(base(x), trained_estimator.model(x))
    assert any(p is trained_estimator.model[1].weight for p in base.parameters())
    soft = trained_estimator.smoothed_module(num_samples=64, noise_seed=3)
    out = soft(x)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(6))
    torch.testing.assert_close(soft(x), out)  # fixed draws
    assert soft.num_samples == 64 and soft.sigma == digits_sigma


def test_estimator_abstains_at_the_boundary_and_seeds_reproduce() -> None:
    # Linear 2-class model, inputs on its hyperplane: pA = 1/2, so PREDICT and CERTIFY abstain except
    # with probability alpha; a seed reproduces a call and unseeded calls draw fresh noise.
    m, alpha = 200, 0.01
    v = np.array([1.0, -2.0, 0.5, 0.0])
    rng = np.random.default_rng(0)
    z = rng.normal(size=(m, 4))
    x = (z - np.outer(z @ v / (v @ v), v)).astype(np.float32)
    estimator = RandomizedSmoothingClassifier(
        LinearLogits(v, 0.0), None, (4,), 2, device_type="cpu", scale=0.5
    )
    labels = estimator.predict_labels(x, n=500, alpha=alpha)
    assert binomial_upper_tail(int(np.sum(labels != ABSTAIN)), m, alpha) >= REJECT_BELOW
    certified, radii = estimator.certify(x, 500, alpha=alpha)
    assert binomial_upper_tail(int(np.sum(certified != ABSTAIN)), m, alpha) >= REJECT_BELOW
    assert np.all(radii[certified == ABSTAIN] == 0.0)
    frequencies = estimator.predict(x)
    assert np.all(frequencies.sum(axis=1) > 0.999)
    first = estimator.certify_detailed(x, 100, seed=4)
    np.testing.assert_array_equal(first.counts_top, estimator.certify_detailed(x, 100, seed=4).counts_top)
    assert not np.array_equal(first.counts_top, estimator.certify_detailed(x, 100, seed=5).counts_top)
    assert not np.array_equal(estimator.certify_detailed(x, 100).counts_top, first.counts_top)
    # predict: ties of two classes are common at the boundary; the argmax check of Cohen's PREDICT says
    # P(answer) <= alpha, while predict's frequencies at pA = 1/2 must be near 1/2 (binomial 99.99% band).
    low, high = stats.binom.ppf([5e-5, 1 - 5e-5], estimator.sample_size, 0.5) / estimator.sample_size
    assert np.mean((frequencies[:, 1] >= low) & (frequencies[:, 1] <= high)) > 0.99


def test_pickling_keeps_the_model_in_memory_and_the_results(
    trained_estimator, test_subset, monkeypatch, tmp_path
):
    """ART's PyTorchClassifier pickles by writing the weights under ART_DATA_PATH and reading that path
    back (a file other machines do not have); ours travels whole inside the pickle, device included, and
    certifies exactly as the original with the same seed (how an estimator reaches Ray workers)."""
    import pickle

    from art import config

    monkeypatch.setattr(config, "ART_DATA_PATH", str(tmp_path))
    x, _ = test_subset
    copy_ = pickle.loads(pickle.dumps(trained_estimator))
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert copy_.model is not trained_estimator.model and copy_.device == trained_estimator.device
    for name, value in trained_estimator.model.state_dict().items():
        assert torch.equal(copy_.model.state_dict()[name], value)
    expected = trained_estimator.certify_detailed(x[:20], n=200, seed=3)
    again = copy_.certify_detailed(x[:20], n=200, seed=3)
    np.testing.assert_array_equal(again.counts_top, expected.counts_top)
    np.testing.assert_array_equal(again.radii, expected.radii)
    assert copy.deepcopy(trained_estimator).predict(x[:5]).shape == (5, 10)
