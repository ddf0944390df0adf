"""The results schema: the one contract between the pipeline's stages, the report, the leaderboard and
anyone reading a run's output. docs/results-schema.md is the prose version of this module.

Per-example files (tab-separated, one header line):

* ``certify-<defence>.tsv``: :data:`CERTIFY_COLUMNS` -- Cohen et al.'s columns first (so their analysis
  scripts and ours read it), then ours.
* ``empirical.tsv``: :data:`EMPIRICAL_COLUMNS`; attack ``none`` with norm ``none`` and eps 0 are the
  clean predictions.
* ``certificate_check.tsv``: :data:`CHECK_COLUMNS`.

``results.json``: see :data:`RESULTS_KEYS`, :data:`DEFENCE_KEYS` and :func:`validate_results`. Labels
are class indices, ``-1`` an abstention; accuracies are fractions in [0, 1]; sigma, eps and radii are in
the data's [0, 1] units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "CERTIFY_COLUMNS",
    "CHECK_COLUMNS",
    "DEFENCE_KEYS",
    "EMPIRICAL_COLUMNS",
    "RESULTS_KEYS",
    "SCHEMA_VERSION",
    "validate_results",
]

#: Bumped whenever a key changes meaning or disappears (adding keys does not bump it).
#: 2: certificate_check.trials counts every attempted point, not the attacked ones. 3: an empirical
#: worst_case is over the points every attack covered (AutoAttack may run on fewer: autoattack.points).
SCHEMA_VERSION = 3

CERTIFY_COLUMNS = (
    "idx",  # index of the test point in the dataset's fixed test split
    "label",  # true class
    "predict",  # certified class, -1 = abstained
    "radius",  # certified L2 radius (0 where abstained)
    "correct",  # 1 if predict == label
    "time",  # this point's share of its chunk's wall time, split by samples used (see pipeline)
    "defence",  # defence name
    "sigma",  # noise level
    "p_lower",  # (1 - alpha) Clopper-Pearson lower bound on the top-class probability
    "count_top",  # votes of the selected class among the n estimation samples
    "n0",  # selection samples
    "n",  # estimation samples
    "samples_used",  # noisy forward passes spent on this point
)

EMPIRICAL_COLUMNS = (
    "idx",
    "label",
    "defence",
    "attack",  # attack name, "none" for the clean prediction; "autoattack/<part>": a single attack of it
    "norm",  # "linf", "l2", or "none"
    "eps",  # attack budget in [0, 1] units (0 for clean)
    "predict",  # the defence's answer on the attacked input (-1 = abstained)
    "correct",  # 1 if predict == label
    "abstained",  # 1 if predict == -1
    "detected",  # 1 flagged by the defence's detector, 0 not, -1 the defence has no detector
    "l2_distance",  # measured L2 norm of the perturbation
    "linf_distance",  # measured L-inf norm of the perturbation
)

CHECK_COLUMNS = (
    "defence",
    "idx",
    "certified_label",  # the class CERTIFY returned
    "radius",  # its certified radius
    "eps",  # the attack's L2 budget (radius_factor * radius)
    "predict",  # PREDICT on the attacked input, fresh noise
    "flipped",  # 1 if predict is neither -1 nor certified_label
    "abstained",
    "l2_distance",
)

#: Top-level keys of results.json and what they hold.
RESULTS_KEYS = {
    "schema_version": "int, SCHEMA_VERSION",
    "created": "ISO time the summary was written",
    "config": "the full validated configuration of the run",
    "versions": "python, platform, torch, numpy, scipy, art, torchattacks, scikit-learn, "
    "art-smoothing-plugin",
    "dataset": "{name, train, test, input_shape, nb_classes}",
    "timings": "{stage: seconds of this run}; stages data, models, clean, certify, attacks, "
    "certificate_check, metrics, report",
    "work": "{units_computed, units_reused, models: [{name, status (trained|cached|user), seconds, path, "
    "key; a user's model also module, weights, weights_sha256, format (onnx|torch_export|python), "
    "isolation (none|process|sandbox|none needed) and isolation_detail}]}",
    "defences": "{defence name: DEFENCE_KEYS}",
    "envelopes": "{smoothing kind: {sigmas, radius_grid, optimistic, corrected, alpha, corrected_alpha, "
    "best_sigma_corrected}} for kinds with several sigmas; randomized smoothing of a training method other "
    "than gaussian is its own family, 'randomized_smoothing:<method>'",
    "selection": "null when nothing was certified, else the best smoothed defence chosen at alpha / k (k: "
    "the smoothed defences): {k, alpha, criterion: 'acr', radius_grid, defences: {name: {alpha, acr, "
    "accuracy, acr_uncorrected, points}}, best, optimistic_best}",
    "notes": "[sentences the report prints near its top, e.g. what instructor mode overrode]",
}

#: Keys of one defence's entry in results.json["defences"].
DEFENCE_KEYS = {
    "kind": "registry name of the defence kind",
    "sigma": "noise level of a smoothed defence, else null",
    "smoothed": "bool",
    "training": "randomized smoothing only: the training method of its base classifier (smoothing.training: "
    "gaussian, smoothadv, macer, consistency or smoothmix)",
    "training_seconds": "randomized smoothing only: wall-clock seconds its base classifier took to train "
    "(recorded beside the cached model; null when unknown, e.g. a user's model)",
    "clean_accuracy": "accuracy on the attacked points without attack (abstentions wrong)",
    "clean_abstain": "abstention rate of PREDICT on clean points",
    "clean_points": "number of points",
    "clean_detected": "detector defences: fraction of clean points flagged (false-positive rate)",
    "certified": "smoothed only: {points, n0, n, alpha, max_certifiable_radius, radius_grid, accuracy, acr, "
    "abstain, seconds_per_point}",
    "empirical": "{norm: {attack: {eps, points, accuracy, abstain, detected, seconds}, worst_case: {eps, "
    "points, accuracy, abstain, attacks[, correct_or_detected]}}}",
    "audit": "attacked defences: {checks, flags, curves, sweep_checked, autoattack, times}: the "
    "gradient-masking checklist, AutoAttack against each single attack, each attack's time "
    "(evaluations.attack_audit)",
    "certificate_check": "smoothed only: {trials (points attempted), attacked (the certified ones), flips, "
    "rate, upper_bound, p_value, flagged, alpha, confidence, alpha_certify, alpha_predict, reference_rate, "
    "abstained, radius_factor, steps, attack, max_l2_overshoot}",
    "gaps": "smoothed only: [{radius, certified, empirical, abstain, gap, explained_by_abstentions, points}]",
    "not_attacked": "present when the defence has no empirical results: why (e.g. 'not attacked: "
    "diffusion.attack_points = 0')",
}

_REQUIRED_DEFENCE = ("kind", "sigma", "smoothed", "empirical")


def _fraction(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (math.isnan(value) or 0 <= value <= 1)
    )


def validate_results(results: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first part of ``results`` that does not follow the schema."""
    for key in RESULTS_KEYS:
        if key not in results:
            raise ValueError(f"results.json misses key {key!r} ({RESULTS_KEYS[key]})")
    if results["schema_version"] != SCHEMA_VERSION:
        raise ValueError(
            f"results.json schema_version is {results['schema_version']!r}, expected {SCHEMA_VERSION}"
        )
    for name, entry in results["defences"].items():
        for key in _REQUIRED_DEFENCE:
            if key not in entry:
                raise ValueError(f"results.json defences[{name!r}] misses key {key!r}")
        unknown = set(entry) - set(DEFENCE_KEYS)
        if unknown:
            raise ValueError(f"results.json defences[{name!r}] has undocumented keys {sorted(unknown)}")
        if "clean_accuracy" in entry and not _fraction(entry["clean_accuracy"]):
            raise ValueError(f"defences[{name!r}].clean_accuracy must be a fraction in [0, 1]")
        certified = entry.get("certified")
        if certified is not None:
            if len(certified["radius_grid"]) != len(certified["accuracy"]):
                raise ValueError(f"defences[{name!r}].certified: radius_grid and accuracy differ in length")
            if not all(_fraction(a) for a in certified["accuracy"]):
                raise ValueError(f"defences[{name!r}].certified.accuracy must hold fractions in [0, 1]")
        for norm, table in entry["empirical"].items():
            if norm not in ("l2", "linf"):
                raise ValueError(f"defences[{name!r}].empirical has norm {norm!r}; expected 'l2' or 'linf'")
            for attack, values in table.items():
                if len(values["eps"]) != len(values["accuracy"]):
                    raise ValueError(
                        f"defences[{name!r}].empirical.{norm}.{attack}: eps and accuracy differ in length"
                    )
                if not all(_fraction(a) for a in values["accuracy"]):
                    raise ValueError(
                        f"defences[{name!r}].empirical.{norm}.{attack}.accuracy must hold fractions"
                    )
