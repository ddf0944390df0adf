"""Is the empirical evaluation strong enough? From the pipeline's attack rows of one defence to the
gradient-masking checklist (:mod:`evaluations.checklist`), AutoAttack against each single attack, and
each attack's time; and their section of the report.

An attack row (an entry of ``RunData.empirical``) holds per-point predictions of one attack at one (norm,
eps). Besides the attacks of ``attacks.enabled`` there are AutoAttack's *part* rows (``part_of =
"autoattack"``: single attacks on every point, for the checklist only; they never enter the worst case)
and its *sweep* rows (``sweep = True``: AutoAttack at the unbounded budget of each norm, for the
checklist's eps sweep). Every row says how the attack reaches the defence (``threat``: white-box,
black-box or transfer) and whether it follows gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import checklist
from .checklist import Outcome

__all__ = ["audit_defence", "common_points", "markdown_lines"]

AUTOATTACK = "autoattack"


def common_points(entries: Sequence[dict[str, Any]]) -> int:
    """How many leading test points every row covers (every stage evaluates a prefix of the same split)."""
    count = min(len(e["idx"]) for e in entries)
    first = entries[0]["idx"][:count]
    for entry in entries:
        if not np.array_equal(entry["idx"][:count], first):
            raise ValueError("attack rows must cover prefixes of the same test points")
    return count


def _outcome(entry: dict[str, Any], count: int) -> Outcome:
    return Outcome(
        entry["attack"],
        entry["norm"],
        float(entry["eps"]),
        np.asarray(entry["predict"][:count] == entry["label"][:count]),
        threat=entry.get("threat", "white-box"),
        gradient=bool(entry.get("gradient", True)),
        more_effort_of=entry.get("more_effort_of"),
    )


def _cells(entries: Sequence[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    cells: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for entry in entries:
        if not entry.get("sweep"):
            cells.setdefault((entry["norm"], float(entry["eps"])), []).append(entry)
    return cells


def audit_defence(
    entries: Sequence[dict[str, Any]],
    *,
    deterministic: bool,
    unbounded_eps: dict[str, float],
    level: float = checklist.LEVEL,
    ceiling: float = 0.02,
) -> dict[str, Any]:
    """The audit of one defence from all its attack rows.

    :param deterministic: the defence answers deterministically (then "broken by any of several attacks"
        is exact, and Square is compared with the gradient attacks together).
    :param unbounded_eps: per norm, the budget at which every input is reachable (the eps sweep's end).
    :returns: ``checks`` (every check made, flagged or not), ``flags`` (the flagged ones), ``curves`` (per
        norm, AutoAttack's accuracy at every budget and the other attacks' worst case), ``autoattack``
        (AutoAttack against each single attack per (norm, eps)), ``times`` (per attack: seconds, units
        and, for AutoAttack, seconds per component).
    """
    outcomes: list[Outcome] = []
    comparisons: list[dict[str, Any]] = []
    for (_norm, _eps), cell in sorted(_cells(entries).items()):
        count = common_points(cell)
        cell_outcomes = [_outcome(e, count) for e in cell]
        outcomes += cell_outcomes
        ensemble = [o for o in cell_outcomes if o.attack == AUTOATTACK]
        if ensemble:
            others = [
                o
                for o, e in zip(cell_outcomes, cell, strict=True)
                if e.get("part_of") is None and o.attack != AUTOATTACK
            ]
            comparisons += checklist.compare_with_single_attacks(ensemble[0], others, level)
    sweeps = []
    for norm, limit in unbounded_eps.items():
        runs = sorted(
            (e for e in entries if e["attack"] == AUTOATTACK and e["norm"] == norm), key=lambda e: e["eps"]
        )
        if runs:
            sweeps.append(
                checklist.eps_sweep(
                    AUTOATTACK,
                    norm,
                    [float(e["eps"]) for e in runs],
                    [np.asarray(e["predict"] == e["label"]) for e in runs],
                    unbounded_eps=limit,
                    ceiling=ceiling,
                    level=level,
                )
            )
    checks = checklist.gradient_masking_checklist(
        outcomes, deterministic=deterministic, sweep=sweeps, square=f"{AUTOATTACK}/square", level=level
    )
    return {
        "checks": checks,
        "flags": checklist.flags(checks),
        "curves": _curves(entries),
        "sweep_checked": {s["norm"]: s["eps"] for s in sweeps if s is not None},
        "autoattack": comparisons,
        "times": attack_times(entries),
    }


def _curves(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per norm: AutoAttack's accuracy at every budget it ran (the sweep's too), and the worst case of the
    other attacks (not AutoAttack's parts) at each budget of the grid, on the points they and AutoAttack
    all covered."""
    curves: dict[str, dict[str, dict[str, list[float]]]] = {}
    for norm in dict.fromkeys(e["norm"] for e in entries):
        rows = [e for e in entries if e["norm"] == norm and e.get("part_of") is None]
        ours = sorted((e for e in rows if e["attack"] == AUTOATTACK), key=lambda e: e["eps"])
        if ours:
            curves.setdefault(norm, {})[AUTOATTACK] = {
                "eps": [float(e["eps"]) for e in ours],
                "accuracy": [float(np.mean(e["predict"] == e["label"])) for e in ours],
            }
        others = [e for e in rows if e["attack"] != AUTOATTACK and not e.get("sweep")]
        budgets = sorted({float(e["eps"]) for e in others})
        if budgets:
            accuracy = []
            for eps in budgets:
                cell = [e for e in others if float(e["eps"]) == eps]
                same = [e for e in ours if float(e["eps"]) == eps]  # on AutoAttack's points, to compare
                count = common_points(cell + same)
                robust = np.logical_and.reduce([e["predict"][:count] == e["label"][:count] for e in cell])
                accuracy.append(float(np.mean(robust)))
            curves.setdefault(norm, {})["others"] = {"eps": budgets, "accuracy": accuracy}
    return curves


def attack_times(entries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per attack: total seconds of its units, the number of units, and per component where it has some."""
    times: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.get("part_of") is not None or "seconds" not in entry:
            continue
        row = times.setdefault(entry["attack"], {"seconds": 0.0, "units": 0, "components": {}})
        row["seconds"] += float(entry["seconds"])
        row["units"] += int(entry.get("units", 1))
        for name, seconds in (entry.get("component_seconds") or {}).items():
            row["components"][name] = row["components"].get(name, 0.0) + float(seconds)
    return times


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}"


def markdown_lines(results: dict[str, Any]) -> list[str]:
    """The report's section on the attacks' strength: AutoAttack against each single attack, the
    checklist's flags with their numbers, and each attack's time."""
    audits = {n: e["audit"] for n, e in results["defences"].items() if e.get("audit")}
    if not audits:
        return []
    lines = [
        "",
        "## Are the attacks strong enough? AutoAttack and the gradient-masking checklist",
        "",
        "AutoAttack (Croce & Hein 2020; standard version on deterministic defences, rand version on "
        "randomized ones) against each single attack on the same points: *only attack* counts points that "
        "attack broke and AutoAttack did not, *only AA* the reverse; p is the exact one-sided McNemar test "
        "that the single attack is stronger. AutoAttack is *weaker* where p < 0.01.",
        "",
        "| defence | norm | ε | attack | points | attack (%) | AutoAttack (%) | only attack | only AA | p "
        "| AutoAttack weaker |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, audit in audits.items():
        for row in audit["autoattack"]:
            lines.append(
                f"| {name} | {row['norm']} | {row['eps']:g} | {row['attack']} | {row['points']} | "
                f"{_pct(row['accuracy_attack'])} | {_pct(row['accuracy_autoattack'])} | "
                f"{row['only_single']} | {row['only_autoattack']} | {row['p_value']:.2g} | "
                f"{'**yes**' if row['weaker'] else 'no'} |"
            )
    lines += [
        "",
        "### Gradient-masking checklist (Carlini et al. 2019)",
        "",
        "Each check compares attacks on the same points by an exact one-sided McNemar test at 0.01 (the eps "
        "sweep: an exact binomial test that more than 2% of the points survive AutoAttack at the budget "
        "where every input is reachable). A flag says *possible gradient masking* and names the attacks. "
        "**No flag is not a claim of robustness**: it only means these symptoms were not seen with these "
        "attacks on these points.",
        "",
    ]
    for name, audit in audits.items():
        made = len(audit["checks"])
        sweep = ", ".join(f"{norm} ε = {eps:g}" for norm, eps in audit["sweep_checked"].items()) or "not run"
        if audit["flags"]:
            lines.append(
                f"- **{name}**: {len(audit['flags'])} of {made} checks flagged (eps sweep: {sweep}):"
            )
            for flag in audit["flags"]:
                where = f" at {flag['norm']} ε = {flag['eps']:g}" if "eps" in flag else ""
                lines.append(f"  - {flag['message']}{where}")
        else:
            lines.append(f"- **{name}**: no flag in {made} checks (eps sweep: {sweep}).")
    lines += [
        "",
        "### Time per attack",
        "",
        "| defence | attack | units | seconds | AutoAttack's components (s) |",
        "|---|---|---|---|---|",
    ]
    for name, audit in audits.items():
        for attack, row in audit["times"].items():
            parts = ", ".join(f"{k} {v:.1f}" for k, v in row["components"].items()) or "–"
            lines.append(f"| {name} | {attack} | {row['units']} | {row['seconds']:.1f} | {parts} |")
    return lines
