"""Denoisers for denoised smoothing (Salman et al. 2020) and their training.

A denoiser is any ``torch.nn.Module`` that maps noisy inputs (in the raw units of the data) to denoised
inputs of the same shape. One that knows the noise level it was trained for carries it as a float
attribute ``sigma``; :class:`~art_smoothing_plugin.DenoisedSmoothingClassifier` refuses to smooth at
another noise level unless told to.
"""

from .ddpm import (
    TinyUNet,
    TrainedDDPM,
    cosine_alpha_bars,
    linear_alpha_bars,
    train_ddpm,
)
from .diffusers_adapter import denoiser_from_diffusers, load_diffusers_checkpoint
from .diffusion import PREDICTION_TYPES, DiffusionDenoiser, noise_levels, select_timestep
from .dncnn import DnCNN
from .io import DENOISER_ARCHITECTURES, load_denoiser, register_denoiser, save_denoiser
from .memnet import MemNet
from .training import OBJECTIVES, DenoiserTrainer, TrainingHistory, train_denoiser

__all__ = [
    "DENOISER_ARCHITECTURES",
    "PREDICTION_TYPES",
    "DiffusionDenoiser",
    "TinyUNet",
    "TrainedDDPM",
    "cosine_alpha_bars",
    "denoiser_from_diffusers",
    "linear_alpha_bars",
    "load_diffusers_checkpoint",
    "noise_levels",
    "select_timestep",
    "train_ddpm",
    "OBJECTIVES",
    "DenoiserTrainer",
    "DnCNN",
    "MemNet",
    "TrainingHistory",
    "load_denoiser",
    "register_denoiser",
    "save_denoiser",
    "train_denoiser",
]
