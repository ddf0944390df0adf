"""SmoothAdvClassifier, MACERClassifier and SmoothMixClassifier as drop-ins for ART's PyTorchSmoothAdv,
PyTorchMACER and PyTorchSmoothMix: ART's constructor, our estimator otherwise, our training methods in fit."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from art.data_generators import NumpyDataGenerator
from art.estimators.certification.randomized_smoothing import (
    PyTorchMACER,
    PyTorchSmoothAdv,
    PyTorchSmoothMix,
)

from art_smoothing_plugin import (
    MACERClassifier,
    RandomizedSmoothingClassifier,
    SmoothAdvClassifier,
    SmoothMixClassifier,
)
from art_smoothing_plugin.training import (
    MACER,
    SmoothAdv,
    SmoothMix,
    TrainingContext,
    as_training_method,
    train,
    train_batches,
)

PAIRS = [
    (PyTorchSmoothAdv, SmoothAdvClassifier),
    (PyTorchMACER, MACERClassifier),
    (PyTorchSmoothMix, SmoothMixClassifier),
]
#: Cheap hyper-parameters per class (ART's names), for tiny runs.
CHEAP = {
    SmoothAdvClassifier: dict(epsilon=0.5, num_noise_vec=2, num_steps=2),
    MACERClassifier: dict(gaussian_samples=4, lmbda=2.0),
    SmoothMixClassifier: dict(num_noise_vec=2, num_steps=2, step_size=0.5),
}


def build(cls, model, **kwargs):
    options = dict(clip_values=(0.0, 1.0), device_type="cpu", scale=0.25, seed=0)
    options.update(kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return cls(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, optimizer, **options)


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in model.state_dict().values()]


def assert_trained_as_by_train(estimator, method, x, y, model: torch.nn.Module) -> None:
    """The estimator's model has the weights ``train(method, ...)`` gives a fresh copy of it, with the
    settings of ``build`` (sigma 0.25, Adam 1e-2, seed 0, batches of 64, two epochs)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train(
        method,
        model,
        x,
        y,
        sigma=0.25,
        optimizer=optimizer,
        nb_epochs=2,
        batch_size=64,
        clip_values=(0.0, 1.0),
        seed=0,
        progress=False,
    )
    for a, b in zip(weights(estimator.model), weights(model), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("art_class", "ours"), PAIRS)
def test_constructor_takes_arts_arguments_in_arts_order_with_arts_defaults(art_class, ours) -> None:
    art_parameters = inspect.signature(art_class.__init__).parameters
    our_parameters = inspect.signature(ours.__init__).parameters
    art_names = list(art_parameters)[1:]
    assert list(our_parameters)[1 : len(art_names) + 1] == art_names
    for name in art_names:
        if art_parameters[name].default is not inspect.Parameter.empty:
            assert our_parameters[name].default == art_parameters[name].default, name
    assert issubclass(ours, RandomizedSmoothingClassifier)


def test_smoothmix_step_size_is_its_own_keyword() -> None:
    parameter = inspect.signature(SmoothMixClassifier.__init__).parameters["step_size"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default == 1.0


@pytest.mark.parametrize(("art_class", "ours"), PAIRS)
def test_the_same_positional_arguments_build_arts_class_and_ours(art_class, ours, make_mlp) -> None:
    model = make_mlp()
    hyper = {
        SmoothAdvClassifier: [0.5, 2, 3, 2],
        MACERClassifier: [8.0, 4.0, 6.0, 8],
        SmoothMixClassifier: [2.0, 2, 4, 2, 1, 0.3, 2.0],
    }[ours]
    arguments = [
        model,
        torch.nn.CrossEntropyLoss(),
        (1, 8, 8),
        10,
        torch.optim.SGD(model.parameters(), lr=0.1),
    ]
    arguments += [True, (0.0, 1.0), None, None, (0.0, 1.0), "cpu", 16, 0.3, 0.01, *hyper]
    art_estimator, estimator = art_class(*arguments), ours(*arguments)
    for name in ("input_shape", "nb_classes", "sample_size", "scale", "alpha"):
        assert getattr(estimator, name) == getattr(art_estimator, name), name
    names = list(inspect.signature(art_class.__init__).parameters)[-len(hyper) :]
    for name, value in zip(names, hyper, strict=True):
        assert getattr(estimator, name) == value == getattr(art_estimator, name), name


@pytest.mark.parametrize("ours", [SmoothAdvClassifier, MACERClassifier, SmoothMixClassifier])
def test_get_params_and_clone_for_refitting_round_trip(ours, make_mlp, digits) -> None:
    estimator = build(ours, make_mlp(), **CHEAP[ours])
    estimator.set_params(scale=0.3, seed=3)
    params = estimator.get_params()
    clone = estimator.clone_for_refitting()
    assert type(clone) is ours
    cloned = clone.get_params()
    for name in params:
        if name not in ("model", "optimizer", "clip_values", "preprocessing", "loss"):
            assert cloned[name] == params[name], name
    assert clone.training == estimator.training
    assert clone.model is not estimator.model
    clone.fit(digits.x_train[:64], digits.y_train[:64], batch_size=32, nb_epochs=1)


def test_arts_macer_cannot_report_its_parameters_ours_can(make_mlp) -> None:
    model = make_mlp()
    art_estimator = PyTorchMACER(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu")
    with pytest.raises(AttributeError, match="gauss_num"):
        art_estimator.get_params()
    assert build(MACERClassifier, make_mlp()).get_params()["gaussian_samples"] == 16


@pytest.mark.parametrize(
    ("ours", "name", "value"),
    [
        (SmoothAdvClassifier, "epsilon", -1.0),
        (SmoothAdvClassifier, "num_noise_vec", 0),
        (MACERClassifier, "lmbda", -1.0),
        (MACERClassifier, "gaussian_samples", 0),
        (SmoothMixClassifier, "step_size", 0.0),
        (SmoothMixClassifier, "mix_step", 10),
        (SmoothMixClassifier, "eta", -0.5),
    ],
)
def test_bad_hyper_parameters_are_refused_in_the_constructor_and_set_params(
    ours, name, value, make_mlp
) -> None:
    with pytest.raises(ValueError, match=name):
        build(ours, make_mlp(), **{name: value})
    estimator = build(ours, make_mlp())
    before = estimator.get_params()[name]
    with pytest.raises(ValueError, match=name):
        estimator.set_params(**{name: value})
    assert estimator.get_params()[name] == before


@pytest.mark.parametrize(
    ("ours", "method"),
    [
        (SmoothAdvClassifier, SmoothAdv(epsilon=0.5, num_noise_vec=2, num_steps=2, warmup=1)),
        (MACERClassifier, MACER(gaussian_samples=4, lmbda=2.0)),
        (SmoothMixClassifier, SmoothMix(num_noise_vec=2, num_steps=2, step_size=0.5, eta=1.0, warmup=1)),
    ],
)
def test_fit_trains_with_the_method_of_the_same_hyper_parameters(ours, method, make_mlp, digits) -> None:
    x, y = digits.x_train[:256], digits.y_train[:256]
    estimator = build(ours, make_mlp(seed=2), **CHEAP[ours])
    assert estimator.training == method
    estimator.fit(x, np.eye(10, dtype=np.float32)[y], batch_size=64, nb_epochs=2)  # ART passes one-hot labels
    assert_trained_as_by_train(estimator, method, x, y, make_mlp(seed=2))


def test_smoothmix_alpha_is_not_the_pgd_step(make_mlp, digits) -> None:
    x, y = digits.x_train[:128], digits.y_train[:128]
    runs = {}
    for key, options in {
        "a": dict(alpha=0.001),
        "b": dict(alpha=0.05),
        "c": dict(alpha=0.001, step_size=0.1),
    }.items():
        estimator = build(SmoothMixClassifier, make_mlp(seed=2), num_noise_vec=2, num_steps=2, **options)
        estimator.fit(x, y, batch_size=64, nb_epochs=1)
        runs[key] = weights(estimator.model)
    assert all(torch.equal(a, b) for a, b in zip(runs["a"], runs["b"], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(runs["a"], runs["c"], strict=True))


def test_fit_generator_adds_noise_and_warms_up_like_fit(make_mlp, digits) -> None:
    x, y = digits.x_train[:128], digits.y_train[:128]
    estimator = build(
        SmoothAdvClassifier, make_mlp(seed=2), epsilon=0.5, num_noise_vec=2, num_steps=2, warmup=2
    )
    estimator.fit_generator(NumpyDataGenerator(x, y, batch_size=64, shuffle=False), nb_epochs=2)
    assert not estimator.model.training
    with pytest.raises(ValueError, match="warmup=2"):
        estimator.fit_generator(NumpyDataGenerator(x, y, batch_size=64), nb_epochs=1)
    # same batches, same noise: the generator path trains as fit does on those batches
    reference = build(
        SmoothAdvClassifier, make_mlp(seed=2), epsilon=0.5, num_noise_vec=2, num_steps=2, warmup=2
    )
    model = reference.model
    method = reference.training
    context = TrainingContext(
        model, 0.25, reference.smoother.generator(torch.device("cpu")), clip_values=(0.0, 1.0)
    )

    def batches(epoch):
        for start in (0, 64):
            yield torch.as_tensor(x[start : start + 64]), torch.as_tensor(y[start : start + 64])

    train_batches(method, context, reference.optimizer, batches, nb_epochs=2, progress=False)
    for a, b in zip(weights(estimator.model), weights(model), strict=True):
        torch.testing.assert_close(a, b)


def test_macer_trains_inputs_of_any_rank(make_mlp, digits) -> None:
    # ART's PyTorchMACER tiles samples assuming 4-D inputs. Here flat (64,) inputs train exactly as the
    # same digits as (1, 8, 8) images do: the same draws, grouped per input whatever the rank.
    flat_model = make_mlp(seed=2, flat=True)
    flat = MACERClassifier(
        flat_model,
        torch.nn.CrossEntropyLoss(),
        (64,),
        10,
        torch.optim.Adam(flat_model.parameters(), lr=1e-2),
        clip_values=(0.0, 1.0),
        device_type="cpu",
        scale=0.25,
        gaussian_samples=4,
        seed=0,
    )
    flat.fit(digits.x_train.reshape(-1, 64)[:256], digits.y_train[:256], batch_size=64, nb_epochs=2)
    images = build(MACERClassifier, make_mlp(seed=2), gaussian_samples=4)
    images.fit(digits.x_train[:256], digits.y_train[:256], batch_size=64, nb_epochs=2)
    for a, b in zip(weights(flat.model), weights(images.model), strict=True):
        torch.testing.assert_close(a, b)


def test_smoothadv_with_several_noise_draws_trains(make_mlp, digits) -> None:
    # ART 1.20's PyTorchSmoothAdv fails for num_noise_vec > 1 (a batch-size mismatch).
    estimator = build(SmoothAdvClassifier, make_mlp(seed=2), epsilon=0.5, num_noise_vec=4, num_steps=2)
    estimator.fit(digits.x_train, digits.y_train, batch_size=64, nb_epochs=3)
    assert np.mean(estimator.predict(digits.x_test).argmax(1) == digits.y_test) > 0.8


# -- what ART's own tests of these classes check ------------------------------------------------------------
@pytest.mark.parametrize("ours", [SmoothAdvClassifier, MACERClassifier, SmoothMixClassifier])
def test_predict_and_certify_as_arts_tests_expect(ours, make_mlp, digits) -> None:
    model = make_mlp(seed=2)
    estimator = build(ours, model, scale=0.01, sample_size=100, **CHEAP[ours])
    estimator.fit(digits.x_train, digits.y_train, batch_size=64, nb_epochs=3)
    x = digits.x_test[:50]
    predictions = estimator.predict(x)
    assert predictions.shape == (50, 10)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-6)
    with torch.no_grad():
        base = model(torch.as_tensor(x)).argmax(1).numpy()
    # at sigma = 0.01 the smoothed classifier is the base model but where a point sits within noise of a
    # decision boundary
    assert np.mean(predictions.argmax(1) == base) >= 0.95
    labels, radii = estimator.certify(x, n=250)
    assert labels.shape == radii.shape == (50,)
    assert ((labels >= -1) & (labels < 10)).all()
    assert (radii < 1).all() and (radii[labels >= 0] > 0).all()


# -- any method through RandomizedSmoothingClassifier(training=...) -----------------------------------------
@pytest.mark.parametrize(
    "training",
    [
        "consistency",
        {"method": "smoothadv", "epsilon": 0.5, "num_steps": 2, "num_noise_vec": 2, "warmup": 2},
        MACER(gaussian_samples=4, lmbda=2.0),
    ],
)
def test_fit_and_fit_generator_train_with_the_estimators_method(training, make_mlp, digits) -> None:
    x, y = digits.x_train[:128], digits.y_train[:128]
    method = as_training_method(training)
    estimator = build(RandomizedSmoothingClassifier, make_mlp(seed=2), training=training)
    assert estimator.training == method and estimator.get_params()["training"] == method
    estimator.fit(x, y, batch_size=64, nb_epochs=2)
    assert_trained_as_by_train(estimator, method, x, y, make_mlp(seed=2))
    # fit_generator on the same batches in the same order trains the same weights
    by_generator = build(RandomizedSmoothingClassifier, make_mlp(seed=2), training=training)

    class Replay(NumpyDataGenerator):
        """Yields the batches ``fit`` drew: each epoch's order from the shuffling generator (seed + 1)."""

        def __init__(self) -> None:
            super().__init__(x, y, batch_size=64)
            shuffle = torch.Generator().manual_seed(1)
            orders = [torch.randperm(128, generator=shuffle).numpy() for _ in range(2)]
            self.batches = [order[start : start + 64] for order in orders for start in (0, 64)]

        def get_batch(self):
            index = self.batches.pop(0)
            return x[index], y[index]

    by_generator.fit_generator(Replay(), nb_epochs=2)
    for a, b in zip(weights(by_generator.model), weights(estimator.model), strict=True):
        torch.testing.assert_close(a, b)


def test_training_round_trips_and_is_validated(make_mlp) -> None:
    estimator = build(RandomizedSmoothingClassifier, make_mlp())
    assert estimator.training == as_training_method("gaussian")
    estimator.set_params(training={"method": "smoothmix", "num_steps": 2, "warmup": 1})
    clone = estimator.clone_for_refitting()
    assert clone.training == SmoothMix(num_steps=2, warmup=1)
    with pytest.raises(ValueError, match="unknown training method 'madry'; choose one of gaussian"):
        estimator.set_params(training="madry")
    with pytest.raises(ValueError, match="unknown training method"):
        build(RandomizedSmoothingClassifier, make_mlp(), training="madry")
    assert estimator.training == SmoothMix(num_steps=2, warmup=1)
    with pytest.raises(ValueError, match="warmup=10 epochs is longer than the training"):
        build(RandomizedSmoothingClassifier, make_mlp(), training="smoothadv").fit(
            np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.int64), nb_epochs=2
        )
    # a drop-in keeps its own method
    dropin = build(SmoothAdvClassifier, make_mlp())
    with pytest.raises(ValueError, match="SmoothAdvClassifier trains with SmoothAdv"):
        dropin.set_params(training="gaussian")


class _ChannelsLast(torch.nn.Module):
    """A channels-first network taking channels-last batches."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.inner(z.permute(0, 3, 1, 2))


@pytest.mark.parametrize("training", ["smoothadv", "smoothmix"])
def test_channels_last_training_with_adversaries_gives_the_channels_first_weights(training) -> None:
    # Per-feature clip_values bound the adversarial points in each run's own layout.
    x_first = np.random.default_rng(1).random((32, 3, 4, 4), dtype=np.float32)
    y = np.arange(32) % 3
    low = np.zeros((3, 4, 4), np.float32)
    high = np.full((3, 4, 4), 1.0, np.float32)
    high[0] = 0.99  # one channel bounded lower, so the layout of the bounds matters
    x_first = np.minimum(x_first, high)
    method = {"method": training, "num_steps": 2, "warmup": 1, "num_noise_vec": 2}
    weights_of_runs = []
    for channels_first in (True, False):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            model = torch.nn.Sequential(
                torch.nn.Conv2d(3, 4, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Flatten(),
                torch.nn.Linear(64, 3),
            )
        layout = (lambda a: a) if channels_first else (lambda a: np.moveaxis(a, 0, -1))
        estimator = RandomizedSmoothingClassifier(
            model if channels_first else _ChannelsLast(model),
            torch.nn.CrossEntropyLoss(),
            (3, 4, 4) if channels_first else (4, 4, 3),
            3,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            channels_first=channels_first,
            clip_values=(layout(low), layout(high)),
            device_type="cpu",
            scale=0.25,
            seed=7,
            training=method,
        )
        estimator.fit(
            x_first if channels_first else x_first.transpose(0, 2, 3, 1), y, batch_size=8, nb_epochs=2
        )
        weights_of_runs.append(weights(model))
    for a, b in zip(*weights_of_runs, strict=True):
        torch.testing.assert_close(a, b)
