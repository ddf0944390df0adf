"""Attacks stage: every attack behind one interface, one file each, in one registry.

An :class:`Attack` has a ``name`` (what ``attacks.enabled`` lists), the ``norms`` it runs in (``"l2"``,
``"linf"``), ``applies_to(defence)`` and ``perturb(defence, x, y, norm=, eps=, seed=)`` returning
adversarial inputs in [0, 1] as NumPy. ``eps`` is in the data's [0, 1] units; the step size of every
PGD-style attack is ``relative_step * eps / steps``. Attacks on smoothed defences differentiate the smoothed
soft classifier over ``noise_samples`` (m) noise draws (``defence.differentiable``), so they attack ``g``,
not the base model. Whether an attack succeeded is decided elsewhere, by the defence's own ``predict``
(PREDICT with fresh noise for smoothed defences).

``perturb_detailed`` returns an :class:`AttackOutput`: the adversarial inputs and, for an attack made of
several (AutoAttack), its *parts* (single attacks' inputs on every point, for the gradient-masking
checklist) and each component's time. ``threat(defence)`` says how the attack reaches the defence: through
its own gradients (white-box), only its scores (black-box), or another model's gradients (transfer: plain
gradient attacks on feature squeezing differentiate the bare model).

To add an attack: write a file with a subclass of :class:`Attack` and add ``name -> "module:Class"`` to
:data:`evaluations.registry.ATTACKS` (or call :func:`evaluations.registry.register_attack`).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..registry import ATTACKS

if TYPE_CHECKING:  # pragma: no cover
    from ..defences import Defence

__all__ = ["Attack", "AttackOutput", "AttackSettings", "attack_class", "build_attacks", "per_example_eps"]


@dataclass(frozen=True)
class AttackSettings:
    """Shared settings of every attack (the ``attacks`` section of the config)."""

    steps: int = 10
    relative_step: float = 2.5
    noise_samples: int = 16
    eot_iter: int = 2
    detector_weight: float = 10.0

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> AttackSettings:
        section = config["attacks"]
        return cls(
            steps=section["steps"],
            relative_step=section["relative_step"],
            noise_samples=section["noise_samples"],
            eot_iter=section["eot_iter"],
            detector_weight=section["detector_weight"],
        )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AttackOutput:
    """What one attack call returns.

    :ivar adversarial: the attack's inputs (float32, in [0, 1], the shape of ``x``).
    :ivar parts: for an attack made of several: single attacks' inputs on every point, by part name
        (see :meth:`Attack.parts`).
    :ivar seconds: wall time of the call, or of each component where the attack has several.
    :ivar fooled: each component's own verdict per point, for diagnostics.
    """

    adversarial: np.ndarray
    parts: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    fooled: dict[str, np.ndarray] = field(default_factory=dict)


def per_example_eps(eps: float | np.ndarray, count: int) -> np.ndarray:
    """``eps`` as a float array of one entry per example (a scalar is broadcast)."""
    array = np.broadcast_to(np.asarray(eps, dtype=np.float64), (count,)).copy()
    if np.any(~np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    return array


class Attack:
    """Base class of every attack: the uniform interface the pipeline calls.

    :cvar name: registry name (``attacks.enabled``).
    :cvar norms: norms it runs in.
    :cvar per_example: whether ``eps`` may be an array of one budget per example (the certificate check
        needs that); others take a scalar.
    :cvar uses_differentiable: it attacks ``defence.differentiable(...)``, which for feature squeezing is
        the bare model (a transfer attack there).
    :cvar gradient: it follows gradients (white-box or transfer) rather than scores only.
    :cvar chunked: it may be cut into ``run.chunk_size`` chunks; otherwise one unit of work covers all its
        points (an attack whose cost is set per call, not per point, and whose result would change with
        the cut).
    """

    name = "attack"
    norms: tuple[str, ...] = ()
    per_example = False
    description = ""
    uses_differentiable = False
    gradient = True
    chunked = True

    def __init__(self, settings: AttackSettings) -> None:
        self.settings = settings

    def applies_to(self, defence: Defence) -> bool:
        return True

    def step_size(self, eps: float | np.ndarray) -> float | np.ndarray:
        return self.settings.relative_step * eps / self.settings.steps

    def identity(self, norm: str) -> dict[str, Any]:
        """Everything that determines this attack's output besides inputs, eps and seed (checkpoint key)."""
        return {"attack": self.name, "norm": norm, "class": type(self).__name__, **self.settings.as_dict()}

    def perturb(
        self, defence: Defence, x: np.ndarray, y: np.ndarray, *, norm: str, eps: float | np.ndarray, seed: int
    ) -> np.ndarray:
        """Adversarial versions of ``x`` (float32, in [0, 1], same shape) within ``eps`` in ``norm``."""
        raise NotImplementedError

    def perturb_detailed(
        self, defence: Defence, x: np.ndarray, y: np.ndarray, *, norm: str, eps: float | np.ndarray, seed: int
    ) -> AttackOutput:
        """:meth:`perturb`, timed (attacks made of several override it to return their parts too)."""
        start = time.perf_counter()
        adversarial = self.perturb(defence, x, y, norm=norm, eps=eps, seed=seed)
        return AttackOutput(adversarial, seconds={self.name: time.perf_counter() - start})

    def threat(self, defence: Defence) -> str:
        """``"white-box"``, or ``"transfer"`` when it differentiates a stand-in for the defence."""
        if self.uses_differentiable and not defence.differentiable_is_defence:
            return "transfer"
        return "white-box"

    def parts(self, defence: Defence) -> dict[str, dict[str, Any]]:
        """The parts :meth:`perturb_detailed` returns on ``defence``, each with its ``threat``, whether it
        follows gradients (``gradient``) and which part it repeats with more effort (``more_effort_of``)."""
        return {}

    def sweep_budgets(self, norm: str, dims: int) -> list[float]:
        """Budgets beyond the grid to run at, for the checklist's eps sweep (none by default)."""
        return []

    def max_points(self) -> int | None:
        """At most this many test points (of those attacked per defence); ``None``: all of them."""
        return None

    def check(self, norm: str, eps: float | np.ndarray) -> None:
        if norm not in self.norms:
            raise ValueError(f"attack {self.name!r} runs in norms {self.norms}, not {norm!r}")
        if not self.per_example and np.ndim(eps) != 0:
            raise ValueError(f"attack {self.name!r} takes one scalar eps, got an array")

    def batch_points(self, defence: Defence) -> int:
        """Points per attack batch: noisy copies per forward pass stay near 4,096."""
        return max(1, 4096 // self.settings.noise_samples) if defence.smoothed else 512


def attack_class(name: str) -> type[Attack]:
    """The class registered as ``name`` in :data:`~evaluations.registry.ATTACKS` (imported now)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; expected one of {', '.join(ATTACKS)}")
    module_name, class_name = ATTACKS[name].split(":")
    module = importlib.import_module(module_name, package=__name__)
    return getattr(module, class_name)


def build_attacks(config: dict[str, Any]) -> list[Attack]:
    """The enabled attacks, in the order of ``attacks.enabled``."""
    settings = AttackSettings.from_config(config)
    attacks = []
    for name in config["attacks"]["enabled"]:
        cls = attack_class(name)
        from_config = getattr(cls, "from_config", None)
        attacks.append(from_config(settings, config) if from_config else cls(settings))
    return attacks
