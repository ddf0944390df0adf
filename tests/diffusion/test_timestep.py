"""The timestep t* against hand computation, and the statistics of what the model sees at t*."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from art_smoothing_plugin.denoisers.ddpm import cosine_alpha_bars, linear_alpha_bars
from art_smoothing_plugin.denoisers.diffusion import DiffusionDenoiser, noise_levels, select_timestep
from art_smoothing_plugin.sampling import gaussian_copies, make_generator

SIGMAS = (0.12, 0.25, 0.5, 1.0)


def hand_linear_levels(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> list[float]:
    """sqrt((1 - abar_t) / abar_t) with plain floats, one factor at a time."""
    levels, alpha_bar = [], 1.0
    for step in range(num_timesteps):
        beta = beta_start + (beta_end - beta_start) * step / (num_timesteps - 1)
        alpha_bar *= 1.0 - beta
        levels.append(math.sqrt((1.0 - alpha_bar) / alpha_bar))
    return levels


def nearest(levels: list[float], target: float) -> int:
    return min(range(len(levels)), key=lambda t: (abs(levels[t] - target), t))


# t* of the linear schedule (beta 1e-4 .. 0.02, T = 1000) for [0, 1] images in [-1, 1] (target 2 sigma),
# also what diffusers' DDPMScheduler().alphas_cumprod gives.
LINEAR_TSTAR = {0.12: 70, 0.25: 144, 0.5: 258, 1.0: 396}
# The same for the cosine schedule (diffusers' squaredcos_cap_v2).
COSINE_TSTAR = {0.12: 142, 0.25: 289, 0.5: 495, 1.0: 701}


@pytest.mark.parametrize("sigma", SIGMAS)
def test_linear_schedule_timestep_matches_hand_computation(sigma: float) -> None:
    levels = hand_linear_levels()
    expected = nearest(levels, 2 * sigma)
    assert expected == LINEAR_TSTAR[sigma]
    assert select_timestep(linear_alpha_bars(1000), 2 * sigma) == expected
    # Closed form to first order: log abar_t ~ -sum_{s<=t} beta_s, so t* solves a quadratic.
    target_log = -math.log(1 + (2 * sigma) ** 2)
    slope = (0.02 - 1e-4) / 999
    a, b, c = slope / 2, 1e-4 + slope / 2, 1e-4 + target_log  # sum_{s=0}^{t} beta_s = a t^2 + b t + 1e-4
    t_continuous = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a)
    assert abs(expected - t_continuous) <= 3  # the second-order term shifts it by a few steps at most


@pytest.mark.parametrize("sigma", SIGMAS)
def test_cosine_schedule_timestep_matches_closed_form(sigma: float) -> None:
    offset, num_timesteps = 0.008, 1000
    f0 = math.cos(offset / (1 + offset) * math.pi / 2) ** 2
    # abar_t = f((t + 1) / T) / f(0) where no beta is capped; solve abar = 1 / (1 + (2 sigma)^2) for t.
    u = (1 + offset) * (2 / math.pi) * math.acos(math.sqrt(f0 / (1 + (2 * sigma) ** 2))) - offset
    t_continuous = num_timesteps * u - 1
    alpha_bars = cosine_alpha_bars(num_timesteps)
    chosen = select_timestep(alpha_bars, 2 * sigma)
    assert chosen in (math.floor(t_continuous), math.ceil(t_continuous))
    assert chosen == COSINE_TSTAR[sigma]
    levels = noise_levels(alpha_bars)
    for neighbour in (chosen - 1, chosen + 1):
        assert abs(levels[chosen] - 2 * sigma) <= abs(levels[neighbour] - 2 * sigma)


def test_target_accounts_for_clip_values_and_model_range() -> None:
    alpha_bars = linear_alpha_bars(1000)
    # [0, 255] pixels in [-1, 1]: the noise is multiplied by 2/255.
    denoiser = DiffusionDenoiser(lambda x, t: x, alpha_bars, 0.25 * 255, clip_values=(0, 255))
    assert denoiser.noise_scale == pytest.approx(2 / 255)
    assert denoiser.timestep == LINEAR_TSTAR[0.25]
    # A model trained on [0, 1] data sees the noise unscaled: target sigma itself.
    denoiser = DiffusionDenoiser(lambda x, t: x, alpha_bars, 0.5, model_data_range=(0, 1))
    assert denoiser.timestep == select_timestep(alpha_bars, 0.5) == LINEAR_TSTAR[0.25]


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sigma", SIGMAS)
def test_reported_mismatch_is_the_nearest_grid_point(schedule: str, sigma: float) -> None:
    alpha_bars = linear_alpha_bars(1000) if schedule == "linear" else cosine_alpha_bars(1000)
    denoiser = DiffusionDenoiser(lambda x, t: x, alpha_bars, sigma)
    levels = noise_levels(alpha_bars).numpy()
    t = denoiser.timestep
    assert denoiser.noise_level_mismatch == pytest.approx(abs(levels[t] - 2 * sigma), abs=1e-12)
    half_gap = max(levels[t + 1] - levels[t], levels[t] - levels[t - 1]) / 2
    assert denoiser.noise_level_mismatch <= half_gap
    assert denoiser.noise_level_mismatch < 0.005  # T = 1000 leaves < 0.25% of 2 sigma here


def gaussian_noise_check(residual: torch.Tensor, std: float, copies: int, level: float = 1e-4) -> bool:
    """Whether ``residual`` (inputs x copies x pixels) is consistent with i.i.d. N(0, std^2): overall mean
    (CLT), per-pixel means (chi-square) and sum of squares (chi-square), each at error ``level``."""
    size = residual.numel()
    mean_ok = abs(float(residual.mean())) <= stats.norm.isf(level / 2) * std / math.sqrt(size)
    pixel_means = residual.mean(dim=1).flatten()
    pixel_statistic = float((pixel_means**2).sum()) * copies / std**2
    pixel_ok = pixel_statistic <= stats.chi2.isf(level, pixel_means.numel())
    statistic = float((residual**2).sum()) / std**2
    variance_ok = stats.chi2.ppf(level / 2, size) <= statistic <= stats.chi2.isf(level / 2, size)
    return mean_ok and pixel_ok and variance_ok


def model_input_residual(denoiser: DiffusionDenoiser, x0: torch.Tensor, copies: int, seed: int):
    """What the model receives for ``copies`` smoothing-noise draws of each ``x0``, minus sqrt(abar) x0
    (in model units), shaped (inputs, copies, C, H, W); and the timesteps it was called with."""
    seen: dict[str, torch.Tensor] = {}
    model = denoiser._model_fn

    def recording_model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen["x_t"], seen["t"] = x_t.detach().clone(), t.clone()
        return model(x_t, t)

    denoiser._model_fn = recording_model
    noisy = gaussian_copies(x0, copies, denoiser.sigma, make_generator(seed))  # the smoother's own noise
    denoiser(noisy)
    denoiser._model_fn = model
    low, high = denoiser.clip_values
    x0_model = (x0.double() - low) * (2.0 / (high - low)) - 1.0
    x_t = seen["x_t"].double().reshape(len(x0), copies, *x0.shape[1:])
    return x_t - math.sqrt(denoiser.alpha_bar) * x0_model[:, None], seen["t"]


@pytest.mark.parametrize(
    ("schedule", "sigma", "clip_values"),
    [("linear", 0.25, (0.0, 1.0)), ("linear", 0.5, (0.0, 1.0)), ("cosine", 0.5, (-3.0, 5.0))],
)
def test_model_input_has_the_forward_process_statistics(schedule, sigma, clip_values, digits) -> None:
    """The x_t handed to the model is sqrt(abar) x0 + noise of std sqrt(abar) * c * sigma, exactly, for the
    noise the smoother adds; that std differs from q(x_t | x0)'s sqrt(1 - abar) by sqrt(abar) * mismatch."""
    alpha_bars = linear_alpha_bars(1000) if schedule == "linear" else cosine_alpha_bars(1000)
    low, high = clip_values
    denoiser = DiffusionDenoiser(lambda x, t: torch.zeros_like(x), alpha_bars, sigma, clip_values=clip_values)
    x0 = torch.as_tensor(digits.x_test[:4]) * (high - low) + low
    copies = 1000
    residual, timesteps = model_input_residual(denoiser, x0, copies, seed=123)
    assert timesteps.shape == (4 * copies,) and bool((timesteps == denoiser.timestep).all())

    alpha_bar, scale = denoiser.alpha_bar, 2.0 / (high - low)
    std = denoiser.input_noise_std
    assert denoiser.noise_scale == pytest.approx(scale)
    assert std == pytest.approx(math.sqrt(alpha_bar) * scale * sigma)
    assert gaussian_noise_check(residual, std, copies)
    # q(x_t | x0) has std sqrt(1 - abar); the gap is exactly the reported mismatch, and small.
    trained_std = math.sqrt(1 - alpha_bar)
    assert abs(std - trained_std) == pytest.approx(
        math.sqrt(alpha_bar) * denoiser.noise_level_mismatch, rel=1e-9
    )
    assert abs(std / trained_std - 1) < 0.01


def test_noise_check_rejects_a_forgotten_range_factor(digits) -> None:
    """The check above can fail: with the [0, 1] -> [-1, 1] factor 2 forgotten (t* chosen for sigma, not
    2 sigma), the model would be trained for a noise std the actual x_t does not have."""
    alpha_bars = linear_alpha_bars(1000)
    sigma = 0.25
    wrong_t = select_timestep(alpha_bars, sigma)
    assert wrong_t != LINEAR_TSTAR[sigma]
    # The x_t such a denoiser builds: sqrt(abar_wrong) * (2 x - 1 + 2 sigma delta); the model expects
    # noise of std sqrt(1 - abar_wrong) there.
    wrong_alpha_bars = alpha_bars.clone()
    wrong_alpha_bars[LINEAR_TSTAR[sigma]] = alpha_bars[wrong_t]  # same t* code path, wrong abar
    denoiser = DiffusionDenoiser(lambda x, t: torch.zeros_like(x), alpha_bars, sigma)
    denoiser.alpha_bars = wrong_alpha_bars
    residual, _ = model_input_residual(denoiser, torch.as_tensor(digits.x_test[:4]), 1000, seed=5)
    wrong_std = math.sqrt(1 - float(alpha_bars[wrong_t]))
    assert not gaussian_noise_check(residual, wrong_std, 1000)
    assert gaussian_noise_check(residual, denoiser.input_noise_std, 1000)


def test_select_timestep_refuses_unreachable_noise() -> None:
    short = linear_alpha_bars(10)  # abar_T ~ 0.9: noise level at most ~0.33
    largest = float(noise_levels(short)[-1])
    assert select_timestep(short, largest) == 9
    with pytest.raises(ValueError, match="sigma is out of reach"):
        select_timestep(short, largest * 1.01)
    with pytest.raises(ValueError, match="sigma is out of reach"):
        DiffusionDenoiser(lambda x, t: x, short, 0.25)
    assert np.isfinite(largest)
