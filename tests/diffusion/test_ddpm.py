"""The small DDPM: schedules, the UNet's shapes, training, the on-disk cache and range checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from art_smoothing_plugin.denoisers import ddpm
from art_smoothing_plugin.denoisers.ddpm import (
    TinyUNet,
    TrainedDDPM,
    cosine_alpha_bars,
    linear_alpha_bars,
    make_alpha_bars,
    train_ddpm,
)
from art_smoothing_plugin.sampling import make_generator


def test_linear_schedule_values() -> None:
    alpha_bars = linear_alpha_bars(1000)
    assert alpha_bars.dtype == torch.float64 and alpha_bars.shape == (1000,)
    assert float(alpha_bars[0]) == pytest.approx(1 - 1e-4)
    assert float(alpha_bars[1]) == pytest.approx((1 - 1e-4) * (1 - 1e-4 - (0.02 - 1e-4) / 999))
    assert float(alpha_bars[-1]) == pytest.approx(4.0358e-5, rel=1e-3)  # DDPM's abar_T
    assert bool((alpha_bars[1:] < alpha_bars[:-1]).all())


def test_cosine_schedule_values() -> None:
    alpha_bars = cosine_alpha_bars(1000)
    f = [math.cos((u / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2 for u in range(1001)]
    for t in (0, 10, 500, 900):  # no beta is capped before the very end
        assert float(alpha_bars[t]) == pytest.approx(f[t + 1] / f[0], rel=1e-9)
    assert bool((alpha_bars[1:] < alpha_bars[:-1]).all()) and float(alpha_bars[-1]) > 0
    with pytest.raises(ValueError, match="schedule must be one of linear, cosine"):
        make_alpha_bars("quadratic")


@pytest.mark.parametrize(
    ("shape", "multipliers"), [((1, 8, 8), (1, 2)), ((1, 28, 28), (1, 2, 2)), ((3, 7, 9), (1, 2))]
)
def test_unet_output_is_shaped_like_its_input(shape, multipliers) -> None:
    model = TinyUNet(shape[0], 8, multipliers)
    x = torch.randn(3, *shape)
    output = model(x, torch.tensor([0, 10, 999]))
    assert output.shape == x.shape
    assert float(output.detach().abs().max()) == 0.0  # the output convolution starts at zero
    torch.nn.init.normal_(model.output_conv.weight)
    a, b = model(x, torch.tensor([5, 5, 5])), model(x, torch.tensor([500, 500, 500]))
    assert not torch.allclose(a, b)  # the timestep changes the prediction


def small_data(count: int = 64) -> np.ndarray:
    return torch.rand(count, 1, 8, 8, generator=make_generator(0)).numpy()


def test_training_is_cached_on_disk(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = small_data()
    arguments = dict(base_channels=8, epochs=2, batch_size=32, cache_dir=tmp_path, progress=False)
    first = train_ddpm(data, **arguments)
    files = list(tmp_path.glob("ddpm-*.pt"))
    assert len(files) == 1 and len(first.history) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model must not be trained again")

    monkeypatch.setattr(ddpm, "_fit", no_training)
    second = train_ddpm(data, **arguments)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert second.config == first.config and second.history == pytest.approx(first.history)
    # Other data or other arguments are another model.
    with pytest.raises(AssertionError, match="must not be trained again"):
        train_ddpm(data[:32], **arguments)
    with pytest.raises(AssertionError, match="must not be trained again"):
        train_ddpm(data, **(arguments | {"epochs": 3}))


def test_training_is_seeded_and_lowers_the_loss(tmp_path) -> None:
    data = small_data(128)
    arguments = dict(base_channels=8, epochs=6, batch_size=32, cache_dir=False, progress=False, seed=3)
    a, b = train_ddpm(data, **arguments), train_ddpm(data, **arguments)
    for (name, wa), (_, wb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(wa, wb), name
    # Better than the trivial epsilon predictor (zero), whose expected loss is E[eps^2] = 1, and improving.
    assert a.history[-1] < min(1.0, a.history[0])
    saved = a.save(tmp_path / "model.pt")
    loaded = TrainedDDPM.load(saved)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(loaded.denoiser(0.25)(x), a.denoiser(0.25)(x))


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
def test_other_prediction_types_train_and_denoise(prediction_type: str) -> None:
    trained = train_ddpm(
        small_data(),
        base_channels=8,
        epochs=1,
        cache_dir=False,
        progress=False,
        prediction_type=prediction_type,
    )
    denoiser = trained.denoiser(0.5)
    assert denoiser.prediction_type == prediction_type
    with torch.no_grad():
        output = denoiser(torch.rand(3, 1, 8, 8))
    assert output.shape == (3, 1, 8, 8) and 0 <= float(output.min()) and float(output.max()) <= 1


def test_trained_model_refuses_other_clip_values_and_untrained_timesteps() -> None:
    trained = train_ddpm(
        small_data(), base_channels=8, epochs=1, max_train_timestep=150, cache_dir=False, progress=False
    )
    assert trained.denoiser(0.25, clip_values=(0.0, 1.0)).timestep == 144
    with pytest.raises(ValueError, match=r"clip_values=\(0, 255\) does not match the data range"):
        trained.denoiser(0.25, clip_values=(0, 255))
    with pytest.raises(ValueError, match="needs timestep 258, beyond the largest this DDPM was trained on"):
        trained.denoiser(0.5)
    with pytest.raises(ValueError, match="sigma is out of reach"):
        trained.denoiser(100.0)


def test_training_refuses_bad_data() -> None:
    with pytest.raises(ValueError, match="does not match clip_values"):
        train_ddpm(small_data() * 255, cache_dir=False, progress=False)
    with pytest.raises(ValueError, match=r"x_train must be images of shape \(N, C, H, W\)"):
        train_ddpm(np.zeros((4, 8, 8), np.float32), cache_dir=False, progress=False)
    with pytest.raises(ValueError, match="prediction_type"):
        train_ddpm(small_data(), prediction_type="score", cache_dir=False, progress=False)
    with pytest.raises(ValueError, match="schedule"):
        train_ddpm(small_data(), schedule="sigmoid", cache_dir=False, progress=False)


def test_cache_dir_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("ART_SMOOTHING_CACHE", str(tmp_path))
    assert ddpm.default_cache_dir() == tmp_path / "ddpm"
