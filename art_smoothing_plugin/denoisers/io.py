"""Saving and loading trained denoisers, with the noise level they were trained for.

A file is one ``torch.save`` of a dict of plain values and tensors: a format tag, the architecture's
name, its constructor arguments (``sigma`` among them) and the state dict. Loading uses
``torch.load(weights_only=True)``, so a file can hold no code and loading one runs none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .dncnn import DnCNN
from .memnet import MemNet

__all__ = ["DENOISER_ARCHITECTURES", "load_denoiser", "register_denoiser", "save_denoiser"]

FORMAT = "art-smoothing-plugin/denoiser"
FORMAT_VERSION = 1

#: Architectures :func:`load_denoiser` can rebuild, by the ``architecture`` attribute of their class.
DENOISER_ARCHITECTURES: dict[str, type[nn.Module]] = {"dncnn": DnCNN, "memnet": MemNet}


def register_denoiser(cls: type[nn.Module]) -> type[nn.Module]:
    """Make a denoiser class loadable: it needs a string ``architecture`` attribute, a ``config()`` method
    returning its constructor arguments as plain values, and a ``sigma`` attribute. Usable as a
    decorator."""
    name = getattr(cls, "architecture", None)
    if not isinstance(name, str) or not name or not callable(getattr(cls, "config", None)):
        raise ValueError(
            f"{getattr(cls, '__name__', cls)!r} must define a string class attribute 'architecture' and a "
            "config() method to be registered"
        )
    DENOISER_ARCHITECTURES[name] = cls
    return cls


def save_denoiser(denoiser: nn.Module, path: str | Path) -> Path:
    """Write ``denoiser`` (weights, architecture and sigma) to ``path``; returns the path.

    Refuses a denoiser without a known ``sigma``: a saved denoiser must say what noise it removes.
    """
    name = getattr(denoiser, "architecture", None)
    if name not in DENOISER_ARCHITECTURES or not isinstance(denoiser, DENOISER_ARCHITECTURES[name]):
        raise ValueError(
            f"save_denoiser supports the registered architectures {sorted(DENOISER_ARCHITECTURES)}; got "
            f"{type(denoiser).__name__} (register its class with register_denoiser)"
        )
    config = dict(denoiser.config())
    if config.get("sigma") is None:
        raise ValueError(
            "the denoiser has no sigma: set denoiser.sigma to the noise level it was trained for (training "
            "with DenoiserTrainer sets it) before saving"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in denoiser.state_dict().items()}
    torch.save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "architecture": name,
            "config": config,
            "state_dict": state,
        },
        path,
    )
    return path


def load_denoiser(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a denoiser written by :func:`save_denoiser`, in eval mode, with its ``sigma`` restored.

    Raises ValueError for a file that is not such a denoiser (no code is ever unpickled).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"denoiser path {str(path)!r} does not exist or is not a file")
    try:
        payload: Any = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # a truncated file, a pickle with code, not a torch file at all
        raise ValueError(f"{str(path)!r} is not a denoiser saved by save_denoiser: {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a denoiser saved by save_denoiser (format tag missing)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{str(path)!r} has denoiser format version {payload.get('format_version')!r}; this version "
            f"reads {FORMAT_VERSION}"
        )
    name = payload.get("architecture")
    if name not in DENOISER_ARCHITECTURES:
        raise ValueError(
            f"{str(path)!r} holds architecture {name!r}, which is not registered "
            f"({sorted(DENOISER_ARCHITECTURES)}); import the module that registers it first"
        )
    denoiser = DENOISER_ARCHITECTURES[name](**payload["config"])
    denoiser.load_state_dict(payload["state_dict"])
    return denoiser.to(map_location).eval()
