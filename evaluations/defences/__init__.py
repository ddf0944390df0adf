"""Defences stage: every defence the harness evaluates, each wrapping an ART estimator, behind one registry.

A *defence kind* (``undefended``, ``randomized_smoothing``, ...) is registered once in
:mod:`evaluations.registry` with a builder that turns the run's configuration into one or more
:class:`Defence` instances (randomized smoothing gives one per sigma). Adding a defence means writing a
builder and calling :func:`~evaluations.registry.register_defence`; the pipeline, attacks, metrics and
report then handle it like every other. Builders are named as ``module:function`` strings and imported
here, only when a run asks for them.

Every :class:`Defence` answers the same questions: ``predict`` (labels, ``-1`` where a smoothed classifier
abstains), ``detect`` (detector defences only), ``differentiable`` (the torch module gradient attacks
differentiate) and, for smoothed defences, ``certify``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..data import Dataset
from ..models import ModelStore, batched_argmax
from ..registry import DEFENCE_KINDS, DefenceKind

if TYPE_CHECKING:  # pragma: no cover
    from art_smoothing_plugin.smoothing import CertificationResult

__all__ = [
    "BuildContext",
    "Defence",
    "PlainDefence",
    "SmoothedDefence",
    "attack_points",
    "build_defences",
]


@dataclass
class BuildContext:
    """What a builder may use: the data, the validated config, the model store (training and cache)."""

    dataset: Dataset
    config: dict[str, Any]
    models: ModelStore
    device: torch.device
    progress: bool = True
    log: Callable[[str], None] = print


class Defence:
    """One evaluated defence: an ART estimator plus the uniform interface the pipeline needs.

    :ivar name: unique name in a run, used in tables, plots and file names (e.g. ``rs_sigma0.25``).
    :ivar kind: the registry name of its kind.
    :ivar estimator: the ART estimator (classifier) this defence is.
    :ivar model: the underlying torch classifier (logits on [0, 1] inputs).
    :ivar identity: JSON-able description of everything that determines its outputs (model hash,
        parameters); checkpoints of its results are keyed by it.
    """

    smoothed = False
    randomized = False
    has_detector = False
    #: ``differentiable`` is the defence itself (False: a stand-in, so gradient attacks on it transfer).
    differentiable_is_defence = True

    def __init__(self, name: str, kind: str, estimator: Any, model: torch.nn.Module, identity: dict) -> None:
        self.name = name
        self.kind = kind
        self.estimator = estimator
        self.model = model
        self.identity = {"name": name, "kind": kind, **identity}
        self.sigma: float | None = None
        #: randomized smoothing: the training method of the base classifier (a name of
        #: :mod:`art_smoothing_plugin.training`); None for other kinds. Not part of ``identity``: the
        #: model's key already says it.
        self.training: str | None = None

    def predict(self, x: np.ndarray, *, seed: int) -> np.ndarray:
        """Predicted labels of ``x`` (``-1`` where the defence abstains)."""
        raise NotImplementedError

    def detect(self, x: np.ndarray) -> np.ndarray | None:
        """Boolean "flagged as adversarial" per input, or ``None`` for defences without a detector."""
        return None

    def differentiable(
        self, *, noise_samples: int, noise_seed: int, fixed_noise: bool = True
    ) -> torch.nn.Module:
        """The module gradient attacks differentiate: logits (or log-probabilities) on [0, 1] inputs.

        For randomized defences, ``fixed_noise`` draws the same ``noise_samples`` noise on every call
        (a deterministic objective, SmoothAdv); otherwise every call draws fresh noise from a generator
        seeded with ``noise_seed`` (EOT), so the attack is reproducible either way."""
        raise NotImplementedError

    def reseed(self, seed: int) -> None:
        """Restart the estimator's own noise stream (used by estimator methods that take no seed, such
        as ``loss_gradient`` inside ART's attacks), so a unit of work is reproducible on its own."""

    def certify(self, x: np.ndarray, *, seed: int) -> CertificationResult:
        raise TypeError(f"defence {self.name!r} ({self.kind}) does not certify")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class PlainDefence(Defence):
    """A deterministic classifier (undefended, or adversarially trained): labels are logits' argmax."""

    def __init__(
        self,
        name: str,
        kind: str,
        estimator: Any,
        model: torch.nn.Module,
        identity: dict,
        device: torch.device,
    ) -> None:
        super().__init__(name, kind, estimator, model, identity)
        self.device = device

    def predict(self, x: np.ndarray, *, seed: int) -> np.ndarray:
        return batched_argmax(self.model, x, self.device)

    def differentiable(
        self, *, noise_samples: int, noise_seed: int, fixed_noise: bool = True
    ) -> torch.nn.Module:
        return self.model.eval()


class SmoothedDefence(Defence):
    """A smoothed classifier: any estimator with ``predict_labels``, ``certify_detailed`` and
    ``smoothed_module`` (RandomizedSmoothingClassifier, DenoisedSmoothingClassifier, ...).

    ``predict`` is Cohen's PREDICT with fresh noise (``predict_n`` samples at level ``predict_alpha``);
    ``certify`` is CERTIFY with ``n0``/``n`` samples at level ``alpha``; ``differentiable`` is the smoothed
    soft classifier over ``noise_samples`` draws, fixed by ``noise_seed`` when given (SmoothAdv) and fresh
    on every call otherwise (EOT).
    """

    smoothed = True
    randomized = True

    def __init__(
        self,
        name: str,
        kind: str,
        estimator: Any,
        model: torch.nn.Module,
        identity: dict,
        *,
        sigma: float,
        n0: int,
        n: int,
        alpha: float,
        predict_n: int,
        predict_alpha: float,
        batch_size: int,
        points: int,
    ) -> None:
        identity = {
            **identity,
            "sigma": sigma,
            "n0": n0,
            "n": n,
            "alpha": alpha,
            "predict_n": predict_n,
            "predict_alpha": predict_alpha,
        }
        super().__init__(name, kind, estimator, model, identity)
        self.sigma = float(sigma)
        self.n0, self.n, self.alpha = int(n0), int(n), float(alpha)
        self.predict_n, self.predict_alpha = int(predict_n), float(predict_alpha)
        self.batch_size = int(batch_size)
        self.points = int(points)

    def predict(self, x: np.ndarray, *, seed: int) -> np.ndarray:
        return self.estimator.predict_labels(
            x, n=self.predict_n, alpha=self.predict_alpha, batch_size=self.batch_size, seed=seed
        )

    def certify(self, x: np.ndarray, *, seed: int) -> CertificationResult:
        return self.estimator.certify_detailed(
            x, self.n, self.batch_size, n0=self.n0, alpha=self.alpha, seed=seed
        )

    def differentiable(
        self, *, noise_samples: int, noise_seed: int, fixed_noise: bool = True
    ) -> torch.nn.Module:
        # eval(): a module left in training mode is put back into training mode by torchattacks after
        # an attack, which would switch the base model's batch norm to batch statistics (and update its
        # running statistics) in later calls.
        if fixed_noise:
            return self.estimator.smoothed_module(num_samples=noise_samples, noise_seed=noise_seed).eval()
        from art_smoothing_plugin import SmoothedSoftClassifier
        from art_smoothing_plugin.sampling import make_generator

        base = self.estimator.base_module()
        device = next(base.parameters()).device
        return SmoothedSoftClassifier(
            base, self.sigma, noise_samples, generator=make_generator(noise_seed, device)
        ).eval()

    def reseed(self, seed: int) -> None:
        self.estimator.seed = seed


def attack_points(config: dict[str, Any], kind: str) -> int:
    """Test points attacked for a defence of ``kind``: a smoothed kind with its own section (denoised,
    diffusion) sets its own ``attack_points``, since attacking through a denoiser costs far more."""
    section = config.get(DEFENCE_KINDS[kind].section or "", {}) if kind in DEFENCE_KINDS else {}
    if "attack_points" in section:
        return section["attack_points"]
    return config["attacks"]["points"]


def _builder(kind: DefenceKind) -> Callable[[BuildContext], list[Defence]]:
    """The builder function of ``kind`` (its ``"module:function"`` imported now)."""
    if callable(kind.builder):
        return kind.builder
    module_name, function = kind.builder.split(":")
    return getattr(importlib.import_module(module_name, package=__name__), function)


def build_defences(context: BuildContext) -> list[Defence]:
    """Build every enabled defence, in the order of ``defences.enabled``."""
    defences: list[Defence] = []
    for name in context.config["defences"]["enabled"]:
        defences.extend(_builder(DEFENCE_KINDS[name])(context))
    names = [d.name for d in defences]
    if len(set(names)) != len(names):
        raise ValueError(f"defence names must be unique within a run, got {names}")
    return defences
