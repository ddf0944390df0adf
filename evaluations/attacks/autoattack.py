"""AutoAttack (Croce & Hein, ICML 2020) built from torchattacks' components at the reference settings.

Two versions, as in the reference implementation:

* ``standard``, for deterministic defences: APGD-CE (1 restart), APGD-T (the 9 most likely wrong classes as
  targets, 1 restart each), FAB-T (likewise) and Square (5,000 queries, 1 restart, the reference's
  un-rescaled schedule), every gradient attack at 100 steps. A point counts as broken as soon as one of
  them changes the model's answer, and the next attack runs only on the points still standing
  (APGD-CE, then APGD-T, then FAB-T), except Square, which runs on every correctly classified point: the
  checklist (:mod:`evaluations.checklist`) compares it with the gradient attacks on the same points, and
  since Square's cost is set by its 5,000 queries, not by the number of points, this costs little.
* ``rand``, for randomized defences: APGD-CE, then APGD-DLR on the points still standing, each averaging
  the gradient over 20 forward passes (EOT), every forward pass drawing fresh noise (one draw per input;
  the 20 passes of a step run as one batch, :mod:`evaluations.attacks.eot`).
  On a smoothed classifier one noisy forward pass that misclassifies is no success (the judge is PREDICT
  with fresh noise), so each APGD run returns every point's highest-loss iterate (torchattacks'
  ``best_loss`` mode), and between several candidates for a point the one kept is the one to which the
  smoothed soft classifier, on ``noise_samples`` draws independent of the attack's and of PREDICT's,
  gives the true class the lowest probability.

Why not ``torchattacks.AutoAttack``: it runs its components at torchattacks' default of 10 steps where the
reference uses 100, seeds them from the clock unless given a seed, and every component calls
``torch.manual_seed``, resetting the global generator the rest of the program draws from. Here each
component is seeded from the unit of work's seed and runs inside
:func:`~evaluations.reproducibility.seeded`, which restores torch's CPU and CUDA generators, NumPy's and
Python's afterwards.

Besides the ensemble's adversarial inputs, :meth:`AutoAttack.perturb_detailed` returns *parts*: the inputs
of single attacks on every point (``apgd-ce``, ``square``, the gradient attacks together, APGD-CE with more
restarts), for the gradient-masking checklist, and each component's time.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torchattacks
from torch import nn

from ..config import eps_limit
from ..reproducibility import seeded
from . import Attack, AttackOutput, AttackSettings
from .bpda import frozen_parameters
from .eot import BatchedEOT

if TYPE_CHECKING:  # pragma: no cover
    from ..defences import Defence

__all__ = [
    "NORMS",
    "SQUEEZER_GRADIENTS",
    "VERSIONS",
    "AutoAttack",
    "AutoAttackSettings",
    "cpu_threads",
    "probe_seconds",
    "rand_autoattack",
    "standard_autoattack",
]

#: AutoAttack versions: ``auto`` picks ``standard`` for deterministic and ``rand`` for randomized defences.
VERSIONS = ("auto", "standard", "rand")
#: Norms, in the harness's names, and torchattacks' names for them.
NORMS = {"linf": "Linf", "l2": "L2"}
#: How the gradient attacks differentiate feature squeezing's squeezer: ``bpda`` (the exact squeezer
#: forward, its differentiable approximation backward) or ``none`` (the squeezer as written: rounding has
#: zero gradient, a deliberately masked attack, for showing what the checklist flags).
SQUEEZER_GRADIENTS = ("bpda", "none")

#: Names of the parts (single attacks on every point) the checklist and the report use.
PART_APGD_CE = "apgd-ce"
PART_SQUARE = "square"
PART_GRADIENT = "gradient"
PART_RESTARTS = "apgd-ce-restarts"


def _choice(name: str, value: Any, choices: tuple[str, ...] | dict[str, str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


@dataclass(frozen=True)
class AutoAttackSettings:
    """Settings of AutoAttack (the ``autoattack`` section of the config); the defaults are the reference's.

    :ivar version: ``auto``, ``standard`` or ``rand`` (:data:`VERSIONS`).
    :ivar steps: iterations of APGD-CE, APGD-T, APGD-DLR and FAB-T (reference: 100).
    :ivar square_queries: queries of Square (reference: 5,000).
    :ivar eot_iter: gradient samples per step of the ``rand`` version (reference: 20).
    :ivar extra_restarts: further APGD-CE restarts run for the checklist's "more restarts" check (0: none).
    :ivar squeezer_gradient: :data:`SQUEEZER_GRADIENTS`.
    :ivar norms: the norms it runs in (of :data:`NORMS`).
    :ivar points: at most this many of the points attacked per defence (0: all of them).
    :ivar sweep: also run at the budget where every input is reachable (the checklist's eps sweep).
    :ivar threads: torch CPU threads while it runs (0: as set for the run). Its thousands of small
        iterations ran 4-5 times faster on one thread than on two for the small CNN on 2 shared cores.
    """

    version: str = "auto"
    steps: int = 100
    square_queries: int = 5000
    eot_iter: int = 20
    extra_restarts: int = 1
    squeezer_gradient: str = "bpda"
    norms: tuple[str, ...] = ("linf", "l2")
    points: int = 0
    sweep: bool = True
    threads: int = 1

    def __post_init__(self) -> None:
        _choice("autoattack.version", self.version, VERSIONS)
        _choice("autoattack.squeezer_gradient", self.squeezer_gradient, SQUEEZER_GRADIENTS)
        object.__setattr__(self, "norms", tuple(self.norms))
        if not self.norms:
            raise ValueError(f"autoattack.norms must name at least one of {', '.join(map(repr, NORMS))}")
        for norm in self.norms:
            _choice("autoattack.norms", norm, NORMS)
        for name in ("points", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"autoattack.{name} must be an integer >= 0; got {value!r}")
        for name in ("steps", "square_queries", "eot_iter"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"autoattack.{name} must be an integer >= 1; got {value!r}")
        if isinstance(self.extra_restarts, bool) or not isinstance(self.extra_restarts, int):
            raise ValueError(
                f"autoattack.extra_restarts must be an integer >= 0; got {self.extra_restarts!r}"
            )
        if self.extra_restarts < 0:
            raise ValueError(
                f"autoattack.extra_restarts must be an integer >= 0; got {self.extra_restarts!r}"
            )

    @classmethod
    def from_section(cls, section: dict[str, Any]) -> AutoAttackSettings:
        return cls(**{k: section[k] for k in cls.__dataclass_fields__ if k in section})

    def as_dict(self) -> dict[str, Any]:
        """The settings that determine the attack's output (the checkpoint key); ``points`` and ``sweep``
        choose what runs and ``threads`` how fast, not what it computes."""
        return {k: v for k, v in asdict(self).items() if k not in ("points", "sweep", "threads")}


def component_seed(seed: int, name: str) -> int:
    """The seed of one component in a unit of work (independent streams per component)."""
    entropy = [int(seed) % (2**63), *name.encode()]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0]) % (2**31 - 1)


def _project(x: torch.Tensor, candidate: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """``candidate`` made valid: non-finite entries replaced by ``x``'s, projected onto the ``eps`` ball
    around ``x`` and into [0, 1] (a component that returns garbage, e.g. FAB on zero gradients, can then
    only fail, never succeed by leaving the threat model)."""
    candidate = torch.where(torch.isfinite(candidate), candidate, x)
    delta = candidate - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        shape = (-1,) + (1,) * (x.dim() - 1)
        length = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * torch.clamp(eps / length, max=1.0).view(shape)
    return (x + delta).clamp(0.0, 1.0)


@contextlib.contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (0: unchanged) for the block, then restored."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy copy (``.numpy()`` of a CPU tensor shares its memory, which later writes would change)."""
    return tensor.detach().cpu().numpy().copy()


def _labels(module: nn.Module, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([module(x[i : i + batch]).argmax(dim=1) for i in range(0, len(x), batch)])


def _run_on(
    attack: torchattacks.attack.Attack,
    x: torch.Tensor,
    y: torch.Tensor,
    chosen: torch.Tensor,
    seed: int,
    call: Callable[[torchattacks.attack.Attack, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``attack`` on the points ``chosen`` (a boolean mask), the others returned unchanged; seeded by
    ``seed`` and isolated from every global generator."""
    out = x.clone()
    index = torch.nonzero(chosen).flatten()
    if len(index) == 0:
        return out
    attack.seed = seed  # the components reseed torch's generator with it
    with seeded(seed):
        result = call(attack, x[index], y[index]) if call else attack(x[index], y[index])
    out[index] = result.detach().to(out.dtype)
    return out


def standard_autoattack(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    nb_classes: int,
    seed: int,
    settings: AutoAttackSettings = AutoAttackSettings(),
) -> AttackOutput:
    """The standard version on a deterministic ``module`` (logits on [0, 1] inputs): see the module
    docstring. Success is judged by ``module``'s own answer."""
    _choice("norm", norm, NORMS)
    name, timer = NORMS[norm], _Timer()
    correct = _labels(module, x) == y
    common = {"norm": name, "eps": eps, "verbose": False}
    components = {
        "apgd-ce": torchattacks.APGD(module, steps=settings.steps, n_restarts=1, loss="ce", **common),
        "apgd-t": torchattacks.APGDT(
            module, steps=settings.steps, n_restarts=1, n_classes=nb_classes, **common
        ),
        "fab-t": torchattacks.FAB(
            module, steps=settings.steps, n_restarts=1, multi_targeted=True, n_classes=nb_classes, **common
        ),
        "square": torchattacks.Square(
            module, n_queries=settings.square_queries, n_restarts=1, p_init=0.8, resc_schedule=False, **common
        ),
    }
    adversarial = x.clone()
    standing = correct.clone()
    fooled: dict[str, np.ndarray] = {}
    parts: dict[str, np.ndarray] = {}
    for component in ("apgd-ce", "apgd-t", "fab-t"):
        with timer(component):
            candidate = _run_on(components[component], x, y, standing, component_seed(seed, component))
            candidate = _project(x, candidate, norm, eps)
            broken = standing & (_labels(module, candidate) != y)
        adversarial[broken] = candidate[broken]
        standing &= ~broken
        fooled[component] = _array(broken)
        if component == "apgd-ce":
            parts[PART_APGD_CE] = _array(candidate)
    parts[PART_GRADIENT] = _array(adversarial)
    with timer("square"):
        square = _project(
            x, _run_on(components["square"], x, y, correct, component_seed(seed, "square")), norm, eps
        )
        square_broken = correct & (_labels(module, square) != y)
    fooled["square"] = _array(square_broken)
    parts[PART_SQUARE] = _array(square)
    adversarial[standing & square_broken] = square[standing & square_broken]
    if settings.extra_restarts:
        with timer(PART_RESTARTS):
            more = torchattacks.APGD(
                module, steps=settings.steps, n_restarts=settings.extra_restarts, loss="ce", **common
            )
            ce_standing = correct & ~torch.as_tensor(fooled["apgd-ce"], device=x.device)
            candidate = _project(
                x, _run_on(more, x, y, ce_standing, component_seed(seed, PART_RESTARTS)), norm, eps
            )
            broken = ce_standing & (_labels(module, candidate) != y)
        union = torch.as_tensor(parts[PART_APGD_CE], device=x.device).clone()
        union[broken] = candidate[broken]
        parts[PART_RESTARTS] = _array(union)
        fooled[PART_RESTARTS] = _array(broken)
    return AttackOutput(_array(adversarial), parts, timer.seconds, fooled)


def _best_loss(attack: torchattacks.attack.Attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """APGD's ``best_loss`` mode: every point's highest-loss iterate, whatever any noisy forward said."""
    return attack.perturb(x, y, best_loss=True)[1]


def rand_autoattack(
    module: nn.Module,
    score: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    eps: float,
    seed: int,
    settings: AutoAttackSettings = AutoAttackSettings(),
) -> AttackOutput:
    """The rand version: ``module`` is attacked (for a smoothed classifier: one fresh noise draw per input
    on every forward pass), ``score`` chooses between candidates (log-probabilities whose noise is
    independent of the attack's and of the final judge's)."""
    _choice("norm", norm, NORMS)
    name, timer = NORMS[norm], _Timer()
    every = torch.ones(len(x), dtype=torch.bool, device=x.device)

    # The EOT loop's draws of a step in one batched pass (identical sums, 20x fewer model calls).
    batched = BatchedEOT(module, settings.eot_iter)

    def apgd(loss: str, restarts: int = 1) -> torchattacks.APGD:
        return torchattacks.APGD(
            batched,
            norm=name,
            eps=eps,
            steps=settings.steps,
            n_restarts=restarts,
            loss=loss,
            eot_iter=settings.eot_iter,
            verbose=False,
        )

    def true_probability(candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            log_probs = torch.cat([score(candidate[i : i + 1024]) for i in range(0, len(candidate), 1024)])
        return log_probs.gather(1, y.view(-1, 1)).flatten(), log_probs.argmax(dim=1) != y

    def keep_lower(first: torch.Tensor, second: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        p_first, _ = true_probability(first)
        p_second, _ = true_probability(second)
        return torch.where((chosen & (p_second < p_first)).view(-1, *[1] * (x.dim() - 1)), second, first)

    with timer("apgd-ce"):
        ce = _project(
            x, _run_on(apgd("ce"), x, y, every, component_seed(seed, "apgd-ce"), _best_loss), norm, eps
        )
        _, ce_broken = true_probability(ce)
    with timer("apgd-dlr"):
        standing = ~ce_broken
        dlr = _project(
            x, _run_on(apgd("dlr"), x, y, standing, component_seed(seed, "apgd-dlr"), _best_loss), norm, eps
        )
        adversarial = keep_lower(ce, dlr, standing)
        _, dlr_broken = true_probability(dlr)
    fooled = {"apgd-ce": _array(ce_broken), "apgd-dlr": _array(standing & dlr_broken)}
    parts = {PART_APGD_CE: _array(ce)}
    if settings.extra_restarts:
        with timer(PART_RESTARTS):
            more = _project(
                x,
                _run_on(
                    apgd("ce", settings.extra_restarts),
                    x,
                    y,
                    every,
                    component_seed(seed, PART_RESTARTS),
                    _best_loss,
                ),
                norm,
                eps,
            )
            union = keep_lower(ce, more, every)
        parts[PART_RESTARTS] = _array(union)
        fooled[PART_RESTARTS] = _array(true_probability(union)[1])
    return AttackOutput(_array(adversarial), parts, timer.seconds, fooled)


class _Squeezed(nn.Module):
    """``model(squeeze(x))`` with the squeezer's forward pass exact and its backward pass BPDA's
    (``gradient="bpda"``) or none at all (``"none"``: what autograd gives through rounding, zero)."""

    def __init__(self, model: nn.Module, squeeze: Any, gradient: str) -> None:
        super().__init__()
        self.model = model
        self.squeeze = squeeze
        self.gradient = gradient

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gradient == "bpda":
            squeezed = self.squeeze.bpda(x)
        else:
            squeezed = x * 0.0 + self.squeeze(x.detach()).to(dtype=x.dtype)
        return self.model(squeezed)


class AutoAttack(Attack):
    """The harness's ``autoattack`` kind: the standard version on deterministic defences (feature squeezing
    through its squeezer with BPDA, Square on its whole pipeline), the rand version on randomized ones,
    both judged afterwards by the defence's own ``predict`` like every attack. One unit of work covers all
    its points: its cost is set per call (thousands of iterations), not per point."""

    name = "autoattack"
    norms = ("linf", "l2")
    description = "AutoAttack (Croce & Hein 2020): standard (APGD-CE, APGD-T, FAB-T, Square) or rand"
    gradient = False  # Square is one of its components
    chunked = False

    def __init__(self, settings: AttackSettings, autoattack: AutoAttackSettings | None = None) -> None:
        super().__init__(settings)
        self.autoattack = autoattack or AutoAttackSettings()
        self.norms = self.autoattack.norms

    @classmethod
    def from_config(cls, settings: AttackSettings, config: dict[str, Any]) -> AutoAttack:
        return cls(settings, AutoAttackSettings.from_section(config.get("autoattack", {})))

    def identity(self, norm: str) -> dict[str, Any]:
        return {**super().identity(norm), "autoattack": self.autoattack.as_dict()}

    def max_points(self) -> int | None:
        return self.autoattack.points or None

    def sweep_budgets(self, norm: str, dims: int) -> list[float]:
        """The budget where every input in [0, 1] is reachable (L-inf 1, L2 sqrt(d)), if sweeping."""
        return [eps_limit(norm, dims)] if self.autoattack.sweep else []

    def version_for(self, defence: Defence) -> str:
        if self.autoattack.version != "auto":
            return self.autoattack.version
        return "rand" if defence.randomized else "standard"

    def parts(self, defence: Defence) -> dict[str, dict[str, Any]]:
        white = {"threat": "white-box", "gradient": True, "more_effort_of": None}
        if self.version_for(defence) == "rand":
            found = {PART_APGD_CE: white}
        else:
            found = {
                PART_APGD_CE: white,
                PART_GRADIENT: white,
                PART_SQUARE: {"threat": "black-box", "gradient": False, "more_effort_of": None},
            }
        if self.autoattack.extra_restarts:
            found[PART_RESTARTS] = {**white, "more_effort_of": PART_APGD_CE}
        return found

    def perturb(
        self, defence: Defence, x: np.ndarray, y: np.ndarray, *, norm: str, eps: float | np.ndarray, seed: int
    ) -> np.ndarray:
        return self.perturb_detailed(defence, x, y, norm=norm, eps=eps, seed=seed).adversarial

    def perturb_detailed(
        self, defence: Defence, x: np.ndarray, y: np.ndarray, *, norm: str, eps: float | np.ndarray, seed: int
    ) -> AttackOutput:
        self.check(norm, eps)
        eps = float(eps)
        x = np.asarray(x, dtype=np.float32)
        if eps == 0 or len(x) == 0:
            same = np.array(x, copy=True)
            return AttackOutput(same, {part: same for part in self.parts(defence)})
        version = self.version_for(defence)
        squeeze = getattr(defence, "squeeze", None)
        if squeeze is not None:
            module: nn.Module = _Squeezed(defence.model, squeeze, self.autoattack.squeezer_gradient).eval()
        elif version == "rand":
            module = defence.differentiable(noise_samples=1, noise_seed=seed, fixed_noise=False)
        else:
            module = defence.differentiable(noise_samples=self.settings.noise_samples, noise_seed=seed)
        device = next(module.parameters()).device
        images = torch.as_tensor(x, device=device)
        labels = torch.as_tensor(np.asarray(y), dtype=torch.int64, device=device)
        with frozen_parameters(module), cpu_threads(self.autoattack.threads):
            if version == "rand":
                score_seed = component_seed(seed, "selection")
                score = (
                    defence.differentiable(noise_samples=self.settings.noise_samples, noise_seed=score_seed)
                    if defence.randomized
                    else module
                )
                output = rand_autoattack(
                    module, score, images, labels, norm=norm, eps=eps, seed=seed, settings=self.autoattack
                )
            else:
                nb_classes = _nb_classes(module, images)
                output = standard_autoattack(
                    module,
                    images,
                    labels,
                    norm=norm,
                    eps=eps,
                    nb_classes=nb_classes,
                    seed=seed,
                    settings=self.autoattack,
                )
        output.adversarial = output.adversarial.astype(np.float32)
        output.parts = {k: v.astype(np.float32) for k, v in output.parts.items()}
        return output


def _nb_classes(module: nn.Module, x: torch.Tensor) -> int:
    with torch.no_grad():
        return int(module(x[:1]).shape[1])


def probe_seconds(
    module: nn.Module,
    x: torch.Tensor,
    *,
    norm: str,
    version: str,
    settings: AutoAttackSettings = AutoAttackSettings(),
    probe_steps: int = 2,
    probe_queries: int = 25,
) -> dict[str, float]:
    """Seconds each component of one unit on ``x`` would take at ``settings``, extrapolated from running it
    here at ``probe_steps`` steps (``probe_queries`` Square queries) against ``module``'s own answers at a
    budget too small to break anything, so that every component runs on every point: the cascade's upper
    bound, for ``--dry-run``.

    The components' cost is mostly per iteration, not per point, on small models: this prices the
    iterations as they run here (on ``settings.threads`` threads, after a warm-up run), bookkeeping
    included, which counting model passes would miss."""
    _choice("norm", norm, NORMS)
    _choice("version", version, VERSIONS[1:])
    with torch.no_grad():
        y = module(x).argmax(dim=1)
    probe = AutoAttackSettings(
        steps=probe_steps,
        square_queries=probe_queries,
        eot_iter=min(settings.eot_iter, 2),
        extra_restarts=min(settings.extra_restarts, 1),
        threads=settings.threads,
    )
    with frozen_parameters(module), cpu_threads(settings.threads):
        warm_up = AutoAttackSettings(steps=1, square_queries=2, eot_iter=1, extra_restarts=0)
        if version == "rand":
            rand_autoattack(module, module, x, y, norm=norm, eps=1e-6, seed=0, settings=warm_up)
            output = rand_autoattack(module, module, x, y, norm=norm, eps=1e-6, seed=0, settings=probe)
        else:
            nb_classes = _nb_classes(module, x)
            standard_autoattack(
                module, x, y, norm=norm, eps=1e-6, nb_classes=nb_classes, seed=0, settings=warm_up
            )
            output = standard_autoattack(
                module, x, y, norm=norm, eps=1e-6, nb_classes=nb_classes, seed=0, settings=probe
            )
    scale = {
        "square": settings.square_queries / probe_queries,
        PART_RESTARTS: settings.extra_restarts * (settings.steps + 1) / (probe.steps + 1),
    }
    eot = settings.eot_iter / probe.eot_iter if version == "rand" else 1.0
    seconds = {}
    for name, spent in output.seconds.items():
        factor = scale.get(name, (settings.steps + 1) / (probe.steps + 1))
        seconds[name] = spent * factor * (eot if name != "square" else 1.0)
    if not settings.extra_restarts:
        seconds.pop(PART_RESTARTS, None)
    return seconds
