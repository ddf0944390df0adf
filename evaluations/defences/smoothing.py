"""Smoothed classifiers as defences: randomized smoothing (one Gaussian-trained model per sigma) and
denoised smoothing (the clean model behind a denoiser trained for each sigma).

Both are :class:`~evaluations.defences.SmoothedDefence`: the pipeline certifies them, attacks the smoothed
soft classifier, and answers with PREDICT on fresh noise. Diffusion denoised smoothing plugs in the same
way: one DDPM, trained on the run's training split, denoises in front of the clean classifier.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from ..config import DDPM_SCHEDULE, DDPM_TIMESTEPS
from . import DEFENCE_KINDS, BuildContext, SmoothedDefence

__all__ = [
    "build_denoised_smoothing",
    "build_diffusion_smoothing",
    "build_randomized_smoothing",
    "denoiser_spec",
    "smoothed_defence",
]


def _art_device(context: BuildContext) -> str:
    return "gpu" if context.device.type == "cuda" else "cpu"


def smoothed_defence(
    context: BuildContext,
    name: str,
    kind: str,
    estimator: Any,
    model: Any,
    identity: dict,
    sigma: float,
    *,
    n: int,
    n0: int,
    points: int,
) -> SmoothedDefence:
    """Wrap a smoothing estimator with the run's PREDICT and CERTIFY settings."""
    settings = context.config["smoothing"]
    return SmoothedDefence(
        name,
        kind,
        estimator,
        model,
        identity,
        sigma=sigma,
        n0=n0,
        n=n,
        alpha=settings["alpha"],
        predict_n=settings["predict_n"],
        predict_alpha=settings["predict_alpha"],
        batch_size=settings["batch_size"],
        points=points,
    )


def build_randomized_smoothing(context: BuildContext) -> list[SmoothedDefence]:
    """One defence per (sigma, training method of ``smoothing.training``), sigma by sigma with the methods
    side by side: the base classifier trained at that sigma with that method (cached by its recipe and
    hyper-parameters), smoothed at that sigma. Gaussian augmentation's keep the name ``rs_sigma<s>``;
    another method's are ``rs_<method>_sigma<s>``."""
    from art_smoothing_plugin import RandomizedSmoothingClassifier

    settings = context.config["smoothing"]
    kind = DEFENCE_KINDS["randomized_smoothing"]
    defences = []
    for name, sigma, method in kind.instances(context.config):
        model, key = context.models.smoothing_classifier(method, sigma)
        estimator = RandomizedSmoothingClassifier(
            model,
            input_shape=context.dataset.input_shape,
            nb_classes=context.models.nb_classes,
            clip_values=(0.0, 1.0),
            device_type=_art_device(context),
            sample_size=context.config["attacks"]["noise_samples"],
            scale=sigma,
            alpha=settings["alpha"],
            n0=settings["n0"],
            batch_size=settings["batch_size"],
            seed=context.config["run"]["seed"],
        )
        defence = smoothed_defence(
            context,
            name,
            "randomized_smoothing",
            estimator,
            model,
            {"model": key},
            sigma,
            n=settings["n"],
            n0=settings["n0"],
            points=settings["points"],
        )
        defence.training = method
        defences.append(defence)
    return defences


def denoiser_spec(config: dict[str, Any], dataset: str, sigma: float, classifier_key: str) -> dict[str, Any]:
    """Everything that determines the denoiser of ``sigma``: its cache key is the hash of this (the dry
    run looks it up to tell a cached denoiser from one to train)."""
    settings = config["denoised"]
    return {
        "kind": "denoiser",
        "architecture": settings["denoiser"],
        "kwargs": settings["denoiser_kwargs"],
        "sigma": sigma,
        "objective": settings["objective"],
        "epochs": settings["denoiser_epochs"],
        "batch_size": config["model"]["batch_size"],
        "dataset": dataset,
        "seed": config["run"]["seed"],
        "init": "seeded",  # initial weights from the seed, not from torch's global generator
        # Stability objectives train through the classifier: its identity is part of the denoiser's.
        "classifier": classifier_key if settings["objective"] != "mse" else None,
    }


def _denoiser(context: BuildContext, sigma: float, classifier: Any, classifier_key: str):
    """The denoiser for ``sigma``, trained once and cached (None for the no-denoiser baseline)."""
    from art_smoothing_plugin.denoisers import (
        DENOISER_ARCHITECTURES,
        load_denoiser,
        save_denoiser,
        train_denoiser,
    )

    settings = context.config["denoised"]
    if settings["denoiser"] == "none":
        return None, "none"
    architecture = DENOISER_ARCHITECTURES[settings["denoiser"]]
    spec = denoiser_spec(context.config, context.dataset.name, sigma, classifier_key)

    def build():
        # Seeded: otherwise the weights would depend on whatever drew from torch's global generator before.
        kwargs = {"seed": spec["seed"], **settings["denoiser_kwargs"]}
        return architecture(channels=context.dataset.input_shape[0], **kwargs)

    def train(denoiser) -> dict:
        history = train_denoiser(
            denoiser,
            context.dataset.x_train,
            sigma,
            settings["objective"],
            classifier=classifier if settings["objective"] != "mse" else None,
            nb_epochs=settings["denoiser_epochs"],
            batch_size=context.config["model"]["batch_size"],
            seed=spec["seed"],
            progress=context.progress,
        )
        return {"history": getattr(history, "__dict__", {})}

    label = f"denoiser-{settings['denoiser']}-sigma{sigma:g}"
    return context.models.cached(label, spec, build, train, save=save_denoiser, load=load_denoiser)


def _denoised_estimator(
    context: BuildContext,
    classifier: Any,
    denoiser: Any,
    sigma: float,
    n0: int,
    denoiser_identity: dict | None = None,
):
    """Smoothing of ``classifier o denoiser`` at ``sigma`` with the run's alpha, m, seed and batch size.
    A submission's classifier in a worker gets a worker of its own that runs the denoiser too
    (:func:`~evaluations.models.in_worker_behind`; ``denoiser_identity`` keys its exported program in
    the model cache, which without it is exported afresh):
    the estimator then smooths that one composed model."""
    import torch

    from art_smoothing_plugin.estimators.denoised_smoothing import DenoisedSmoothingClassifier

    from ..models import in_worker_behind

    if denoiser is not None:
        example = torch.as_tensor(context.dataset.x_test[:2], dtype=torch.float32)
        composed = in_worker_behind(
            classifier, denoiser, example, cache_dir=context.models.cache_dir, identity=denoiser_identity
        )
        if composed is not None:
            classifier, denoiser = composed, None

    return DenoisedSmoothingClassifier(
        classifier,
        denoiser,
        input_shape=context.dataset.input_shape,
        nb_classes=context.models.nb_classes,
        scale=sigma,
        clip_values=(0.0, 1.0),
        alpha=context.config["smoothing"]["alpha"],
        sample_size=context.config["attacks"]["noise_samples"],
        n0=n0,
        seed=context.config["run"]["seed"],
        batch_size=context.config["smoothing"]["batch_size"],
        device_type=_art_device(context),
    )


def build_denoised_smoothing(context: BuildContext) -> list[SmoothedDefence]:
    settings = context.config["denoised"]
    classifier, classifier_key = context.models.classifier("clean")
    defences = []
    for sigma in settings["sigmas"]:
        denoiser, denoiser_key = _denoiser(context, sigma, classifier, classifier_key)
        estimator = _denoised_estimator(
            context, classifier, denoiser, sigma, settings["n0"], {"denoiser": denoiser_key}
        )
        defences.append(
            smoothed_defence(
                context,
                DEFENCE_KINDS["denoised_smoothing"].name_format.format(sigma=sigma, **settings),
                "denoised_smoothing",
                estimator,
                classifier,
                {"model": classifier_key, "denoiser": denoiser_key, "objective": settings["objective"]},
                sigma,
                n=settings["n"],
                n0=settings["n0"],
                points=settings["points"],
            )
        )
    return defences


def _ddpm(context: BuildContext):
    """The DDPM of the run's training split, trained once and cached (its file carries its config)."""
    from art_smoothing_plugin.denoisers.ddpm import train_ddpm

    settings = context.config["diffusion"]
    spec = {
        "schedule": DDPM_SCHEDULE,
        "num_timesteps": DDPM_TIMESTEPS,
        "base_channels": settings["ddpm_channels"],
        "channel_multipliers": tuple(settings["ddpm_multipliers"]),
        "max_train_timestep": settings["max_train_timestep"],
        "epochs": settings["ddpm_epochs"],
        "batch_size": 128,
        "learning_rate": 2e-3,
        "seed": context.config["run"]["seed"],
    }
    folder = context.models.cache_dir / "ddpm"
    cached = len(list(folder.glob("ddpm-*.pt"))) if folder.is_dir() else 0
    start = time.perf_counter()
    ddpm = train_ddpm(
        context.dataset.x_train, cache_dir=folder, device=context.device, progress=context.progress, **spec
    )
    seconds = time.perf_counter() - start
    trained = (len(list(folder.glob("ddpm-*.pt"))) if folder.is_dir() else 0) > cached
    key = hashlib.sha256(json.dumps(ddpm.config.to_json(), sort_keys=True).encode()).hexdigest()[:16]
    context.models.events.append(
        {
            "name": "ddpm",
            "status": "trained" if trained else "cached",
            "seconds": seconds if trained else 0.0,
            "path": str(folder),
            "key": key,
        }
    )
    return ddpm, key


def build_diffusion_smoothing(context: BuildContext) -> list[SmoothedDefence]:
    """Carlini et al.'s diffusion denoised smoothing: one DDPM trained on the run's training split serves
    every sigma (one-shot denoising from the timestep whose noise level matches sigma), in front of the
    clean classifier."""
    settings = context.config["diffusion"]
    classifier, classifier_key = context.models.classifier("clean")
    ddpm, ddpm_key = _ddpm(context)
    defences = []
    for sigma in settings["sigmas"]:
        try:
            steps = settings["denoising_steps"]
            denoiser = ddpm.denoiser(sigma, clip_values=(0.0, 1.0), denoising_steps=steps)
        except ValueError as error:
            raise ValueError(f"diffusion.sigmas: {error}") from error
        front = {"ddpm": ddpm_key, "sigma": sigma, "timestep": denoiser.timestep, "denoising_steps": steps}
        estimator = _denoised_estimator(context, classifier, denoiser, sigma, settings["n0"], front)
        defences.append(
            smoothed_defence(
                context,
                DEFENCE_KINDS["diffusion_smoothing"].name_format.format(sigma=sigma, **settings),
                "diffusion_smoothing",
                estimator,
                classifier,
                {
                    "model": classifier_key,
                    "ddpm": ddpm_key,
                    "timestep": denoiser.timestep,
                    "denoising_steps": settings["denoising_steps"],
                },
                sigma,
                n=settings["n"],
                n0=settings["n0"],
                points=settings["points"],
            )
        )
    return defences
