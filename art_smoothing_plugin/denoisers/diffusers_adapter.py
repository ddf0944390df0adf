"""Adapter from Hugging Face diffusers (an optional extra: ``pip install 'art-smoothing-plugin[diffusion]'``).

A ``UNet2DModel`` with a ``DDPMScheduler`` (or any scheduler with ``alphas_cumprod`` and a
``prediction_type``, such as ``DDIMScheduler``) becomes a
:class:`~art_smoothing_plugin.denoisers.diffusion.DiffusionDenoiser`. The scheduler supplies the schedule
``abar_t``, the parameterisation of the UNet's output (``epsilon``, ``v_prediction`` or ``sample``;
anything else is refused) and the data range ``[-clip_sample_range, clip_sample_range]``.

diffusers is imported only when one of these functions is called, so the rest of the package works
without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .diffusion import DiffusionDenoiser

__all__ = [
    "DiffusersUNetAdapter",
    "denoiser_from_diffusers",
    "load_diffusers_checkpoint",
    "require_diffusers",
]


def require_diffusers() -> Any:
    """Import and return the diffusers module, or raise ImportError saying how to install it."""
    try:
        import diffusers
    except ImportError as error:
        raise ImportError(
            "this feature needs Hugging Face diffusers, an optional dependency: "
            "pip install 'art-smoothing-plugin[diffusion]' (or pip install diffusers)"
        ) from error
    return diffusers


class DiffusersUNetAdapter(nn.Module):
    """``forward(x_t, t) = unet(x_t, t).sample``: a diffusers UNet as a plain noise-prediction model."""

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        config = getattr(unet, "config", None)
        if config is not None and getattr(config, "class_embed_type", None) is not None:
            raise ValueError(
                "unet is class-conditional (class_embed_type is set); an unconditional UNet is needed"
            )
        if config is not None and getattr(config, "num_class_embeds", None) is not None:
            raise ValueError(
                "unet is class-conditional (num_class_embeds is set); an unconditional UNet is needed"
            )
        self.unet = unet

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        output = self.unet(x_t, t)
        return output.sample if hasattr(output, "sample") else output


def denoiser_from_diffusers(
    unet: nn.Module,
    scheduler: Any,
    sigma: float,
    *,
    clip_values: tuple[float, float] = (0.0, 1.0),
    denoising_steps: int = 1,
) -> DiffusionDenoiser:
    """The diffusion denoiser of a diffusers UNet and its training scheduler, for smoothing at ``sigma``.

    :param scheduler: the scheduler the UNet was trained with (``scheduler.alphas_cumprod`` is the
        schedule; ``scheduler.config.prediction_type`` the output's meaning;
        ``scheduler.config.clip_sample_range``, default 1, the data range ``[-r, r]``).
    :raises ValueError: for a scheduler without ``alphas_cumprod``, an unsupported ``prediction_type``,
        a UNet whose channels do not match its output, or a sigma the schedule cannot reach.
    """
    alpha_bars = getattr(scheduler, "alphas_cumprod", None)
    if alpha_bars is None:
        raise ValueError(
            "scheduler must be a diffusers DDPM-style scheduler with alphas_cumprod; got "
            f"{type(scheduler).__name__}"
        )
    config = getattr(scheduler, "config", {})
    prediction_type = _config_value(config, "prediction_type", "epsilon")
    data_range = float(_config_value(config, "clip_sample_range", 1.0))
    unet_config = getattr(unet, "config", None)
    if unet_config is not None:
        in_channels = getattr(unet_config, "in_channels", None)
        out_channels = getattr(unet_config, "out_channels", None)
        if in_channels is not None and out_channels is not None and in_channels != out_channels:
            raise ValueError(
                f"unet must output as many channels as it takes (in_channels={in_channels}, "
                f"out_channels={out_channels}); a UNet that also predicts variances is not supported"
            )
    return DiffusionDenoiser(
        DiffusersUNetAdapter(unet),
        alpha_bars,
        sigma,
        clip_values=clip_values,
        model_data_range=(-data_range, data_range),
        prediction_type=prediction_type,
        denoising_steps=denoising_steps,
    )


def _config_value(config: Any, key: str, default: Any) -> Any:
    if isinstance(config, dict) or hasattr(config, "get"):
        value = config.get(key, default)
    else:
        value = getattr(config, key, default)
    return default if value is None else value


def load_diffusers_checkpoint(
    path: str | Path,
    sigma: float,
    *,
    clip_values: tuple[float, float] = (0.0, 1.0),
    denoising_steps: int = 1,
    device: torch.device | str = "cpu",
) -> DiffusionDenoiser:
    """Load a diffusers checkpoint folder and build its diffusion denoiser for ``sigma``.

    Accepted layouts: a saved pipeline (``unet/`` and ``scheduler/`` subfolders, as written by
    ``DDPMPipeline.save_pretrained``), or one folder with the UNet's ``config.json`` and weights and the
    scheduler's ``scheduler_config.json``. The scheduler class named in its config is used when diffusers
    has it (DDPMScheduler otherwise: only ``alphas_cumprod`` and the config are read from it).
    """
    diffusers = require_diffusers()
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ValueError(f"path must be a diffusers checkpoint folder; {str(folder)!r} is not a folder")
    if (folder / "unet").is_dir() and (folder / "scheduler").is_dir():
        unet_folder, scheduler_folder = folder / "unet", folder / "scheduler"
    elif (folder / "config.json").is_file() and (folder / "scheduler_config.json").is_file():
        unet_folder = scheduler_folder = folder
    else:
        raise ValueError(
            f"path {str(folder)!r} is not a diffusers checkpoint: expected unet/ and scheduler/ subfolders, "
            "or config.json and scheduler_config.json side by side"
        )
    unet = diffusers.UNet2DModel.from_pretrained(unet_folder, low_cpu_mem_usage=False)
    scheduler_class = getattr(diffusers, _scheduler_class_name(scheduler_folder), diffusers.DDPMScheduler)
    if not hasattr(scheduler_class, "from_pretrained"):
        scheduler_class = diffusers.DDPMScheduler
    scheduler = scheduler_class.from_pretrained(scheduler_folder)
    denoiser = denoiser_from_diffusers(
        unet, scheduler, sigma, clip_values=clip_values, denoising_steps=denoising_steps
    )
    return denoiser.to(device)


def _scheduler_class_name(folder: Path) -> str:
    import json

    try:
        return str(
            json.loads((folder / "scheduler_config.json").read_text()).get("_class_name", "DDPMScheduler")
        )
    except (OSError, ValueError):
        return "DDPMScheduler"
