"""Bad input is refused at the boundary with a ValueError that names the argument, before any noise is
drawn or any forward pass runs: nothing is certified from bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_smoothing_plugin import RandomizedSmoothingClassifier, Smoother


class CountingModel(torch.nn.Module):
    """A digits-shaped linear model that counts its forward passes (and can return the wrong width)."""

    def __init__(self, outputs: int = 10) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, outputs))
        self.calls = 0

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(z)


def make(model: torch.nn.Module | None = None, **overrides) -> RandomizedSmoothingClassifier:
    model = model if model is not None else CountingModel()
    options = dict(
        input_shape=(1, 8, 8),
        nb_classes=10,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        clip_values=(0.0, 1.0),
        device_type="cpu",
        scale=0.25,
        seed=0,
    )
    options.update(overrides)
    return RandomizedSmoothingClassifier(model, **options)


GOOD_X = np.full((3, 1, 8, 8), 0.5, dtype=np.float32)
GOOD_Y = np.array([0, 1, 2])


# -- constructor ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("scale", 0.0),
        ("scale", -0.25),
        ("scale", float("nan")),
        ("scale", float("inf")),
        ("scale", "big"),
        ("alpha", 0.0),
        ("alpha", 1.0),
        ("alpha", -0.1),
        ("alpha", 1.5),
        ("sample_size", 0),
        ("sample_size", 2.5),
        ("n0", 0),
        ("n0", -5),
        ("batch_size", 0),
        ("nb_classes", 1),
        ("input_shape", (1, 0, 8)),
        ("input_shape", "1x8x8"),
    ],
)
def test_constructor_refuses_bad_arguments(name: str, value) -> None:
    with pytest.raises(ValueError, match=name):
        make(**{name: value})


def test_constructor_requires_a_torch_module_input_shape_and_nb_classes() -> None:
    with pytest.raises(ValueError, match="model"):
        RandomizedSmoothingClassifier(lambda z: z, input_shape=(1, 8, 8), nb_classes=10)
    with pytest.raises(ValueError, match="input_shape"):
        RandomizedSmoothingClassifier(CountingModel(), nb_classes=10)
    with pytest.raises(ValueError, match="nb_classes"):
        RandomizedSmoothingClassifier(CountingModel(), input_shape=(1, 8, 8))


# -- call arguments: refused before any forward pass --------------------------------------------------------
BAD_CALLS = [
    ("n", lambda e: e.certify(GOOD_X, n=0)),
    ("n", lambda e: e.certify(GOOD_X, n=10.5)),
    ("n0", lambda e: e.certify(GOOD_X, n=100, n0=0)),
    ("alpha", lambda e: e.certify(GOOD_X, n=100, alpha=0.0)),
    ("alpha", lambda e: e.certify(GOOD_X, n=100, alpha=1.0)),
    ("batch_size", lambda e: e.certify(GOOD_X, n=100, batch_size=0)),
    ("n", lambda e: e.predict_labels(GOOD_X, n=0)),
    ("alpha", lambda e: e.predict_labels(GOOD_X, n=10, alpha=2.0)),
    ("batch_size", lambda e: e.predict_labels(GOOD_X, n=10, batch_size=0)),
    ("batch_size", lambda e: e.predict(GOOD_X, batch_size=0)),
    ("batch_size", lambda e: e.fit(GOOD_X, GOOD_Y, batch_size=0)),
    ("nb_epochs", lambda e: e.fit(GOOD_X, GOOD_Y, nb_epochs=-1)),
    ("num_samples", lambda e: e.smoothed_module(num_samples=0)),
]


@pytest.mark.parametrize(("name", "call"), BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(BAD_CALLS)])
def test_bad_call_arguments_are_refused_before_sampling(name: str, call) -> None:
    model = CountingModel()
    estimator = make(model)
    with pytest.raises(ValueError, match=name):
        call(estimator)
    assert model.calls == 0


def bad_batches() -> list[tuple[str, np.ndarray, str]]:
    nan = GOOD_X.copy()
    nan[1, 0, 3, 3] = np.nan
    inf = GOOD_X.copy()
    inf[0, 0, 0, 0] = np.inf
    above = GOOD_X.copy()
    above[2, 0, 7, 7] = 1.5
    below = GOOD_X.copy()
    below[0, 0, 1, 1] = -0.2
    pixels = GOOD_X * 255.0  # data in other units: beyond even the attack-facing methods' slack
    return [
        ("wrong image size", np.zeros((3, 1, 8, 7), np.float32), "shape"),
        ("no batch axis", np.zeros((1, 8, 8), np.float32), "shape"),
        ("channels last", np.zeros((3, 8, 8, 1), np.float32), "shape"),
        ("nan", nan, "NaN"),
        ("inf", inf, "infinite"),
        ("above clip_values", above, "clip_values"),
        ("below clip_values", below, "clip_values"),
        ("0-255 pixels", pixels, "clip_values"),
        ("strings", np.full((3, 1, 8, 8), "a"), "numeric"),
    ]


METHODS = {
    "certify": lambda e, x: e.certify(x, n=100),
    "certify_detailed": lambda e, x: e.certify_detailed(x, n=100),
    "predict": lambda e, x: e.predict(x),
    "predict_labels": lambda e, x: e.predict_labels(x, n=100),
    "loss_gradient": lambda e, x: e.loss_gradient(x, GOOD_Y[: len(x)] if len(x) <= 3 else GOOD_Y),
    "fit": lambda e, x: e.fit(x, GOOD_Y, nb_epochs=1),
}


#: The methods ART's attacks call on intermediate points: they accept inputs up to ATTACK_SLACK widths of
#: the clip range outside it (attacks clip only what they return); certification and training do not.
ATTACK_FACING = ("predict", "loss_gradient")
SLIGHTLY_OUTSIDE = ("above clip_values", "below clip_values")
BAD_X_CASES = [
    (method, case, x, message)
    for method in METHODS
    for case, x, message in bad_batches()
    if not (method in ATTACK_FACING and case in SLIGHTLY_OUTSIDE)
]


@pytest.mark.parametrize(
    ("method", "case", "x", "message"), BAD_X_CASES, ids=[f"{c}-{m}" for m, c, _, _ in BAD_X_CASES]
)
def test_bad_x_is_refused_with_a_message_naming_x(
    method: str, case: str, x: np.ndarray, message: str
) -> None:
    model = CountingModel()
    estimator = make(model)
    with pytest.raises(ValueError, match=message) as error:
        METHODS[method](estimator, x)
    assert str(error.value).startswith("x ")
    assert model.calls == 0


def test_attack_facing_methods_accept_points_a_little_outside_the_box() -> None:
    estimator = make(CountingModel())
    x = GOOD_X.copy()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -0.2, 1.5  # a finite difference or an unclipped iterate
    assert estimator.predict(x).shape == (3, 10)
    assert estimator.loss_gradient(x, GOOD_Y[:3]).shape == x.shape
    assert estimator.class_gradient(x, label=0).shape == (3, 1, 1, 8, 8)
    assert estimator.compute_loss(x, GOOD_Y[:3]).shape == (3,)
    for strict in (lambda: estimator.certify(x, n=10), lambda: estimator.predict_labels(x, n=10)):
        with pytest.raises(ValueError, match="clip_values"):
            strict()
    x[2, 0, 0, 0] = 4.5  # more than three widths of (0, 1) above it
    with pytest.raises(ValueError, match="by more than 3 times its width"):
        estimator.predict(x)


def test_bad_torch_tensors_are_refused_too() -> None:
    model = CountingModel()
    estimator = make(model)
    nan = torch.full((2, 1, 8, 8), 0.5)
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        estimator.certify(nan, n=10)
    with pytest.raises(ValueError, match="clip_values"):
        estimator.loss_gradient(torch.full((2, 1, 8, 8), 10.0), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="shape"):
        estimator.predict_labels(torch.zeros(2, 64), n=10)
    assert model.calls == 0


def test_values_outside_clip_values_are_fine_without_clip_values() -> None:
    estimator = make(clip_values=None)
    labels, _ = estimator.certify(np.full((2, 1, 8, 8), 3.0, dtype=np.float32), n=20)
    assert labels.shape == (2,)


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.certify(GOOD_X, n=100),
        lambda e: e.predict_labels(GOOD_X, n=100),
        lambda e: e.predict(GOOD_X),
        lambda e: e.loss_gradient(GOOD_X, GOOD_Y),
        lambda e: e.loss_gradient(GOOD_X, GOOD_Y, sampling=False),
        lambda e: e.fit(GOOD_X, GOOD_Y, nb_epochs=1),
        lambda e: e.smoothed_module()(torch.from_numpy(GOOD_X)),
        lambda e: e.base_module()(torch.from_numpy(GOOD_X)),
    ],
)
def test_a_model_with_the_wrong_number_of_outputs_is_refused(call) -> None:
    estimator = make(CountingModel(outputs=9))  # nb_classes is 10
    with pytest.raises(ValueError, match="nb_classes"):
        call(estimator)


@pytest.mark.parametrize(
    ("y", "message"),
    [(np.array([0, 1]), "y must"), (np.array([0, 1, 10]), "y must"), (np.zeros((3, 9)), "one-hot")],
)
def test_bad_labels_are_refused(y: np.ndarray, message: str) -> None:
    model = CountingModel()
    estimator = make(model)
    with pytest.raises(ValueError, match=message):
        estimator.loss_gradient(GOOD_X, y)
    assert model.calls == 0


# -- the framework-level core --------------------------------------------------------------------------------
def constant_labels(z: torch.Tensor) -> torch.Tensor:
    return torch.zeros(z.shape[0], dtype=torch.int64)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("sigma", {"sigma": 0.0}),
        ("sigma", {"sigma": -1.0}),
        ("num_classes", {"num_classes": 1}),
        ("batch_size", {"batch_size": 0}),
        ("base_classifier", {"base_classifier": "not callable"}),
    ],
)
def test_smoother_constructor_refuses_bad_arguments(name: str, kwargs: dict) -> None:
    arguments = {"base_classifier": constant_labels, "num_classes": 2, "sigma": 0.5, **kwargs}
    with pytest.raises(ValueError, match=name):
        Smoother(**arguments)


@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("n0", lambda s, x: s.certify(x, 0, 100, 0.01)),
        ("n", lambda s, x: s.certify(x, 10, 0, 0.01)),
        ("alpha", lambda s, x: s.certify(x, 10, 100, 1.5)),
        ("n", lambda s, x: s.predict(x, 0, 0.01)),
        ("alpha", lambda s, x: s.predict(x, 10, 0.0)),
        ("num_samples", lambda s, x: s.vote_counts(x, 0)),
        ("batch_size", lambda s, x: s.vote_counts(x, 10, batch_size=0)),
        ("x", lambda s, x: s.certify(x.numpy(), 10, 100, 0.01)),
    ],
)
def test_smoother_refuses_bad_call_arguments_before_sampling(name: str, call) -> None:
    calls: list[int] = []

    def spy(z: torch.Tensor) -> torch.Tensor:
        calls.append(len(z))
        return constant_labels(z)

    with pytest.raises(ValueError, match=name):
        call(Smoother(spy, 2, 0.5), torch.zeros(2, 3))
    assert calls == []
