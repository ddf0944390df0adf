"""The names a configuration may use for defences and attacks, and where each one's implementation lives.

The registries sit below the configuration so that it can validate ``defences.enabled`` and
``attacks.enabled`` without importing the stages that implement them. An entry names its implementation
as a ``"module:attribute"`` string; the stage that builds it (:func:`evaluations.defences.build_defences`,
:func:`evaluations.attacks.build_attacks`) imports it when a run first asks for it, so a kind whose
dependencies are missing costs nothing until it is named, and is then refused before any work starts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .defences import BuildContext, Defence

__all__ = ["ATTACKS", "DEFENCE_KINDS", "DefenceKind", "register_attack", "register_defence"]


@dataclass(frozen=True)
class DefenceKind:
    """A registered kind of defence.

    :ivar builder: a function, or ``"module:function"`` (a relative module name is relative to
        :mod:`evaluations.defences`), taking a :class:`~evaluations.defences.BuildContext` and returning a
        list of :class:`~evaluations.defences.Defence`.
    :ivar requires: a module outside the harness that must import for this kind to be available.
    :ivar trains_classifier: whether it trains its own classifier (then it cannot take a user's model).
    :ivar section: smoothed kinds: the config section holding ``sigmas``, ``points``, ``n``, ``n0``.
    :ivar name_format: the instance name, formatted with ``sigma`` (and the config section's keys).
    :ivar variants: the key of its section that lists variants built at every sigma (randomized
        smoothing: ``training``, the training methods); the instances of :attr:`default_variant` keep
        :attr:`name_format`, the others are named by :attr:`variant_format` (with ``variant``).
    """

    name: str
    builder: str | Callable[[BuildContext], list[Defence]]
    description: str
    smoothed: bool = False
    trains_classifier: bool = False
    requires: str = ""
    section: str = ""
    name_format: str = ""
    variants: str = ""
    default_variant: str = ""
    variant_format: str = ""
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def available(self) -> bool:
        """Whether :attr:`requires` imports here (checked once)."""
        if not self.requires:
            return True
        if "ok" not in self._cache:
            try:
                importlib.import_module(self.requires)
                self._cache["ok"] = True
            except Exception:  # any import failure means "not available here"
                self._cache["ok"] = False
        return self._cache["ok"]

    def instance_name(self, config: dict[str, Any], sigma: float, variant: str = "") -> str:
        """The name of this smoothed kind's defence at ``sigma`` (and ``variant``, e.g. a training method:
        the default variant's keep the plain name)."""
        section = config[self.section]
        if not variant or variant == self.default_variant:
            return self.name_format.format(sigma=sigma, **section)
        return self.variant_format.format(sigma=sigma, variant=variant, **section)

    def instances(self, config: dict[str, Any]) -> list[tuple[str, float | None, str]]:
        """``(name, sigma, variant)`` of the defences this kind builds under ``config``, in the order it
        builds them: sigma by sigma, every variant at a sigma side by side (``variant`` is "" for kinds
        without variants)."""
        if not self.smoothed:
            return [(self.name_format or self.name, None, "")]
        section = config[self.section]
        variants = section[self.variants] if self.variants else [""]
        return [(self.instance_name(config, s, v), s, v) for s in section["sigmas"] for v in variants]

    def instance_names(self, config: dict[str, Any]) -> list[tuple[str, float | None]]:
        """``(name, sigma)`` of the defences this kind builds under ``config`` (without building them)."""
        return [(name, sigma) for name, sigma, _ in self.instances(config)]


#: Every registered defence kind, by name (the names ``defences.enabled`` accepts).
DEFENCE_KINDS: dict[str, DefenceKind] = {}


def register_defence(kind: DefenceKind) -> DefenceKind:
    """Add a defence kind to the registry (a new name, or replace one of the same name). The builder is
    a callable or a ``"module:function"`` string imported when first used."""
    if not callable(kind.builder) and ":" not in kind.builder:
        raise ValueError(f"builder must be 'module:function', got {kind.builder!r}")
    DEFENCE_KINDS[kind.name] = kind
    return kind


for _kind in (
    DefenceKind("undefended", ".undefended:build_undefended", "the clean-trained classifier"),
    DefenceKind(
        "randomized_smoothing",
        ".smoothing:build_randomized_smoothing",
        "Cohen et al. randomized smoothing of a classifier trained for it (Gaussian augmentation, or the "
        "methods of smoothing.training), one per (method, sigma)",
        smoothed=True,
        section="smoothing",
        name_format="rs_sigma{sigma:g}",
        variants="training",
        default_variant="gaussian",
        variant_format="rs_{variant}_sigma{sigma:g}",
    ),
    DefenceKind(
        "denoised_smoothing",
        ".smoothing:build_denoised_smoothing",
        "Salman et al. denoised smoothing of the clean classifier with a trained denoiser, one per sigma",
        smoothed=True,
        requires="art_smoothing_plugin.estimators.denoised_smoothing",
        section="denoised",
        name_format="denoised_{denoiser}_sigma{sigma:g}",
    ),
    DefenceKind(
        "diffusion_smoothing",
        ".smoothing:build_diffusion_smoothing",
        "Carlini et al. diffusion denoised smoothing: one DDPM, one-shot denoising, the clean classifier",
        smoothed=True,
        requires="art_smoothing_plugin.denoisers.ddpm",
        section="diffusion",
        name_format="diffusion_sigma{sigma:g}",
    ),
    DefenceKind(
        "adversarial_training_linf",
        ".undefended:build_adversarial_training_linf",
        "Madry et al. PGD adversarial training, L-inf",
        trains_classifier=True,
        requires="art.defences.trainer",
    ),
    DefenceKind(
        "adversarial_training_l2",
        ".undefended:build_adversarial_training_l2",
        "Madry et al. PGD adversarial training, L2",
        trains_classifier=True,
        requires="art.defences.trainer",
    ),
    DefenceKind(
        "feature_squeezing",
        ".squeezed:build_feature_squeezing",
        "Xu et al. feature squeezing: input transformation and detector",
        requires="art.defences.detector.evasion",
    ),
):
    register_defence(_kind)


#: Every registered attack: name (what ``attacks.enabled`` accepts) -> ``"module:Class"``, a relative module
#: name being relative to :mod:`evaluations.attacks`; imported when first used.
ATTACKS: dict[str, str] = {
    "pgd": ".torchattacks_pgd:TorchattacksPGD",
    "pgdl2": ".torchattacks_pgd:TorchattacksPGDL2",
    "eotpgd": ".torchattacks_pgd:TorchattacksEOTPGD",
    "art_pgd": ".art_pgd:ArtProjectedGradientDescent",
    "smoothadv": ".smoothadv:SmoothAdv",
    "bpda": ".squeezing:BPDAAttack",
    "detector_evading": ".squeezing:DetectorEvadingAttack",
    "autoattack": ".autoattack:AutoAttack",
}


def register_attack(name: str, target: str) -> None:
    """Register an attack class given as ``"package.module:Class"`` (or relative ``".module:Class"``)."""
    if ":" not in target:
        raise ValueError(f"target must be 'module:Class', got {target!r}")
    ATTACKS[name] = target
