"""The training loop and the methods end to end on tiny models: what a seed fixes, Consistency at zero
weights being Gaussian augmentation, preprocessing after the noise, training that helps, bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from art_smoothing_plugin.training import (
    MACER,
    TRAINING_METHODS,
    Consistency,
    GaussianAugmentation,
    SmoothAdv,
    SmoothMix,
    as_training_method,
    make_training_method,
    train,
)

#: Cheap settings of each method for tiny runs (few steps and draws).
CHEAP = {
    "gaussian": GaussianAugmentation(),
    "smoothadv": SmoothAdv(epsilon=0.5, num_steps=2, num_noise_vec=2, warmup=2),
    "macer": MACER(gaussian_samples=4, lmbda=2.0),
    "consistency": Consistency(num_noise_vec=2, lmbda=5.0),
    "smoothmix": SmoothMix(num_noise_vec=2, num_steps=2, step_size=0.5, eta=1.0, mix_step=1, warmup=2),
}


def weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [tensor.detach().clone() for tensor in model.state_dict().values()]


def run(method, make_mlp, digits, seed: int = 0, epochs: int = 2, count: int = 256, **options):
    model = make_mlp(seed=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = train(
        method,
        model,
        digits.x_train[:count],
        digits.y_train[:count],
        sigma=0.25,
        optimizer=optimizer,
        nb_epochs=epochs,
        batch_size=64,
        clip_values=(0.0, 1.0),
        seed=seed,
        **{"progress": False, **options},
    )
    return model, history


@pytest.mark.parametrize("name", list(CHEAP))
def test_a_seed_fixes_the_run_and_no_global_random_state_is_used(name, make_mlp, digits) -> None:
    state = torch.get_rng_state()
    first, history = run(CHEAP[name], make_mlp, digits, seed=4)
    assert torch.equal(torch.get_rng_state(), state)  # the methods drew only from their own generators
    second, again = run(CHEAP[name], make_mlp, digits, seed=4)
    assert history == again and all(
        torch.equal(a, b) for a, b in zip(weights(first), weights(second), strict=True)
    )
    other, _ = run(CHEAP[name], make_mlp, digits, seed=5)
    assert not all(torch.equal(a, b) for a, b in zip(weights(first), weights(other), strict=True))
    assert not first.training  # left in eval mode


def test_consistency_with_zero_weights_and_one_draw_is_gaussian_augmentation(make_mlp, digits) -> None:
    gaussian, history = run(GaussianAugmentation(), make_mlp, digits, epochs=3)
    consistency, again = run(Consistency(num_noise_vec=1, lmbda=0.0, eta=0.0), make_mlp, digits, epochs=3)
    assert history == again
    assert all(torch.equal(a, b) for a, b in zip(weights(gaussian), weights(consistency), strict=True))
    # and a non-zero weight changes the result
    regularised, _ = run(Consistency(num_noise_vec=1, lmbda=0.0, eta=0.5), make_mlp, digits, epochs=3)
    assert not all(torch.equal(a, b) for a, b in zip(weights(gaussian), weights(regularised), strict=True))


class Standardised(torch.nn.Module):
    """``model((z - mean) / std)``: the standardisation inside the model."""

    def __init__(self, model: torch.nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, mean, std

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model((z - self.mean) / self.std)


@pytest.mark.parametrize("name", ["gaussian", "smoothadv", "smoothmix"])
def test_preprocessing_is_applied_after_the_noise(name, make_mlp, digits) -> None:
    # preprocess= must act exactly like the same standardisation inside the model: noise, adversaries and
    # clip_values all live in the raw units of x.
    inner = make_mlp(seed=1)
    train_options = dict(
        sigma=0.25, nb_epochs=2, batch_size=64, clip_values=(0.0, 1.0), seed=0, progress=False
    )
    x, y = digits.x_train[:256], digits.y_train[:256]
    train(
        CHEAP[name],
        inner,
        x,
        y,
        optimizer=torch.optim.Adam(inner.parameters(), lr=1e-2),
        preprocess=lambda z: (z - 0.3) / 0.4,
        **train_options,
    )
    wrapped = Standardised(make_mlp(seed=1), 0.3, 0.4)
    train(
        CHEAP[name], wrapped, x, y, optimizer=torch.optim.Adam(wrapped.parameters(), lr=1e-2), **train_options
    )
    for a, b in zip(weights(inner), weights(wrapped.model), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(CHEAP))
def test_each_method_trains_a_classifier_that_is_right_under_noise(name, make_mlp, digits) -> None:
    model, history = run(CHEAP[name], make_mlp, digits, epochs=6, count=len(digits.x_train))
    assert history[-1] < history[0]
    x = torch.as_tensor(digits.x_test)
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        noisy = x + 0.25 * torch.randn(x.shape, generator=generator)
        accuracy = float((model(noisy).argmax(1).numpy() == digits.y_test).mean())
    assert accuracy > 0.8  # an untrained MLP is at chance (0.1); Gaussian training reaches about 0.9


def test_every_part_of_a_batch_is_trained_on(make_mlp) -> None:
    method = SmoothAdv(num_noise_vec=3)
    x, y = torch.arange(7.0).reshape(7, 1), torch.arange(7)
    parts = method.split(x, y)
    assert [len(part) for part, _ in parts] == [3, 2, 2]
    assert torch.equal(torch.cat([part for part, _ in parts]), x)
    assert [len(part) for part, _ in method.split(x[:2], y[:2])] == [1, 1]  # fewer inputs than draws
    assert len(MACER().split(x, y)) == 1  # MACER keeps the batch whole, as its authors do


def test_a_bar_per_epoch(make_mlp, digits, capsys) -> None:
    run(CHEAP["macer"], make_mlp, digits, epochs=2, count=64, progress=True)
    err = capsys.readouterr().err
    assert "macer epoch 1/2" in err and "macer epoch 2/2" in err


def test_a_non_finite_loss_stops_the_run(make_mlp, digits) -> None:
    class Broken(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(64, 10)

        def forward(self, z):
            return self.linear(z.flatten(1)) * float("nan")

    model = Broken()
    with pytest.raises(FloatingPointError, match="epoch 1"):
        train(
            "gaussian",
            model,
            digits.x_train[:32],
            digits.y_train[:32],
            sigma=0.25,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            nb_epochs=1,
            progress=False,
        )


# -- bad input ---------------------------------------------------------------------------------------------
def test_unknown_method_names_list_the_choices() -> None:
    with pytest.raises(ValueError, match="gaussian, smoothadv, macer, consistency, smoothmix"):
        make_training_method("smoothadversarial")
    with pytest.raises(ValueError, match="'method' key"):
        as_training_method({"epsilon": 0.5})
    with pytest.raises(ValueError, match="unknown hyper-parameter.*lbd.*lmbda"):
        as_training_method({"method": "consistency", "lbd": 5.0})
    assert as_training_method({"method": "SmoothAdv", "epsilon": 0.5}) == SmoothAdv(epsilon=0.5)
    assert set(TRAINING_METHODS) == set(CHEAP)


@pytest.mark.parametrize(
    ("name", "params", "argument"),
    [
        ("smoothadv", {"epsilon": -0.1}, "epsilon"),
        ("smoothadv", {"num_noise_vec": 0}, "num_noise_vec"),
        ("smoothadv", {"num_steps": 0}, "num_steps"),
        ("smoothadv", {"warmup": 0}, "warmup"),
        ("macer", {"gaussian_samples": 0}, "gaussian_samples"),
        ("macer", {"lmbda": -1.0}, "lmbda"),
        ("macer", {"beta": 0.0}, "beta"),
        ("macer", {"gamma": -1.0}, "gamma"),
        ("consistency", {"num_noise_vec": 0}, "num_noise_vec"),
        ("consistency", {"lmbda": -0.5}, "lmbda"),
        ("consistency", {"eta": float("nan")}, "eta"),
        ("smoothmix", {"eta": -1.0}, "eta"),
        ("smoothmix", {"step_size": 0.0}, "step_size"),
        ("smoothmix", {"mix_step": 8, "num_steps": 8}, "mix_step"),
        ("smoothmix", {"maxnorm": -1.0}, "maxnorm"),
        ("smoothmix", {"maxnorm_s": -1.0}, "maxnorm_s"),
    ],
)
def test_out_of_range_hyper_parameters_are_refused_by_name(name, params, argument) -> None:
    with pytest.raises(ValueError, match=argument):
        make_training_method(name, **params)


@pytest.mark.parametrize("name", ["smoothadv", "smoothmix"])
def test_a_warmup_longer_than_training_is_refused(name, make_mlp, digits) -> None:
    with pytest.raises(ValueError, match="warmup=5.*nb_epochs=3"):
        run(make_training_method(name, warmup=5, num_steps=1), make_mlp, digits, epochs=3, count=8)


def test_training_data_is_checked_at_the_boundary(make_mlp, digits) -> None:
    with pytest.raises(ValueError, match="clip_values"):
        run(
            "gaussian",
            make_mlp,
            digits.__class__("d", digits.x_train * 2, digits.y_train, None, None),
            count=8,
        )
    with pytest.raises(ValueError, match="y must hold 8 class indices"):
        model = make_mlp()
        train(
            "gaussian",
            model,
            digits.x_train[:8],
            np.zeros(7, dtype=np.int64),
            sigma=0.25,
            optimizer=torch.optim.Adam(model.parameters()),
            progress=False,
        )
    with pytest.raises(ValueError, match="sigma"):
        model = make_mlp()
        train(
            "gaussian",
            model,
            digits.x_train[:8],
            digits.y_train[:8],
            sigma=-1.0,
            optimizer=torch.optim.Adam(model.parameters()),
            progress=False,
        )


def test_inputs_take_the_models_dtype(make_mlp, digits) -> None:
    model = make_mlp()
    history = train(
        "gaussian",
        model,
        torch.as_tensor(digits.x_train[:64], dtype=torch.float64),
        digits.y_train[:64].astype(np.float64),
        sigma=0.25,
        optimizer=torch.optim.Adam(model.parameters()),
        nb_epochs=1,
        progress=False,
    )
    assert len(history) == 1 and np.isfinite(history[0])
