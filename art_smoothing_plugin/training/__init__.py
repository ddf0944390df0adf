"""Training a base classifier for randomized smoothing: Gaussian augmentation (Cohen et al. 2019), SmoothAdv
(Salman et al. 2019), MACER (Zhai et al. 2020), Consistency (Jeong & Shin 2020) and SmoothMix (Jeong et al.
2021), each in its own module, on any torch model, with noise in raw input units, preprocessing applied
after it and ``clip_values`` bounding every adversarial or mixed point. What they share (noise draws,
the smoothed soft output, the L2 PGD on the smoothed soft classifier, the loop) is in ``_core``.

    from art_smoothing_plugin.training import train
    train("consistency", model, x_train, y_train, sigma=0.5, optimizer=optimizer, nb_epochs=20, seed=0)

See docs/training.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from ._core import (
    TrainingContext,
    TrainingMethod,
    shuffled_batches,
    smoothed_l2_pgd,
    train,
    train_batches,
    warmup_factor,
)
from .consistency import Consistency, consistency_regularizer
from .gaussian import GaussianAugmentation
from .macer import MACER, macer_loss
from .smoothadv import SmoothAdv
from .smoothmix import SmoothMix, smoothmix_loss

__all__ = [
    "MACER",
    "TRAINING_METHODS",
    "Consistency",
    "GaussianAugmentation",
    "SmoothAdv",
    "SmoothMix",
    "TrainingContext",
    "TrainingMethod",
    "as_training_method",
    "consistency_regularizer",
    "macer_loss",
    "make_training_method",
    "shuffled_batches",
    "smoothed_l2_pgd",
    "smoothmix_loss",
    "train",
    "train_batches",
    "warmup_factor",
]

#: The training methods by name (the names of configs and reports).
TRAINING_METHODS: dict[str, type[TrainingMethod]] = {
    method.name: method for method in (GaussianAugmentation, SmoothAdv, MACER, Consistency, SmoothMix)
}


def make_training_method(name: str, **params: Any) -> TrainingMethod:
    """The training method called ``name`` with hyper-parameters ``params`` (the others at their paper
    defaults). Unknown names and unknown or out-of-range hyper-parameters are refused, naming them."""
    if not isinstance(name, str) or name.lower() not in TRAINING_METHODS:
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(TRAINING_METHODS)}")
    method = TRAINING_METHODS[name.lower()]
    accepted = [field.name for field in fields(method)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown hyper-parameter(s) {', '.join(unknown)} for training method {method.name!r}; it takes "
            f"{', '.join(accepted) if accepted else 'none'}"
        )
    return method(**params)


def as_training_method(spec: TrainingMethod | str | Mapping[str, Any]) -> TrainingMethod:
    """A :class:`TrainingMethod` from itself, a name, or a mapping ``{"method": name, **params}``."""
    if isinstance(spec, TrainingMethod):
        return spec
    if isinstance(spec, str):
        return make_training_method(spec)
    if isinstance(spec, Mapping):
        params = dict(spec)
        if "method" not in params:
            raise ValueError(
                "a training method given as a mapping needs a 'method' key (one of "
                f"{', '.join(TRAINING_METHODS)}); got keys {sorted(params)}"
            )
        return make_training_method(params.pop("method"), **params)
    raise ValueError(
        "training must be a TrainingMethod, a method name or {'method': name, ...}; got "
        f"{type(spec).__name__}"
    )
