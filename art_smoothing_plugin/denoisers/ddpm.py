"""A small DDPM for the built-in data: noise schedules, a compact UNet, training with an on-disk cache.

No pretrained diffusion weights can be downloaded where this project is tested, so diffusion denoised
smoothing is shown on a model trained here, in CPU minutes (Ho, Jain & Abbeel 2020's objective: predict
the noise added by ``q(x_t | x_0)`` at a uniformly drawn timestep). :func:`train_ddpm` returns a
:class:`TrainedDDPM` whose :meth:`~TrainedDDPM.denoiser` builds the
:class:`~art_smoothing_plugin.denoisers.diffusion.DiffusionDenoiser` for a given sigma. A user's own
diffusers checkpoint is loaded with
:func:`~art_smoothing_plugin.denoisers.diffusers_adapter.load_diffusers_checkpoint` (needs the ``diffusion``
extra).

Schedules use the usual indexing: ``abar[t] = prod_{s <= t} (1 - beta_s)`` for ``t = 0 .. T - 1``, and the
model is called with that same ``t`` (diffusers' convention).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from .._validation import check_int_at_least, check_positive_float
from .diffusion import PREDICTION_TYPES, DiffusionDenoiser, _check_range

__all__ = [
    "SCHEDULES",
    "DDPMConfig",
    "TinyUNet",
    "TrainedDDPM",
    "cosine_alpha_bars",
    "default_cache_dir",
    "linear_alpha_bars",
    "make_alpha_bars",
    "train_ddpm",
]

SCHEDULES = ("linear", "cosine")

# Bump when TinyUNet or the training loop changes: cached weights of an older format are then retrained.
_CACHE_FORMAT = 1


# -- schedules -----------------------------------------------------------------------------------------
def linear_alpha_bars(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """Ho et al.'s linear schedule: ``beta_t`` evenly spaced from ``beta_start`` to ``beta_end``;
    returns ``abar_t = prod_{s <= t} (1 - beta_s)`` (float64, length ``num_timesteps``)."""
    num_timesteps = check_int_at_least("num_timesteps", num_timesteps, 2)
    beta_start = check_positive_float("beta_start", beta_start)
    beta_end = check_positive_float("beta_end", beta_end)
    if not beta_start <= beta_end < 1:
        raise ValueError(f"need beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}")
    betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def cosine_alpha_bars(
    num_timesteps: int = 1000, offset: float = 0.008, max_beta: float = 0.999
) -> torch.Tensor:
    """Nichol & Dhariwal's cosine schedule: ``f(u) = cos^2((u + offset) / (1 + offset) * pi / 2)``,
    ``beta_t = min(1 - f((t + 1) / T) / f(t / T), max_beta)``; returns ``abar_t = prod_{s <= t} (1 - beta_s)``
    (float64). Where no beta is capped, ``abar_t = f((t + 1) / T) / f(0)`` (diffusers' squaredcos_cap_v2)."""
    num_timesteps = check_int_at_least("num_timesteps", num_timesteps, 2)
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    if not offset >= 0:
        raise ValueError(f"offset must be >= 0, got {offset!r}")
    u = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2
    betas = torch.clamp(1.0 - f[1:] / f[:-1], max=max_beta)
    return torch.cumprod(1.0 - betas, dim=0)


def make_alpha_bars(schedule: str, num_timesteps: int = 1000) -> torch.Tensor:
    """``abar_t`` of a schedule by name (one of :data:`SCHEDULES`) with its usual defaults."""
    if schedule == "linear":
        return linear_alpha_bars(num_timesteps)
    if schedule == "cosine":
        return cosine_alpha_bars(num_timesteps)
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")


# -- the network ---------------------------------------------------------------------------------------
def _groups(channels: int) -> int:
    return 8 if channels % 8 == 0 else 1


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps, ``(B,) -> (B, dim)`` (Vaswani et al.'s positions)."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    angles = t.float()[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(embedding, (0, dim % 2))


class _ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, embedding_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(embedding_dim, out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(embedding)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class TinyUNet(nn.Module):
    """A compact UNet that predicts from ``(x_t, t)`` a tensor shaped like ``x_t``.

    One residual block (GroupNorm, SiLU, 3x3 convolutions, a timestep embedding added in between) per
    resolution on the way down and up, stride-2 convolutions between resolutions, skip connections by
    concatenation, a residual block in the middle. Any ``H x W`` works (odd sizes are upsampled back to the
    skip's size). The output convolution starts at zero.

    :param channels: image channels.
    :param base_channels: channels at full resolution.
    :param channel_multipliers: one per resolution; ``(1, 2, 2)`` downsamples twice (28 -> 14 -> 7).
    """

    def __init__(
        self, channels: int = 1, base_channels: int = 32, channel_multipliers: tuple[int, ...] = (1, 2)
    ) -> None:
        super().__init__()
        self.channels = check_int_at_least("channels", channels, 1)
        self.base_channels = check_int_at_least("base_channels", base_channels, 1)
        if not channel_multipliers or not all(isinstance(m, int) and m >= 1 for m in channel_multipliers):
            raise ValueError(f"channel_multipliers must be positive integers, got {channel_multipliers!r}")
        self.channel_multipliers = tuple(channel_multipliers)
        self.embedding_dim = 4 * self.base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(self.base_channels, self.embedding_dim),
            nn.SiLU(),
            nn.Linear(self.embedding_dim, self.embedding_dim),
        )
        widths = [self.base_channels * m for m in self.channel_multipliers]
        self.input_conv = nn.Conv2d(self.channels, self.base_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        previous = self.base_channels
        for level, width in enumerate(widths):
            self.down_blocks.append(_ResidualBlock(previous, width, self.embedding_dim))
            if level + 1 < len(widths):
                self.downsamplers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))
            previous = width
        self.middle = _ResidualBlock(previous, previous, self.embedding_dim)
        self.up_blocks = nn.ModuleList()
        for width in reversed(widths):
            self.up_blocks.append(_ResidualBlock(previous + width, width, self.embedding_dim))
            previous = width
        self.output_norm = nn.GroupNorm(_groups(previous), previous)
        self.output_conv = nn.Conv2d(previous, self.channels, 3, padding=1)
        nn.init.zeros_(self.output_conv.weight)
        nn.init.zeros_(self.output_conv.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        embedding = self.time_mlp(timestep_embedding(t.reshape(-1).expand(x_t.shape[0]), self.base_channels))
        h = self.input_conv(x_t)
        skips = []
        for level, block in enumerate(self.down_blocks):
            h = block(h, embedding)
            skips.append(h)
            if level < len(self.downsamplers):
                h = self.downsamplers[level](h)
        h = self.middle(h, embedding)
        for block in self.up_blocks:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1), embedding)
        return self.output_conv(F.silu(self.output_norm(h)))

    def config(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-able: ``TinyUNet(**unet.config())`` rebuilds the architecture."""
        return {
            "channels": self.channels,
            "base_channels": self.base_channels,
            "channel_multipliers": list(self.channel_multipliers),
        }


# -- training and the cache ----------------------------------------------------------------------------
@dataclass(frozen=True)
class DDPMConfig:
    """Everything that determines a trained model (with the data): the cache key is derived from it."""

    schedule: str = "linear"
    num_timesteps: int = 1000
    base_channels: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2)
    prediction_type: str = "epsilon"
    max_train_timestep: int | None = None
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0
    clip_values: tuple[float, float] = (0.0, 1.0)
    model_data_range: tuple[float, float] = (-1.0, 1.0)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-able values (tuples as lists)."""
        values = asdict(self)
        values["channel_multipliers"] = list(self.channel_multipliers)
        values["clip_values"] = list(self.clip_values)
        values["model_data_range"] = list(self.model_data_range)
        return values

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> DDPMConfig:
        values = dict(values)
        for key in ("channel_multipliers", "clip_values", "model_data_range"):
            values[key] = tuple(values[key])
        return cls(**values)


class TrainedDDPM:
    """A noise-prediction model with its schedule and the data range it was trained on.

    :meth:`denoiser` turns it into the :class:`DiffusionDenoiser` for one sigma, refusing a sigma whose
    timestep lies beyond the timesteps the model was trained on.
    """

    def __init__(self, model: TinyUNet, config: DDPMConfig, history: list[float] | None = None) -> None:
        self.model = model.eval()
        self.config = config
        self.alpha_bars = make_alpha_bars(config.schedule, config.num_timesteps)
        #: mean training loss of each epoch (empty when loaded from a cache written without it).
        self.history = list(history or [])

    @property
    def max_timestep(self) -> int:
        """The largest timestep seen in training."""
        last = self.config.num_timesteps - 1
        return last if self.config.max_train_timestep is None else min(self.config.max_train_timestep, last)

    def denoiser(
        self,
        sigma: float,
        *,
        clip_values: tuple[float, float] | None = None,
        denoising_steps: int = 1,
    ) -> DiffusionDenoiser:
        """The diffusion denoiser for smoothing noise ``sigma`` (raw units).

        :param clip_values: the raw range of the data to denoise; must equal the range the model was
            trained on (``None`` takes it).
        :raises ValueError: if ``clip_values`` differs from the training range, or if sigma needs a
            timestep the schedule cannot reach or the model was not trained on.
        """
        trained = tuple(self.config.clip_values)
        if clip_values is not None and _check_range("clip_values", clip_values) != trained:
            raise ValueError(
                f"clip_values={tuple(clip_values)!r} does not match the data range this DDPM was trained on, "
                f"{trained!r}: the model would see the data at the wrong scale"
            )
        denoiser = DiffusionDenoiser(
            self.model,
            self.alpha_bars,
            sigma,
            clip_values=trained,
            model_data_range=self.config.model_data_range,
            prediction_type=self.config.prediction_type,
            denoising_steps=denoising_steps,
        )
        if denoiser.timestep > self.max_timestep:
            raise ValueError(
                f"sigma={sigma!r} needs timestep {denoiser.timestep}, beyond the largest this DDPM was "
                f"trained on ({self.max_timestep}, max_train_timestep); retrain with a larger one"
            )
        return denoiser

    def save(self, path: str | Path) -> Path:
        """Write the weights and the configuration to one file (read back by :meth:`load`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _CACHE_FORMAT,
            "config": json.dumps(self.config.to_json()),
            "model_config": json.dumps(self.model.config()),
            "history": torch.tensor(self.history, dtype=torch.float64),
            "state_dict": self.model.state_dict(),
        }
        temporary = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
        torch.save(payload, temporary)
        temporary.replace(path)  # atomic: a concurrent reader never sees half a file
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> TrainedDDPM:
        """Read a file written by :meth:`save` (weights only: no code is unpickled)."""
        payload = torch.load(Path(path), map_location=device, weights_only=True)
        if payload.get("format") != _CACHE_FORMAT:
            raise ValueError(
                f"{path} holds a DDPM of format {payload.get('format')!r}; expected {_CACHE_FORMAT}"
            )
        model_config = json.loads(payload["model_config"])
        model = TinyUNet(
            model_config["channels"],
            model_config["base_channels"],
            tuple(model_config["channel_multipliers"]),
        )
        model.load_state_dict(payload["state_dict"])
        return cls(
            model.to(device),
            DDPMConfig.from_json(json.loads(payload["config"])),
            payload["history"].tolist(),
        )


def default_cache_dir() -> Path:
    """``$ART_SMOOTHING_CACHE/ddpm``, else ``~/.cache/art-smoothing/ddpm``."""
    root = os.environ.get("ART_SMOOTHING_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "art-smoothing") / "ddpm"


def _cache_key(x_train: np.ndarray, channels: int, config: DDPMConfig) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": _CACHE_FORMAT, "channels": channels, **config.to_json()}).encode())
    digest.update(str(x_train.shape).encode())
    digest.update(np.ascontiguousarray(x_train, dtype=np.float32).tobytes())
    return digest.hexdigest()[:20]


def train_ddpm(
    x_train: np.ndarray | torch.Tensor,
    *,
    clip_values: tuple[float, float] = (0.0, 1.0),
    schedule: str = "linear",
    num_timesteps: int = 1000,
    base_channels: int = 32,
    channel_multipliers: tuple[int, ...] = (1, 2),
    prediction_type: str = "epsilon",
    max_train_timestep: int | None = None,
    epochs: int = 30,
    batch_size: int = 128,
    learning_rate: float = 2e-3,
    seed: int = 0,
    cache_dir: str | Path | None | bool = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> TrainedDDPM:
    """Train a :class:`TinyUNet` DDPM on images ``x_train`` ``(N, C, H, W)`` in ``clip_values``.

    The loss is the mean squared error of the model's ``prediction_type`` target at ``t`` drawn uniformly
    from ``0 .. max_train_timestep`` (all timesteps by default; a smaller bound spends the budget on the
    noise levels smoothing uses, and :meth:`TrainedDDPM.denoiser` then refuses sigmas beyond it). Adam with
    a one-cycle learning rate (short warm-up, cosine decay), seeded: the same arguments give the same
    weights on the same device.

    :param cache_dir: folder of cached models keyed by a hash of the data and every argument that shapes
        the model; ``None`` uses :func:`default_cache_dir`, ``False`` disables the cache.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}; got {prediction_type!r}"
        )
    make_alpha_bars(schedule, num_timesteps)  # validates schedule and num_timesteps
    x = x_train.detach().cpu().numpy() if isinstance(x_train, torch.Tensor) else np.asarray(x_train)
    if x.ndim != 4 or x.shape[0] < 1:
        raise ValueError(f"x_train must be images of shape (N, C, H, W), got shape {x.shape}")
    low, high = _check_range("clip_values", clip_values)
    if not np.isfinite(x).all() or x.min() < low - 1e-6 or x.max() > high + 1e-6:
        raise ValueError(
            f"x_train has values in [{x.min():.6g}, {x.max():.6g}], outside clip_values=({low:g}, {high:g}): "
            "the data's range does not match clip_values"
        )
    if max_train_timestep is not None:
        max_train_timestep = check_int_at_least("max_train_timestep", max_train_timestep, 0)
    config = DDPMConfig(
        schedule=schedule,
        num_timesteps=int(num_timesteps),
        base_channels=check_int_at_least("base_channels", base_channels, 1),
        channel_multipliers=tuple(int(m) for m in channel_multipliers),
        prediction_type=prediction_type,
        max_train_timestep=max_train_timestep,
        epochs=check_int_at_least("epochs", epochs, 1),
        batch_size=check_int_at_least("batch_size", batch_size, 1),
        learning_rate=check_positive_float("learning_rate", learning_rate),
        seed=int(seed),
        clip_values=(low, high),
    )
    cache_path = None
    if cache_dir is not False:
        folder = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir)
        cache_path = folder / f"ddpm-{_cache_key(x, x.shape[1], config)}.pt"
        if cache_path.is_file():
            return TrainedDDPM.load(cache_path, device)

    trained = _fit(x, config, torch.device(device), progress)
    if cache_path is not None:
        trained.save(cache_path)
    return trained


def _fit(x: np.ndarray, config: DDPMConfig, device: torch.device, progress: bool) -> TrainedDDPM:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = TinyUNet(x.shape[1], config.base_channels, config.channel_multipliers).to(device)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    low, high = config.clip_values
    model_low, model_high = config.model_data_range
    data = torch.as_tensor(x, dtype=torch.float32)
    data = (data - low) * ((model_high - model_low) / (high - low)) + model_low
    alpha_bars = make_alpha_bars(config.schedule, config.num_timesteps).float()
    largest_t = config.num_timesteps - 1 if config.max_train_timestep is None else config.max_train_timestep
    largest_t = min(largest_t, config.num_timesteps - 1)

    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=total_steps, pct_start=0.05
    )
    history: list[float] = []
    model.train()
    with tqdm(total=total_steps, desc="training DDPM", disable=not progress, leave=False) as bar:
        for _ in range(config.epochs):
            order = torch.randperm(len(data), generator=generator)
            epoch_loss = 0.0
            for start in range(0, len(data), config.batch_size):
                x0 = data[order[start : start + config.batch_size]]
                t = torch.randint(0, largest_t + 1, (len(x0),), generator=generator)
                noise = torch.randn(x0.shape, generator=generator)
                alpha_bar = alpha_bars[t][:, None, None, None]
                x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
                if config.prediction_type == "epsilon":
                    target = noise
                elif config.prediction_type == "v_prediction":
                    target = alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0
                else:
                    target = x0
                loss = F.mse_loss(model(x_t.to(device), t.to(device)), target.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                epoch_loss += float(loss.detach()) * len(x0)
                bar.update(1)
            history.append(epoch_loss / len(data))
            bar.set_postfix(loss=f"{history[-1]:.4f}")
    return TrainedDDPM(model.eval(), config, history)
