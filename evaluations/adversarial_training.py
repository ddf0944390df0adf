"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018) through ART's trainers.

Every batch is replaced by PGD adversarial examples against the current model (ratio 1, one random
start in the epsilon ball) before the gradient step: min over weights of the max over the ball of the
loss. L-inf uses ART's :class:`~art.defences.trainer.AdversarialTrainerMadryPGD`; L2 uses ART's
:class:`~art.defences.trainer.AdversarialTrainer` with an L2 :class:`ProjectedGradientDescent` (ART's Madry
trainer only does L-inf).

Units: ``eps`` and ``eps_step`` are in the data's own units, [0, 1] everywhere in this project. ART's
Madry trainer defaults (eps=8, eps_step=2) assume 0-255 pixels and would allow any perturbation of [0, 1]
data, so both are required arguments here, and an L-inf eps larger than the data range is refused.

A training recipe of the models stage (:mod:`evaluations.models` trains and caches the adversarially
trained classifiers that the ``adversarial_training_*`` defences wrap).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.trainer import AdversarialTrainer, AdversarialTrainerMadryPGD

from .reproducibility import seeded

__all__ = ["madry_adversarial_training"]


def _check_positive(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number in the data's units, got {value!r}") from None
    if not np.isfinite(number) or number <= 0:
        raise ValueError(f"{name} must be a positive number in the data's units, got {value!r}")
    return number


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def madry_adversarial_training(
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    norm: str | int | float = "inf",
    eps: float,
    eps_step: float,
    max_iter: int = 7,
    nb_epochs: int = 10,
    batch_size: int = 128,
    seed: int = 0,
    verbose: bool = False,
    num_random_init: int = 1,
    warmup_epochs: int = 0,
) -> Any:
    """Train ``classifier`` (an ART ``PyTorchClassifier`` with an optimizer, ``clip_values`` set) in place
    by Madry et al.'s PGD adversarial training, and return it.

    :param norm: ``"inf"`` / ``"linf"`` / ``np.inf`` or ``2`` / ``"l2"``.
    :param eps: the training perturbation budget, in the data's units ([0, 1] data: e.g. 0.3 for MNIST
        L-inf, as in Madry et al.); never ART's 0-255 default.
    :param eps_step: PGD step size in the same units; ``max_iter`` PGD steps per batch.
    :param seed: seeds ART's shuffling and PGD random starts (NumPy and torch global generators, restored
        afterwards), so the same arguments give the same model.
    :param verbose: ART shows its own epoch progress bar; ``verbose`` adds the PGD attack's bars.
    :param warmup_epochs: the first ``warmup_epochs`` epochs train at a linearly growing budget,
        ``eps * (k + 1) / (warmup_epochs + 1)`` in epoch ``k`` (step size scaled alike), then the rest at
        ``eps``. Training at the full budget from random weights can collapse to a constant prediction
        when data or epochs are few (a LeNet on 4,000 MNIST digits at L-inf 0.3 for 10 epochs does).
    """
    norm_name = {"inf": "inf", "linf": "inf", np.inf: "inf", 2: "l2", "2": "l2", "l2": "l2"}.get(norm)  # type: ignore[call-overload]
    if norm_name is None:
        raise ValueError(f"norm must be 'inf' (or 'linf', np.inf) or 2 (or 'l2'), got {norm!r}")
    eps = _check_positive("eps", eps)
    eps_step = _check_positive("eps_step", eps_step)
    max_iter = _check_count("max_iter", max_iter, 1)
    nb_epochs = _check_count("nb_epochs", nb_epochs, 1)
    batch_size = _check_count("batch_size", batch_size, 1)
    num_random_init = _check_count("num_random_init", num_random_init, 0)
    warmup_epochs = _check_count("warmup_epochs", warmup_epochs, 0)
    if warmup_epochs >= nb_epochs:
        raise ValueError(f"warmup_epochs must be below nb_epochs={nb_epochs}, got {warmup_epochs}")
    clip_values = getattr(classifier, "clip_values", None)
    if clip_values is None:
        raise ValueError("classifier must have clip_values set (e.g. (0, 1)) so PGD stays in the data range")
    data_range = float(np.max(clip_values[1]) - np.min(clip_values[0]))
    if norm_name == "inf" and eps > data_range:
        raise ValueError(
            f"eps={eps} exceeds the data range {data_range} (clip_values={tuple(clip_values)}): eps is in "
            "the data's own units (e.g. 0.3 for MNIST in [0, 1]), not ART's 0-255 default of 8"
        )
    if getattr(classifier, "optimizer", None) is None:
        raise ValueError("classifier must be an ART PyTorchClassifier with an optimizer to train")
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty with one label per input, got {len(x)} and {len(y)}")

    # (epochs, fraction of eps): one stage per warm-up epoch, then the remaining epochs at the full budget
    stages = [(1, (k + 1) / (warmup_epochs + 1)) for k in range(warmup_epochs)]
    stages.append((nb_epochs - warmup_epochs, 1.0))
    with seeded(int(seed)):
        for epochs, fraction in stages:
            _train_stage(
                classifier,
                x,
                y,
                norm_name,
                eps * fraction,
                eps_step * fraction,
                max_iter,
                epochs,
                batch_size,
                num_random_init,
                verbose,
            )
    classifier.model.eval()
    return classifier


def _train_stage(
    classifier: Any,
    x: np.ndarray,
    y: np.ndarray,
    norm_name: str,
    eps: float,
    eps_step: float,
    max_iter: int,
    nb_epochs: int,
    batch_size: int,
    num_random_init: int,
    verbose: bool,
) -> None:
    """``nb_epochs`` of PGD adversarial training at one budget (the optimizer state carries over)."""
    if norm_name == "inf":
        trainer = AdversarialTrainerMadryPGD(
            classifier,
            nb_epochs=nb_epochs,
            batch_size=batch_size,
            eps=eps,
            eps_step=eps_step,
            max_iter=max_iter,
            num_random_init=num_random_init,
        )
        trainer.attack.set_params(batch_size=batch_size, verbose=bool(verbose))
        trainer.fit(x, y, nb_epochs=nb_epochs, batch_size=batch_size)
        return
    attack = ProjectedGradientDescent(
        classifier,
        norm=2,
        eps=eps,
        eps_step=eps_step,
        max_iter=max_iter,
        num_random_init=num_random_init,
        batch_size=batch_size,
        verbose=bool(verbose),
    )
    AdversarialTrainer(classifier, attack, ratio=1.0).fit(x, y, nb_epochs=nb_epochs, batch_size=batch_size)
