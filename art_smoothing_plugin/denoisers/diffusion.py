"""Diffusion denoised smoothing (Carlini, Tramer, Dvijotham, Rice, Sun & Kolter, ICLR 2023): any DDPM-style
noise-prediction model, used once at the timestep whose noise level matches sigma, is the denoiser.

How the Gaussian noise of randomized smoothing meets the diffusion model's forward process
------------------------------------------------------------------------------------------
Randomized smoothing adds ``delta ~ N(0, sigma^2 I)`` to the raw input ``x`` (units of ``clip_values``
``(lo, hi)``). The model works on data mapped affinely to its own range ``(m_lo, m_hi)``, usually
``[-1, 1]``; the map multiplies by ``c = (m_hi - m_lo) / (hi - lo)``, so the noise there has standard
deviation ``c * sigma`` (``2 * sigma`` for [0, 1] images in [-1, 1]). The forward process of a DDPM is
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``; dividing by ``sqrt(abar_t)`` gives
``x_0 + sqrt((1 - abar_t) / abar_t) eps``. So the denoiser

1. picks ``t*``, the timestep whose noise level ``sqrt((1 - abar_t) / abar_t)`` is closest to ``c * sigma``;
2. hands the model ``x_t = sqrt(abar_t*) * map(x + delta)``, whose noise has standard deviation
   ``sqrt(abar_t*) * c * sigma``;
3. turns the model's output into its estimate of ``x_0`` (``epsilon``, ``v_prediction`` or ``sample``
   parameterisation), clips it to the model's range and maps it back to raw units. Optionally, a few
   deterministic DDIM steps from ``t*`` to 0 refine it.

Why the certificate is exact although ``t*`` is discrete
--------------------------------------------------------
Timesteps are discrete, so ``sqrt(abar_t*) * c * sigma`` equals the ``sqrt(1 - abar_t*)`` the model was
trained for only up to the gap reported in :attr:`DiffusionDenoiser.noise_level_mismatch`
(``|sqrt((1 - abar_t*) / abar_t*) - c * sigma|``, in model units of the rescaled image). That mismatch can
only cost accuracy, never soundness: the smoothing noise is exactly ``N(0, sigma^2 I)`` in raw units,
added by the smoother, and this denoiser is a fixed, deterministic function of its input (no noise of its
own, no dependence on sigma beyond the choice of ``t*`` made once at construction). The base classifier
``f(D(.))`` is therefore an ordinary deterministic classifier, and Cohen et al.'s theorem certifies
``sigma * Phi^-1(p_lower)`` for the sigma of the noise actually added, whatever ``D`` does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .._validation import check_int_at_least, check_positive_float

__all__ = [
    "PREDICTION_TYPES",
    "DiffusionDenoiser",
    "noise_levels",
    "select_timestep",
]

#: The parameterisations of the model's output this denoiser understands (diffusers' names).
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

#: A noise-prediction model: ``model(x_t, t)`` with ``x_t`` of shape ``(B, C, H, W)`` and ``t`` an int64
#: tensor of shape ``(B,)``; returns a tensor shaped like ``x_t``.
NoiseModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Noisy inputs further than this many sigma outside clip_values are refused as data in the wrong units.
# A Gaussian coordinate exceeds 10 sigma with probability ~1.5e-23: a sound input is never refused.
_RANGE_CHECK_SIGMAS = 10.0
#: What an exported copy's range assertion says (it cannot name the values it saw).
_RANGE_MESSAGE = (
    "x holds values more than {sigmas:g} sigma outside clip_values=({low:g}, {high:g}): the data's range "
    "does not match clip_values (are the images in [0, 255] instead of [0, 1]?)"
)


def _as_alpha_bars(alpha_bars: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """Check a cumulative-product schedule: 1-D, finite, in (0, 1], non-increasing."""
    try:
        values = torch.as_tensor(
            np.asarray(alpha_bars.detach().cpu() if isinstance(alpha_bars, torch.Tensor) else alpha_bars),
            dtype=torch.float64,
        )
    except (TypeError, ValueError):
        raise ValueError(
            "alpha_bars must be a 1-D sequence of cumulative products abar_t, got "
            f"{type(alpha_bars).__name__}"
        ) from None
    if values.ndim != 1 or values.numel() < 1:
        raise ValueError(f"alpha_bars must be a non-empty 1-D sequence, got shape {tuple(values.shape)}")
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()) or bool((values > 1).any()):
        raise ValueError("alpha_bars must hold finite values in [0, 1] (cumulative products of 1 - beta_t)")
    if float(values[0]) <= 0:
        raise ValueError("alpha_bars[0] must be > 0 (the first timestep keeps some signal)")
    if bool((values[1:] > values[:-1] + 1e-12).any()):
        raise ValueError("alpha_bars must be non-increasing in t (the noise grows with the timestep)")
    return values


def noise_levels(alpha_bars: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """``sqrt((1 - abar_t) / abar_t)`` for every timestep, float64: the standard deviation of the noise in
    ``x_t / sqrt(abar_t) = x_0 + noise``, in the model's data units (infinite where ``abar_t = 0``, as at
    the end of a zero-terminal-SNR schedule)."""
    values = _as_alpha_bars(alpha_bars)
    return torch.sqrt((1.0 - values) / values)


def select_timestep(
    alpha_bars: Sequence[float] | np.ndarray | torch.Tensor, target_noise_level: float
) -> int:
    """The timestep ``t*`` whose noise level ``sqrt((1 - abar_t) / abar_t)`` is closest to
    ``target_noise_level`` (ties go to the smaller t).

    :raises ValueError: if the target exceeds the schedule's largest noise level (``abar`` at the last
        timestep): no timestep of the model has seen that much noise.
    """
    target = check_positive_float("target_noise_level", target_noise_level)
    levels = noise_levels(alpha_bars)
    largest = float(levels[-1])
    if target > largest:
        raise ValueError(
            f"sigma is out of reach of this schedule: the noise level it needs in the model's units, "
            f"{target:.6g}, exceeds the largest the schedule reaches, sqrt((1 - abar_T) / abar_T) = "
            f"{largest:.6g} (abar_T = {float(_as_alpha_bars(alpha_bars)[-1]):.6g}); use a smaller sigma or "
            "a schedule with more noise"
        )
    return int(torch.argmin(torch.abs(levels - target)))


def _check_range(name: str, value: Any) -> tuple[float, float]:
    """A scalar ``(low, high)`` pair with ``low < high``, both finite."""
    try:
        low, high = (float(np.asarray(v).item()) for v in value)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair of scalars (low, high), got {value!r}; per-channel ranges are not "
            "supported (one timestep must match the noise of every channel)"
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"{name} must be finite with low < high, got {value!r}")
    return low, high


class DiffusionDenoiser(nn.Module):
    """One-shot (or few-step DDIM) denoising with a diffusion model, for smoothing at one sigma.

    ``forward(x_noisy)`` maps noisy raw-unit inputs ``(B, C, H, W)`` to denoised raw-unit inputs of the same
    shape, clipped to ``clip_values``. It is deterministic and differentiable (gradients flow through the
    model), so it can serve as the denoiser of
    :class:`~art_smoothing_plugin.DenoisedSmoothingClassifier` and inside attacks.

    Guarantees:

    * ``timestep`` is :func:`select_timestep` of the target ``noise_scale * sigma``; ``noise_level_mismatch``
      is ``|sqrt((1 - abar_t*) / abar_t*) - noise_scale * sigma|``, the only approximation. It affects the
      accuracy of the denoiser, not the validity of a certificate computed at ``sigma`` (see the module
      docstring): the radius is valid for the noise the smoother actually adds.
    * A ``sigma`` the schedule cannot reach, an unknown ``prediction_type``, a model whose output is not
      shaped like its input, and inputs far outside ``clip_values`` (data in other units) raise ValueError.

    :param model: the noise-prediction model, ``model(x_t, t) -> tensor shaped like x_t`` (any callable;
        an ``nn.Module`` is registered as a submodule so ``.to()`` and ``.eval()`` reach it).
    :param alpha_bars: the model's cumulative schedule ``abar_t`` for ``t = 0 .. T - 1``, the same
        indexing as the ``t`` the model is called with (diffusers' ``scheduler.alphas_cumprod``).
    :param sigma: standard deviation of the smoothing noise, in raw input units.
    :param clip_values: ``(lo, hi)``, the raw input range.
    :param model_data_range: ``(m_lo, m_hi)``, the range of the data the model was trained on.
    :param prediction_type: what the model outputs: ``"epsilon"`` (the noise), ``"v_prediction"``
        (``sqrt(abar) eps - sqrt(1 - abar) x_0``) or ``"sample"`` (``x_0`` itself).
    :param denoising_steps: 1 for the paper's one-shot denoising; ``k > 1`` runs ``k`` model evaluations
        along deterministic DDIM steps at timesteps evenly spaced from ``t*`` down to 0.
    """

    def __init__(
        self,
        model: NoiseModel,
        alpha_bars: Sequence[float] | np.ndarray | torch.Tensor,
        sigma: float,
        *,
        clip_values: tuple[float, float] = (0.0, 1.0),
        model_data_range: tuple[float, float] = (-1.0, 1.0),
        prediction_type: str = "epsilon",
        denoising_steps: int = 1,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise ValueError(f"model must be callable as model(x_t, t), got {type(model).__name__}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}"
            )
        if isinstance(model, nn.Module):
            self.model = model
        else:
            self._model_fn = model
        self._sigma = check_positive_float("sigma", sigma)
        self.clip_values = _check_range("clip_values", clip_values)
        self.model_data_range = _check_range("model_data_range", model_data_range)
        self.prediction_type = prediction_type
        self.register_buffer("alpha_bars", _as_alpha_bars(alpha_bars), persistent=False)

        low, high = self.clip_values
        model_low, model_high = self.model_data_range
        #: raw units -> model units multiply by this: the smoothing noise there is noise_scale * sigma.
        self.noise_scale = (model_high - model_low) / (high - low)
        self.target_noise_level = self.noise_scale * self.sigma
        self.timestep = select_timestep(self.alpha_bars, self.target_noise_level)
        self.timestep_noise_level = float(noise_levels(self.alpha_bars)[self.timestep])
        self.noise_level_mismatch = abs(self.timestep_noise_level - self.target_noise_level)

        steps = check_int_at_least("denoising_steps", denoising_steps, 1)
        if steps > self.timestep + 1:
            raise ValueError(
                f"denoising_steps must be at most t* + 1 = {self.timestep + 1} (distinct timesteps from t* "
                f"down to 0); got {denoising_steps!r}"
            )
        self.denoising_steps = steps
        #: the timesteps the model is evaluated at, in order (t* first).
        self.timesteps = tuple(int(t) for t in np.linspace(self.timestep, 0, steps).round().astype(int))
        # abar at those timesteps as Python numbers, read once: forward() then reads no buffer value, so
        # torch.export can trace it (a value read from a buffer is data-dependent to it).
        self._step_alpha_bars = {t: float(self.alpha_bars[t]) for t in self.timesteps}
        self.eval()  # the base classifier must be deterministic: no dropout, batch statistics frozen

    # -- the model's view of the noisy input ------------------------------------------------------
    @property
    def sigma(self) -> float:
        """The smoothing noise this denoiser was built for (read-only: t* was chosen for it; build another
        denoiser for another sigma)."""
        return self._sigma

    @property
    def alpha_bar(self) -> float:
        """``abar_t*``."""
        return self._step_alpha_bars[self.timestep]

    @property
    def input_noise_std(self) -> float:
        """Standard deviation of the noise in the ``x_t`` the model receives: ``sqrt(abar_t*) * noise_scale
        * sigma``; the model was trained for ``sqrt(1 - abar_t*)``."""
        return math.sqrt(self.alpha_bar) * self.target_noise_level

    def to_model_units(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw inputs (in ``clip_values``) to the model's data range."""
        low, _ = self.clip_values
        model_low, _ = self.model_data_range
        return (x - low) * self.noise_scale + model_low

    def to_raw_units(self, x: torch.Tensor) -> torch.Tensor:
        """Map the model's data range back to raw inputs (the inverse of :meth:`to_model_units`)."""
        low, _ = self.clip_values
        model_low, _ = self.model_data_range
        return (x - model_low) / self.noise_scale + low

    def model_input(self, x_noisy: torch.Tensor) -> torch.Tensor:
        """``x_t* = sqrt(abar_t*) * map(x_noisy)``: what the model is evaluated on first."""
        return math.sqrt(self.alpha_bar) * self.to_model_units(x_noisy)

    # -- evaluation ---------------------------------------------------------------------------------
    def _call_model(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        timesteps = torch.full((x_t.shape[0],), t, dtype=torch.long, device=x_t.device)
        output = self.model(x_t, timesteps) if hasattr(self, "model") else self._model_fn(x_t, timesteps)
        if not isinstance(output, torch.Tensor) or output.shape != x_t.shape:
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
            raise ValueError(
                f"model must return a tensor shaped like its input x_t {tuple(x_t.shape)} (its "
                f"{self.prediction_type!r} prediction); got {shape}. Check the model's channels and that it "
                "returns a tensor, not a wrapper object."
            )
        return output.to(x_t.dtype)

    def _predict_clean(self, x_t: torch.Tensor, output: torch.Tensor, alpha_bar: float) -> torch.Tensor:
        """The model's estimate of ``x_0`` from its output at a timestep with ``abar = alpha_bar``."""
        signal, noise = math.sqrt(alpha_bar), math.sqrt(1.0 - alpha_bar)
        if self.prediction_type == "epsilon":
            return (x_t - noise * output) / signal
        if self.prediction_type == "v_prediction":
            return signal * x_t - noise * output
        return output

    def _check_units(self, x: torch.Tensor) -> None:
        low, high = self.clip_values
        slack = _RANGE_CHECK_SIGMAS * self.sigma
        x_min, x_max = float(x.min()), float(x.max())
        if x_min < low - slack or x_max > high + slack:
            raise ValueError(
                f"x holds values in [{x_min:.6g}, {x_max:.6g}], more than {_RANGE_CHECK_SIGMAS:g} sigma "
                f"outside clip_values=({low:g}, {high:g}): the data's range does not match clip_values "
                "(are the images in [0, 255] instead of [0, 1]?)"
            )

    def forward(self, x_noisy: torch.Tensor) -> torch.Tensor:
        if not isinstance(x_noisy, torch.Tensor) or x_noisy.ndim < 2:
            raise ValueError("x_noisy must be a batch tensor of shape (B, C, H, W)")
        if x_noisy.numel() == 0:
            return x_noisy
        if not x_noisy.is_floating_point():
            x_noisy = x_noisy.float()
        if torch.compiler.is_exporting():
            # torch.export cannot trace the data-dependent raise: an exported copy asserts the same range
            low, high = self.clip_values
            slack = _RANGE_CHECK_SIGMAS * self.sigma
            inside = (x_noisy.min() >= low - slack) & (x_noisy.max() <= high + slack)
            torch._assert_async(inside, _RANGE_MESSAGE.format(sigmas=_RANGE_CHECK_SIGMAS, low=low, high=high))
        else:
            self._check_units(x_noisy.detach())
        model_low, model_high = self.model_data_range
        x_t = self.model_input(x_noisy)
        clean = x_t
        for index, t in enumerate(self.timesteps):
            alpha_bar = self._step_alpha_bars[t]
            output = self._call_model(x_t, t)
            estimate = self._predict_clean(x_t, output, alpha_bar)
            clean = estimate.clamp(model_low, model_high)
            if index + 1 < len(self.timesteps):
                # Deterministic DDIM step (eta = 0): keep the model's noise estimate, move to the next t.
                if self.prediction_type == "epsilon":
                    noise_estimate = output
                else:
                    noise_estimate = (x_t - math.sqrt(alpha_bar) * estimate) / math.sqrt(1.0 - alpha_bar)
                next_alpha_bar = self._step_alpha_bars[self.timesteps[index + 1]]
                x_t = math.sqrt(next_alpha_bar) * clean + math.sqrt(1.0 - next_alpha_bar) * noise_estimate
        return self.to_raw_units(clean).clamp(*self.clip_values)

    def extra_repr(self) -> str:
        return (
            f"sigma={self.sigma:g}, timestep={self.timestep}, noise_level={self.timestep_noise_level:.4g} "
            f"(target {self.target_noise_level:.4g}, mismatch {self.noise_level_mismatch:.2g}), "
            f"prediction_type={self.prediction_type!r}, denoising_steps={self.denoising_steps}"
        )

    def describe(self) -> dict[str, Any]:
        """The choices made for this sigma, plain values (for reports and benchmark tables)."""
        return {
            "sigma": self.sigma,
            "timestep": self.timestep,
            "alpha_bar": self.alpha_bar,
            "target_noise_level": self.target_noise_level,
            "timestep_noise_level": self.timestep_noise_level,
            "noise_level_mismatch": self.noise_level_mismatch,
            "input_noise_std": self.input_noise_std,
            "trained_noise_std": math.sqrt(1.0 - self.alpha_bar),
            "prediction_type": self.prediction_type,
            "denoising_steps": self.denoising_steps,
            "timesteps": list(self.timesteps),
        }
