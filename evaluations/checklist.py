"""The gradient-masking checklist (Carlini et al. 2019, "On Evaluating Adversarial Robustness", and Croce &
Hein 2020): pure functions from per-example attack outcomes to checks, each with the numbers behind it.

An *outcome* (:class:`Outcome`) is one attack's result at one (norm, eps) on a fixed list of test points:
``robust[i]`` is True when the defence still answered point i correctly after the attack (an abstention
is wrong). Every comparison of two attacks is on the same points, by an exact one-sided McNemar test on
the discordant points (:func:`evaluations.metrics.discordant_pairs_test`) at level ``level`` (0.01) per
comparison. The checks:

* ``eps_sweep``: at an unbounded-ish budget (L-inf: the data range's width; L2: sqrt(d) times it, where
  every input in the box is reachable) the attack must bring accuracy to about 0. Flagged when the number
  of points still robust is significantly above ``ceiling`` of them (exact binomial test).
* ``black_box_beats_white_box``: a black-box (score-based) or transfer attack breaks significantly more
  points than a white-box gradient attack on the defence itself.
* ``more_effort``: the same attack with more restarts (or steps) breaks significantly more points: the
  attack had not converged.
* ``square_beats_gradient``: Square breaks significantly more points than all the gradient-based attacks
  together (per point, broken by any of them). Only for deterministic defences, where "broken by any of
  them" is exact; for a randomized defence it would be the minimum over several noisy verdicts, which is
  biased low.

A flagged check says "possible gradient masking" and names the attacks. No flag is not a claim of
robustness: it only means these symptoms were not seen with these attacks on these points.

:func:`compare_with_single_attacks` is the report's other comparison: AutoAttack against every single
attack at each (norm, eps), by the same test (AutoAttack must not be significantly weaker than any one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from .metrics import discordant_pairs_test

__all__ = [
    "LEVEL",
    "MASKING",
    "THREATS",
    "Outcome",
    "black_box_beats_white_box",
    "compare_with_single_attacks",
    "eps_sweep",
    "flags",
    "gradient_masking_checklist",
    "more_effort",
    "square_beats_gradient",
]

#: Level of every comparison (per comparison, not corrected for their number: a flag is a prompt to look
#: closer, and a missed one would be worse than a spurious one).
LEVEL = 0.01
#: What every flag says.
MASKING = "possible gradient masking"
#: How an attack reaches the defence: through the defence's own gradients (or BPDA), only through its
#: scores, or through another model's gradients.
THREATS = ("white-box", "black-box", "transfer")


@dataclass(frozen=True)
class Outcome:
    """One attack's per-point result at one (norm, eps).

    :ivar attack: the attack's name in the report.
    :ivar robust: boolean per point, True where the defence still answers correctly.
    :ivar threat: one of :data:`THREATS`.
    :ivar gradient: whether the attack follows gradients (white-box or transfer) rather than scores.
    :ivar more_effort_of: the attack this one repeats with more restarts or steps, if any.
    """

    attack: str
    norm: str
    eps: float
    robust: np.ndarray
    threat: str = "white-box"
    gradient: bool = True
    more_effort_of: str | None = None

    def __post_init__(self) -> None:
        robust = np.asarray(self.robust)
        if robust.dtype != np.bool_ or robust.ndim != 1:
            raise ValueError(
                f"robust of {self.attack!r} must be a 1-D boolean array, got {robust.dtype} {robust.shape}"
            )
        if self.threat not in THREATS:
            raise ValueError(f"threat must be one of {', '.join(THREATS)}; got {self.threat!r}")
        object.__setattr__(self, "robust", robust)

    @property
    def broken(self) -> np.ndarray:
        return ~self.robust


def _check(check: str, outcome: dict[str, Any], attacks: Sequence[str], flagged: bool, why: str) -> dict:
    message = f"{MASKING}: {why} ({', '.join(attacks)})" if flagged else why
    return {"check": check, "attacks": list(attacks), "flagged": bool(flagged), "message": message, **outcome}


def _pair(first: Outcome, second: Outcome, level: float) -> dict[str, Any]:
    """``first`` breaks significantly more points than ``second``? b: only first broke; c: only second."""
    if len(first.robust) != len(second.robust):
        raise ValueError(
            f"{first.attack!r} and {second.attack!r} must be on the same points: "
            f"{len(first.robust)} != {len(second.robust)}"
        )
    b, c, p = discordant_pairs_test(first.broken, second.broken, alternative="greater")
    return {
        "norm": first.norm,
        "eps": first.eps,
        "points": len(first.robust),
        "accuracy": {first.attack: float(first.robust.mean()), second.attack: float(second.robust.mean())},
        "only_first": b,
        "only_second": c,
        "p_value": p,
        "level": level,
        "significant": bool(p < level),
    }


def _by_cell(outcomes: Iterable[Outcome]) -> dict[tuple[str, float], list[Outcome]]:
    cells: dict[tuple[str, float], list[Outcome]] = {}
    for outcome in outcomes:
        cells.setdefault((outcome.norm, float(outcome.eps)), []).append(outcome)
    return cells


def eps_sweep(
    attack: str,
    norm: str,
    eps: Sequence[float],
    robust: Sequence[np.ndarray],
    *,
    unbounded_eps: float,
    ceiling: float = 0.02,
    level: float = LEVEL,
) -> dict[str, Any] | None:
    """Does ``attack``'s accuracy fall to about 0 as eps grows to ``unbounded_eps``?

    ``eps`` and ``robust`` give the attack's per-point outcomes at each budget of the sweep. The check is
    made at the largest budget, which must be at least ``unbounded_eps`` (otherwise nothing is checked and
    ``None`` is returned): flagged when ``P(Binomial(points, ceiling) >= robust count) < level``."""
    if len(eps) != len(robust) or not eps:
        raise ValueError("eps and robust must be non-empty and of one length")
    order = np.argsort(np.asarray(eps, dtype=np.float64))
    largest = int(order[-1])
    if float(eps[largest]) < unbounded_eps - 1e-12:
        return None
    if not 0.0 <= ceiling < 1.0:
        raise ValueError(f"ceiling must be in [0, 1), got {ceiling!r}")
    last = np.asarray(robust[largest], dtype=bool)
    count, points = int(last.sum()), len(last)
    p_value = float(stats.binom.sf(count - 1, points, ceiling)) if count else 1.0
    flagged = p_value < level
    why = (
        f"{count} of {points} points still robust at eps {float(eps[largest]):g} ({norm}), where every "
        f"input is reachable" + (f" (more than {ceiling:.0%} of them: p = {p_value:.2g})" if flagged else "")
    )
    return _check(
        "eps_sweep",
        {
            "norm": norm,
            "eps": float(eps[largest]),
            "points": points,
            "sweep": [{"eps": float(eps[i]), "accuracy": float(np.mean(robust[i]))} for i in order.tolist()],
            "robust": count,
            "ceiling": ceiling,
            "p_value": p_value,
            "level": level,
            "significant": flagged,
        },
        [attack],
        flagged,
        why,
    )


def black_box_beats_white_box(outcomes: Iterable[Outcome], level: float = LEVEL) -> list[dict[str, Any]]:
    """Every black-box or transfer outcome against every white-box gradient outcome at the same (norm,
    eps): flagged where the black-box or transfer attack breaks significantly more points."""
    checks = []
    for cell in _by_cell(outcomes).values():
        white = [o for o in cell if o.threat == "white-box" and o.gradient]
        for other in (o for o in cell if o.threat != "white-box"):
            for target in white:
                numbers = _pair(other, target, level)
                why = (
                    f"{other.threat} attack {other.attack} broke {numbers['only_first']} points that "
                    f"white-box {target.attack} did not, against {numbers['only_second']} the other way "
                    f"(p = {numbers['p_value']:.2g})"
                )
                checks.append(
                    _check(
                        "black_box_beats_white_box",
                        numbers,
                        [other.attack, target.attack],
                        numbers["significant"],
                        why,
                    )
                )
    return checks


def more_effort(outcomes: Iterable[Outcome], level: float = LEVEL) -> list[dict[str, Any]]:
    """Every outcome that repeats another with more restarts or steps against that other one: flagged
    where the extra effort breaks significantly more points."""
    checks = []
    for cell in _by_cell(outcomes).values():
        named = {o.attack: o for o in cell}
        for stronger in (o for o in cell if o.more_effort_of):
            base = named.get(stronger.more_effort_of)
            if base is None:
                continue
            numbers = _pair(stronger, base, level)
            why = (
                f"{stronger.attack} broke {numbers['only_first']} points that {base.attack} did not, against "
                f"{numbers['only_second']} the other way (p = {numbers['p_value']:.2g})"
            )
            checks.append(
                _check("more_effort", numbers, [base.attack, stronger.attack], numbers["significant"], why)
            )
    return checks


def square_beats_gradient(
    outcomes: Iterable[Outcome], *, square: str = "square", level: float = LEVEL
) -> list[dict[str, Any]]:
    """Square against every gradient-based outcome together (a point counts as broken by them if any of
    them broke it) at each (norm, eps) where Square ran; for deterministic defences only (see the module
    docstring)."""
    checks = []
    for cell in _by_cell(outcomes).values():
        found = [o for o in cell if o.attack == square]
        gradient = [o for o in cell if o.gradient and o.attack != square]
        if not found or not gradient:
            continue
        names = [o.attack for o in gradient]
        together = Outcome(
            "gradient attacks together",
            found[0].norm,
            found[0].eps,
            np.logical_and.reduce([o.robust for o in gradient]),
        )
        numbers = _pair(found[0], together, level)
        numbers["gradient_attacks"] = names
        why = (
            f"{square} broke {numbers['only_first']} points that no gradient attack broke, against "
            f"{numbers['only_second']} the other way (p = {numbers['p_value']:.2g})"
        )
        checks.append(_check("square_beats_gradient", numbers, [square, *names], numbers["significant"], why))
    return checks


def gradient_masking_checklist(
    outcomes: Sequence[Outcome],
    *,
    deterministic: bool,
    sweep: Sequence[dict[str, Any] | None] = (),
    square: str = "square",
    level: float = LEVEL,
) -> list[dict[str, Any]]:
    """Every check for one defence: ``outcomes`` at the grid's budgets, ``sweep`` the results of
    :func:`eps_sweep` (one per norm; ``None`` entries skipped), ``square`` Square's name among the
    outcomes. Returns every check made, flagged or not,
    with its numbers; :func:`flags` picks the flagged ones."""
    checks = [s for s in sweep if s is not None]
    checks += black_box_beats_white_box(outcomes, level)
    checks += more_effort(outcomes, level)
    if deterministic:
        checks += square_beats_gradient(outcomes, square=square, level=level)
    return checks


def flags(checks: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flagged checks."""
    return [c for c in checks if c["flagged"]]


def compare_with_single_attacks(
    autoattack: Outcome, others: Iterable[Outcome], level: float = LEVEL
) -> list[dict[str, Any]]:
    """AutoAttack against each single attack on the same points at the same (norm, eps): ``only_single``
    points the single attack broke and AutoAttack did not, ``only_autoattack`` the reverse, ``p_value`` of
    the exact one-sided McNemar test that the single attack is stronger, and ``weaker`` when p < level."""
    rows = []
    for other in others:
        if other.attack == autoattack.attack:
            continue
        if other.norm != autoattack.norm or float(other.eps) != float(autoattack.eps):
            continue
        numbers = _pair(other, autoattack, level)
        rows.append(
            {
                "norm": autoattack.norm,
                "eps": float(autoattack.eps),
                "attack": other.attack,
                "points": numbers["points"],
                "accuracy_attack": numbers["accuracy"][other.attack],
                "accuracy_autoattack": numbers["accuracy"][autoattack.attack],
                "only_single": numbers["only_first"],
                "only_autoattack": numbers["only_second"],
                "p_value": numbers["p_value"],
                "weaker": numbers["significant"],
            }
        )
    return rows
