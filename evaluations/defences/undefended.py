"""Deterministic classifiers as defences: the undefended (clean-trained) model and Madry et al.'s PGD
adversarial training in L-inf and L2 (trained through :mod:`evaluations.adversarial_training`,
cached like every harness-trained model)."""

from __future__ import annotations

from art.estimators.classification import PyTorchClassifier
from torch import nn

from . import BuildContext, PlainDefence

__all__ = [
    "art_classifier",
    "build_adversarial_training_l2",
    "build_adversarial_training_linf",
    "build_undefended",
]


def art_classifier(model: nn.Module, context: BuildContext) -> PyTorchClassifier:
    """The model as ART's PyTorchClassifier on [0, 1] inputs (clip_values (0, 1))."""
    return PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=context.dataset.input_shape,
        nb_classes=context.models.nb_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if context.device.type == "cuda" else "cpu",
    )


def build_undefended(context: BuildContext) -> list[PlainDefence]:
    model, key = context.models.classifier("clean")
    return [
        PlainDefence(
            "undefended", "undefended", art_classifier(model, context), model, {"model": key}, context.device
        )
    ]


def _adversarial(context: BuildContext, norm: str) -> list[PlainDefence]:
    settings = context.config["adversarial_training"]
    params = {
        "norm": norm,
        "eps": settings[f"{norm}_eps"],
        "eps_step": settings[f"{norm}_eps_step"],
        "steps": settings["steps"],
    }
    model, key = context.models.classifier("madry", **params)
    name = f"adversarial_training_{norm}"
    return [
        PlainDefence(
            name, name, art_classifier(model, context), model, {"model": key, **params}, context.device
        )
    ]


def build_adversarial_training_linf(context: BuildContext) -> list[PlainDefence]:
    return _adversarial(context, "linf")


def build_adversarial_training_l2(context: BuildContext) -> list[PlainDefence]:
    return _adversarial(context, "l2")
