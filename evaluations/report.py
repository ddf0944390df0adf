"""Metrics and report stages: from the pipeline's per-example arrays to ``results.json``, the per-example
TSV files, the Markdown report and the PNG plots. :func:`run_and_report` runs a whole evaluation: the
pipeline's stages, then these two.

The numbers all come from :mod:`evaluations.metrics`; this module only arranges them. Layout of the
output folder (documented in docs/results-schema.md):

* ``results.json`` -- the run summary (:data:`evaluations.schema.SCHEMA_VERSION`);
* ``certify-<defence>.tsv`` -- Cohen's columns (idx, label, predict, radius, correct, time) then ours;
* ``empirical.tsv`` -- one row per (defence, attack, norm, eps, test point), clean predictions included;
* ``certificate_check.tsv`` -- one row per attacked certified point;
* ``report.md`` and ``plots/*.png``;
* ``config.json``, ``events.jsonl`` and ``checkpoints/`` (resume state).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from art_smoothing_plugin import statistics
from art_smoothing_plugin.smoothing import certificate_from_counts

from . import attack_audit, metrics
from .cohen_logs import write_certify_log
from .config import eps_limit
from .pipeline import Pipeline, package_versions
from .schema import CHECK_COLUMNS, EMPIRICAL_COLUMNS, SCHEMA_VERSION
from .storage import atomic_write_json, atomic_write_text
from .submissions.formats import FORMATS

__all__ = ["run_and_report", "run_colours", "summarise", "training_methods", "worst_case", "write_report"]


def _floats(values: Any) -> list[float]:
    return [float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def worst_case(entries: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Per test point, over several attacks at one (norm, eps): ``robust`` (correct under every attack),
    ``wrong`` (some attack made it answer another class) and ``abstain_only`` (not robust, and every
    failure was an abstention), on the leading points every attack covered (an attack may run on fewer
    points, e.g. AutoAttack with ``autoattack.points``; every stage evaluates a prefix of one split)."""
    count = attack_audit.common_points(entries)
    labels = entries[0]["label"][:count]
    correct = np.ones(count, dtype=bool)
    wrong = np.zeros(count, dtype=bool)
    detected_all = np.ones(count, dtype=bool)
    for entry in entries:
        prediction = entry["predict"][:count]
        correct &= prediction == labels
        wrong |= (prediction != labels) & (prediction != metrics.ABSTAIN)
        detected_all &= entry["detected"][:count] == 1
    return {
        "robust": correct,
        "wrong": wrong,
        "abstain_only": ~correct & ~wrong,
        "detected_all": detected_all,
    }


def _certificates_at(
    certified: dict[str, np.ndarray], alpha: float, sigma: float, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, radii)`` when the same vote counts certify at level ``alpha`` (e.g. alpha / k): CERTIFY's
    own computation (:func:`art_smoothing_plugin.smoothing.certificate_from_counts`) at another level."""
    result = certificate_from_counts(certified["candidates"], certified["counts_top"], 0, n, alpha, sigma)
    return result.labels, result.radii


def _corrected_curve(
    certified: dict[str, np.ndarray], alpha: float, sigma: float, n: int, grid
) -> np.ndarray:
    """Certified accuracy when the same counts certify at level ``alpha`` (e.g. alpha / k)."""
    labels, radii = _certificates_at(certified, alpha, sigma, n)
    return metrics.certified_accuracy(labels, radii, certified["label"], grid)


def not_attacked_reason(config: dict[str, Any], defence: Any, attacked_points: int) -> str | None:
    """Why a defence has no empirical results (``None`` when it was attacked): the report, the figures and
    ``results.json`` say it rather than leave a blank."""
    if attacked_points == 0:
        from .defences import DEFENCE_KINDS

        section = DEFENCE_KINDS[defence.kind].section if defence.kind in DEFENCE_KINDS else ""
        key = f"{section}.attack_points" if section and "attack_points" in config.get(section, {}) else ""
        return f"not attacked: {key or 'attack points'} = 0"
    return "not attacked: no attack in attacks.enabled applies to it"


def summarise(pipeline: Pipeline) -> dict[str, Any]:
    """The run summary (``results.json``) from the pipeline's arrays, through :mod:`evaluations.metrics`."""
    config = pipeline.config
    grid = np.asarray(config["report"]["radius_grid"], dtype=np.float64)
    data = pipeline.data
    dims = int(np.prod(pipeline.dataset.input_shape)) if pipeline.dataset is not None else 1
    defences: dict[str, Any] = {}
    for defence in pipeline.defences:
        entry: dict[str, Any] = {"kind": defence.kind, "sigma": defence.sigma, "smoothed": defence.smoothed}
        if defence.training is not None:
            entry["training"] = defence.training
            models = pipeline.models
            key = defence.identity.get("model")
            entry["training_seconds"] = models.training_seconds(key) if models and key else None
        clean = data.clean.get(defence.name)
        if clean is not None and len(clean["label"]):
            entry["clean_accuracy"] = metrics.accuracy(clean["predict"], clean["label"])
            entry["clean_abstain"] = metrics.abstain_rate(clean["predict"])
            entry["clean_points"] = len(clean["label"])
            if defence.has_detector:
                entry["clean_detected"] = float(np.mean(clean["detected"] == 1))
        certified = data.certified.get(defence.name)
        if certified is not None:
            entry["certified"] = {
                "points": len(certified["label"]),
                "n0": defence.n0,
                "n": defence.n,
                "alpha": defence.alpha,
                "max_certifiable_radius": statistics.max_certifiable_radius(
                    defence.n, defence.alpha, defence.sigma
                ),
                "radius_grid": _floats(grid),
                "accuracy": _floats(
                    metrics.certified_accuracy(
                        certified["labels"], certified["radii"], certified["label"], grid
                    )
                ),
                "acr": metrics.average_certified_radius(
                    certified["labels"], certified["radii"], certified["label"]
                ),
                "abstain": metrics.abstain_rate(certified["labels"]),
                "seconds_per_point": float(np.mean(certified["time"])),
            }
        empirical: dict[str, Any] = {}
        rows = [e for e in data.empirical if e["defence"] == defence.name]
        for norm in ("linf", "l2"):
            runs = [e for e in rows if e["norm"] == norm and not e.get("part_of") and not e.get("sweep")]
            if not runs:
                continue
            table: dict[str, Any] = {}
            for attack in dict.fromkeys(e["attack"] for e in runs):
                chosen = sorted((e for e in runs if e["attack"] == attack), key=lambda e: e["eps"])
                table[attack] = {
                    "eps": [e["eps"] for e in chosen],
                    "points": [len(e["label"]) for e in chosen],
                    "accuracy": [metrics.accuracy(e["predict"], e["label"]) for e in chosen],
                    "abstain": [metrics.abstain_rate(e["predict"]) for e in chosen],
                    "detected": [float(np.mean(e["detected"] == 1)) for e in chosen]
                    if defence.has_detector
                    else None,
                    "seconds": [e.get("seconds") for e in chosen],
                }
            eps_values = sorted({e["eps"] for e in runs})
            worst = [worst_case([e for e in runs if e["eps"] == eps]) for eps in eps_values]
            table["worst_case"] = {
                "eps": eps_values,
                "points": [len(w["robust"]) for w in worst],
                "accuracy": [float(np.mean(w["robust"])) for w in worst],
                "abstain": [float(np.mean(w["abstain_only"])) for w in worst],
                "attacks": list(dict.fromkeys(e["attack"] for e in runs)),
            }
            if defence.has_detector:
                table["worst_case"]["correct_or_detected"] = [
                    float(np.mean(w["robust"] | w["detected_all"])) for w in worst
                ]
            empirical[norm] = table
        entry["empirical"] = empirical
        if rows:
            entry["audit"] = attack_audit.audit_defence(
                rows,
                deterministic=not defence.randomized,
                unbounded_eps={norm: eps_limit(norm, dims) for norm in ("linf", "l2")},
                level=config["checklist"]["level"],
                ceiling=config["checklist"]["sweep_ceiling"],
            )
        check = data.checks.get(defence.name)
        if check is not None:
            entry["certificate_check"] = _certificate_check(pipeline, defence, check)
        if certified is not None and "l2" in empirical:
            entry["gaps"] = _gaps(data, defence, empirical["l2"]["worst_case"]["eps"])
        if not empirical:
            entry["not_attacked"] = not_attacked_reason(config, defence, pipeline.attack_points(defence))
        defences[defence.name] = entry
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config,
        "versions": package_versions(),
        "dataset": _dataset_summary(pipeline),
        "timings": {k: round(v, 3) for k, v in pipeline.timings.items()},
        "work": {
            "units_computed": pipeline.store.count("computed"),
            "units_reused": pipeline.store.count("reused"),
            "models": pipeline.models.events if pipeline.models else [],
        },
        "defences": defences,
        "envelopes": _envelopes(pipeline, grid),
        "selection": _selection(pipeline, grid),
        "notes": list(getattr(pipeline, "notes", [])),
    }


def _dataset_summary(pipeline: Pipeline) -> dict[str, Any]:
    dataset = pipeline.dataset
    assert dataset is not None
    return {
        "name": dataset.name,
        "train": len(dataset.x_train),
        "test": len(dataset.x_test),
        "input_shape": list(dataset.input_shape),
        "nb_classes": dataset.nb_classes,
    }


def _certificate_check(pipeline: Pipeline, defence: Any, check: dict[str, np.ndarray]) -> dict[str, Any]:
    """metrics.certificate_check over every attempted point (the certified ones were attacked; the rest
    cannot flip), against the rate a sound certifier meets per attempted point: P(certified and wrong)
    <= alpha, and PREDICT answers a class other than g's with probability <= predict_alpha, so a flip
    has probability <= alpha + predict_alpha."""
    section = pipeline.config["certificate_check"]
    attacked = (check["predict"] != metrics.ABSTAIN) & (check["predict"] != check["certified_label"])
    flipped = np.zeros(int(check["attempted"]), dtype=bool)
    flipped[: len(attacked)] = attacked
    reference = min(0.999, defence.alpha + defence.predict_alpha)
    result = metrics.certificate_check(flipped, reference, section["confidence"])
    result.update(
        {
            "alpha_certify": defence.alpha,
            "alpha_predict": defence.predict_alpha,
            "reference_rate": reference,
            "attacked": len(attacked),
            "abstained": int(np.count_nonzero(check["predict"] == metrics.ABSTAIN)),
            "radius_factor": section["radius_factor"],
            "steps": section["steps"],
            "attack": "smoothadv",
            "max_l2_overshoot": float(np.max(check["l2_distance"] - check["eps"], initial=0.0)),
        }
    )
    return result


def _gaps(data: Any, defence: Any, eps_values: list[float]) -> list[dict[str, Any]]:
    """Radii where empirical (worst-case L2) accuracy is below certified accuracy, on the points both
    stages share, and whether abstentions under attack explain the gap."""
    certified = data.certified[defence.name]
    runs = [e for e in data.empirical if e["defence"] == defence.name and e["norm"] == "l2"]
    common = min(len(certified["label"]), len(runs[0]["label"]))
    cut = [
        {
            **e,
            "idx": e["idx"][:common],
            "label": e["label"][:common],
            "predict": e["predict"][:common],
            "detected": e["detected"][:common],
        }
        for e in runs
    ]
    cert, emp, abst = [], [], []
    for eps in eps_values:
        worst = worst_case([e for e in cut if e["eps"] == eps])
        cert.append(
            float(
                metrics.certified_accuracy(
                    certified["labels"][:common],
                    certified["radii"][:common],
                    certified["label"][:common],
                    [eps],
                )[0]
            )
        )
        emp.append(float(np.mean(worst["robust"])))
        abst.append(float(np.mean(worst["abstain_only"])))
    gaps = metrics.certified_empirical_gaps(eps_values, cert, emp, abst)
    for gap in gaps:
        gap["points"] = common
    return gaps


def _smoothing_family(defence: Any) -> str:
    """The defences whose sigmas an envelope chooses among: one smoothing kind, and for randomized
    smoothing one training method (``randomized_smoothing`` for Gaussian augmentation, as always;
    ``randomized_smoothing:<method>`` for another)."""
    if defence.training in (None, "gaussian"):
        return defence.kind
    return f"{defence.kind}:{defence.training}"


def training_methods(results: dict[str, Any]) -> list[str]:
    """The training methods of the run's randomized smoothing defences, in the run's order."""
    return list(dict.fromkeys(e["training"] for e in results["defences"].values() if e.get("training")))


def _envelopes(pipeline: Pipeline, grid: np.ndarray) -> dict[str, Any]:
    """Best-sigma-per-radius envelope of each smoothing kind (and training method) with several sigmas:
    the optimistic one
    (max over sigma at level alpha, labelled so) and the alpha/k-corrected one (each sigma's certificates
    recomputed from the same counts at alpha / k, so all hold jointly at level alpha)."""
    envelopes: dict[str, Any] = {}
    by_kind: dict[str, list[Any]] = {}
    for defence in pipeline.defences:
        if defence.smoothed and defence.name in pipeline.data.certified:
            by_kind.setdefault(_smoothing_family(defence), []).append(defence)
    for kind, members in by_kind.items():
        if len(members) < 2 or len({len(pipeline.data.certified[d.name]["label"]) for d in members}) != 1:
            continue
        k = len(members)
        alpha = members[0].alpha
        corrected_alpha = metrics.corrected_alpha(alpha, k)
        plain, corrected = {}, {}
        for defence in members:
            certified = pipeline.data.certified[defence.name]
            plain[defence.sigma] = metrics.certified_accuracy(
                certified["labels"], certified["radii"], certified["label"], grid
            )
            corrected[defence.sigma] = _corrected_curve(
                certified, corrected_alpha, defence.sigma, defence.n, grid
            )
        envelopes[kind] = {
            "sigmas": [d.sigma for d in members],
            "radius_grid": _floats(grid),
            "optimistic": _floats(metrics.optimistic_envelope(plain)),
            "corrected": _floats(metrics.optimistic_envelope(corrected)),
            "alpha": alpha,
            "corrected_alpha": corrected_alpha,
            "best_sigma_corrected": [
                float(max(corrected, key=lambda s, i=i: corrected[s][i])) for i in range(len(grid))
            ],
        }
    return envelopes


def _selection(pipeline: Pipeline, grid: np.ndarray) -> dict[str, Any] | None:
    """The best smoothed defence of the run, chosen without optimism: every smoothed defence's
    certificates recomputed from the same counts at alpha / k (k = the number of smoothed defences), so
    all k hold jointly at level alpha and choosing the one with the largest ACR among them costs nothing
    more. ``optimistic_best`` is the choice by the uncorrected ACR (level alpha for each alone), for
    comparison. ``None`` when nothing was certified. The leaderboard ranks by ``best``'s corrected ACR."""
    members = [d for d in pipeline.defences if d.smoothed and d.name in pipeline.data.certified]
    if not members:
        return None
    k = len(members)
    per_defence: dict[str, Any] = {}
    for defence in members:
        certified = pipeline.data.certified[defence.name]
        level = metrics.corrected_alpha(defence.alpha, k)
        labels, radii = _certificates_at(certified, level, defence.sigma, defence.n)
        per_defence[defence.name] = {
            "alpha": level,
            "acr": metrics.average_certified_radius(labels, radii, certified["label"]),
            "accuracy": _floats(metrics.certified_accuracy(labels, radii, certified["label"], grid)),
            "acr_uncorrected": metrics.average_certified_radius(
                certified["labels"], certified["radii"], certified["label"]
            ),
            "points": len(certified["label"]),
        }
    return {
        "k": k,
        "alpha": members[0].alpha,
        "criterion": "acr",
        "radius_grid": _floats(grid),
        "defences": per_defence,
        "best": max(per_defence, key=lambda name: per_defence[name]["acr"]),
        "optimistic_best": max(per_defence, key=lambda name: per_defence[name]["acr_uncorrected"]),
    }


# -- files ---------------------------------------------------------------------------------------------------
def _tsv(rows: list[list[Any]], header: tuple[str, ...]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return f"{float(value):.6g}"
        return str(value)

    return "\t".join(header) + "\n" + "".join("\t".join(cell(v) for v in row) + "\n" for row in rows)


def write_tables(pipeline: Pipeline) -> list[Path]:
    """The per-example files: certify-<defence>.tsv, empirical.tsv, certificate_check.tsv."""
    out, data, written = pipeline.out_dir, pipeline.data, []
    for defence in pipeline.defences:
        certified = data.certified.get(defence.name)
        if certified is None:
            continue
        count = len(certified["label"])
        rows = {
            "idx": certified["idx"],
            "label": certified["label"],
            "predict": certified["labels"],
            "radius": certified["radii"],
            "correct": (certified["labels"] == certified["label"]).astype(int),
            "time": certified["time"],
            "defence": np.full(count, defence.name, dtype=object),
            "sigma": np.full(count, defence.sigma),
            "p_lower": certified["p_lower"],
            "count_top": certified["counts_top"],
            "n0": np.full(count, defence.n0),
            "n": np.full(count, defence.n),
            "samples_used": certified["samples_used"],
        }
        written.append(write_certify_log(out / f"certify-{defence.name}.tsv", rows))
    rows_out: list[list[Any]] = []
    for name, clean in data.clean.items():
        for i in range(len(clean["label"])):
            p, y = int(clean["predict"][i]), int(clean["label"][i])
            rows_out.append(
                [
                    int(clean["idx"][i]),
                    y,
                    name,
                    "none",
                    "none",
                    0.0,
                    p,
                    int(p == y),
                    int(p == -1),
                    int(clean["detected"][i]),
                    0.0,
                    0.0,
                ]
            )
    for entry in data.empirical:
        for i in range(len(entry["label"])):
            p, y = int(entry["predict"][i]), int(entry["label"][i])
            rows_out.append(
                [
                    int(entry["idx"][i]),
                    y,
                    entry["defence"],
                    entry["attack"],
                    entry["norm"],
                    entry["eps"],
                    p,
                    int(p == y),
                    int(p == -1),
                    int(entry["detected"][i]),
                    entry["l2_distance"][i],
                    entry["linf_distance"][i],
                ]
            )
    written.append(atomic_write_text(out / "empirical.tsv", _tsv(rows_out, EMPIRICAL_COLUMNS)))
    check_rows = []
    for name, check in data.checks.items():
        for i in range(len(check["idx"])):
            p, c = int(check["predict"][i]), int(check["certified_label"][i])
            check_rows.append(
                [
                    name,
                    int(check["idx"][i]),
                    c,
                    check["radius"][i],
                    check["eps"][i],
                    p,
                    int(p != -1 and p != c),
                    int(p == -1),
                    check["l2_distance"][i],
                ]
            )
    written.append(atomic_write_text(out / "certificate_check.tsv", _tsv(check_rows, CHECK_COLUMNS)))
    return written


def run_colours(defences: list[Any]) -> tuple[dict[str, str], dict[str, str]]:
    """THE colour map of a run's plots (:func:`evaluations.plots.defence_colours` of every defence, in the
    run's order) and the marker shapes that go with it. A run comparing training methods
    (``smoothing.training`` with several) gives every randomized smoothing defence of one method the
    method's colour, and each sigma its own marker shape (where the sigmas of a method share a chart);
    otherwise each defence has its own colour and the markers are the plots' defaults (empty map)."""
    from . import plots

    compared = len({d.training for d in defences if d.training}) > 1
    groups = {d.name: f"training {d.training}" for d in defences if compared and d.training}
    colours = plots.defence_colours([d.name for d in defences], groups=groups)
    sigmas = sorted({d.sigma for d in defences if d.name in groups})
    shapes = plots.MARKER_SHAPES
    markers = {d.name: shapes[sigmas.index(d.sigma) % len(shapes)] for d in defences if d.name in groups}
    return colours, markers


def _not_attacked_by_reason(entries: Any, default: str | None = None) -> dict[str, list[str]]:
    """The defence names of ``(name, entry)`` pairs under each reason they were not attacked (each reason
    once, in the run's order); entries without a reason go under ``default``, or are left out."""
    groups: dict[str, list[str]] = {}
    for name, entry in entries:
        reason = entry.get("not_attacked") or default
        if reason:
            groups.setdefault(reason, []).append(name)
    return groups


def write_plots(pipeline: Pipeline, results: dict[str, Any]) -> dict[str, Path]:
    """The PNG plots (through :mod:`evaluations.plots`), every one coloured by the one colour map of the
    run (:func:`run_colours`); a run comparing training methods draws its certified accuracy one chart
    per sigma. Returns name -> path."""
    from . import plots

    out = pipeline.out_dir / "plots"
    compared = len(training_methods(results)) > 1
    colours, markers = run_colours(pipeline.defences)
    written: dict[str, Path] = {}
    curves = []
    not_attacked = _not_attacked_by_reason(
        (name, entry) for name, entry in results["defences"].items() if name in pipeline.data.certified
    )
    for name, entry in results["defences"].items():
        certified = pipeline.data.certified.get(name)
        if certified is None:
            continue
        top = float(np.max(certified["radii"], initial=0.0))
        fine = np.linspace(0.0, top * 1.05 + 1e-9, 240)
        accuracy = metrics.certified_accuracy(
            certified["labels"], certified["radii"], certified["label"], fine
        )
        reason = entry.get("not_attacked")
        # Comparing training methods: one chart per sigma, the methods side by side in each.
        panel = {"panel": f"σ = {entry['sigma']:g}"} if compared else {}
        curves.append(
            {
                "label": f"{name} certified" + (" (not attacked)" if reason else ""),
                "radii": fine,
                "accuracy": accuracy,
                "style": "solid",
                "group": name,
                **panel,
            }
        )
        worst = entry["empirical"].get("l2", {}).get("worst_case")
        if worst:
            curves.append(
                {
                    "label": f"{name} empirical (worst L2 attack)",
                    "radii": [0.0, *worst["eps"]],
                    "accuracy": [entry.get("clean_accuracy", float("nan")), *worst["accuracy"]],
                    "style": "points",
                    "group": name,
                    **panel,
                }
            )
    if curves:
        note = "; ".join(
            f"no empirical points for {', '.join(names)} ({reason})" for reason, names in not_attacked.items()
        )
        attacked = any(curve["style"] == "points" for curve in curves)
        written["certified_accuracy"] = plots.plot_certified_accuracy(
            curves,
            out / "certified_accuracy.png",
            title="Certified accuracy (lines) and empirical accuracy under attack (markers)"
            if attacked
            else "Certified accuracy",
            colours=colours,
            note=note,
        )
    series: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for name, entry in results["defences"].items():
        for norm, table in entry["empirical"].items():
            worst = table["worst_case"]
            series.setdefault(norm, {})[name] = (
                [0.0, *worst["eps"]],
                [entry.get("clean_accuracy", float("nan")), *worst["accuracy"]],
            )
    if series:
        ordered = {norm: series[norm] for norm in ("l2", "linf") if norm in series}
        written["robust_accuracy"] = plots.plot_robust_accuracy(
            ordered,
            out / "robust_accuracy.png",
            title="Robust accuracy under the strongest attack per point",
            colours=colours,
            markers=markers,
        )
    strength: dict[str, dict[str, dict[str, tuple[list[float], list[float]]]]] = {}
    for name, entry in results["defences"].items():
        for norm, curves in (entry.get("audit") or {}).get("curves", {}).items():
            if "autoattack" in curves:
                strength.setdefault(norm, {})[name] = {
                    k: (v["eps"], v["accuracy"]) for k, v in curves.items()
                }
    if strength:
        flagged = [n for n, e in results["defences"].items() if (e.get("audit") or {}).get("flags")]
        written["attack_strength"] = plots.plot_attack_strength(
            {norm: strength[norm] for norm in ("l2", "linf") if norm in strength},
            out / "attack_strength.png",
            colours=colours,
            flagged=flagged,
            markers=markers,
        )
    rows = []
    for name, entry in results["defences"].items():
        check = entry.get("certificate_check")
        if check and check["trials"] > 0:
            rows.append(
                {
                    "defence": name,
                    "sigma": entry["sigma"],
                    "rate": check["rate"],
                    "flips": check["flips"],
                    "trials": check["trials"],
                    "upper_bound": check["upper_bound"],
                    "reference": check["reference_rate"],
                    "flagged": check["flagged"],
                }
            )
    unchecked = [
        f"{name} ({entry['not_attacked']})"
        for name, entry in results["defences"].items()
        if "certified" in entry and "certificate_check" not in entry and entry.get("not_attacked")
    ]
    if rows:
        written["certificate_check"] = plots.plot_certificate_check(
            rows,
            out / "certificate_check.png",
            colours=colours,
            note="not checked: " + "; ".join(unchecked) if unchecked else "",
        )
    return written


def _pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100.0 * float(value):.1f}"


def _model_lines(results: dict[str, Any]) -> list[str]:
    """Which model was evaluated, when it is the user's: module, weights file and its SHA-256, its format
    and the isolation it ran under."""
    users = [m for m in results["work"]["models"] if m.get("status") == "user"]
    if not users:
        return []
    model = users[0]
    config = results["config"]["model"]
    details = []
    if model.get("module", config["module"]):
        details.append(f"module `{model.get('module', config['module'])}`")
    if model.get("weights"):
        details.append(f"weights `{model['weights']}` (SHA-256 `{model.get('weights_sha256', '?')}`)")
    if config["kwargs"]:
        details.append(f"kwargs `{json.dumps(config['kwargs'])}`")
    if config["mean"] is not None:
        details.append(f"normalised inside with mean {config['mean']} and std {config['std']}")
    lines = ["**Model evaluated** (yours): " + ", ".join(details) + ".", ""]
    if model.get("format"):
        lines += [
            f"**Format:** {FORMATS.get(model['format'], model['format'])}. "
            f"**Isolation:** {model.get('isolation_detail', model.get('isolation', ''))}.",
            "",
        ]
    return lines


def _notes(results: dict[str, Any]) -> list[str]:
    return [line for note in results.get("notes", []) for line in (f"**Note:** {note}", "")]


def _fewer_points_note(results: dict[str, Any]) -> str:
    """A sentence naming the attacks that ran on fewer points than the others (and the worst case's
    points), or nothing."""
    fewer = set()
    for entry in results["defences"].values():
        for table in entry["empirical"].values():
            most = max((max(v["points"]) for k, v in table.items() if k != "worst_case"), default=0)
            for attack, values in table.items():
                if attack != "worst_case" and min(values["points"]) < most:
                    fewer.add(f"{attack} on {min(values['points'])} of {most}")
    if not fewer:
        return ""
    return (
        " Some attacks ran on fewer points ("
        + ", ".join(sorted(fewer))
        + "); the worst case is over the points every attack covered."
    )


def _training_lines(results: dict[str, Any]) -> list[str]:
    """The training methods side by side (a run comparing several, ``smoothing.training``): ACR and
    certified accuracy per (sigma, method), the best ACR at each sigma in bold, and each model's training
    time. Nothing for a run with one method."""
    methods = training_methods(results)
    if len(methods) < 2:
        return []
    config = results["config"]
    grid = config["report"]["radius_grid"]
    model = config["model"]
    by_sigma: dict[float, dict[str, tuple[str, dict[str, Any]]]] = {}
    for name, entry in results["defences"].items():
        if entry.get("training") and "certified" in entry:
            by_sigma.setdefault(entry["sigma"], {})[entry["training"]] = (name, entry)
    params = config["smoothing"]["training_params"]
    settings = "; ".join(
        f"{m}: " + (", ".join(f"{k} = {v}" for k, v in params[m].items()) if params.get(m) else "defaults")
        for m in methods
    )
    lines = [
        "",
        "## Training methods compared",
        "",
        f"Randomized smoothing of the same architecture ({model['architecture']}) trained at each σ by each "
        f"method of `smoothing.training` (art_smoothing_plugin.training; model.epochs = {model['epochs']}, "
        f"batch {model['batch_size']}, Adam at {model['learning_rate']:g}), certified on the same "
        "points. Hyper-parameters beyond the papers' defaults (`smoothing.training_params`): "
        f"{settings}. The largest ACR at each σ is in bold; it is that σ's best at level α alone (picking "
        "it after the fact is optimistic: the selection above corrects for that).",
        "",
        "| σ | method | defence | points | "
        + " | ".join(f"r={r:g}" for r in grid)
        + " | ACR | training (s) |",
        "|---|---|---|---|" + "---|" * len(grid) + "---|---|",
    ]
    for sigma in sorted(by_sigma):
        row = by_sigma[sigma]
        best = max(entry["certified"]["acr"] for _, entry in row.values())
        for method in methods:
            if method not in row:
                continue
            name, entry = row[method]
            c = entry["certified"]
            acr = f"{c['acr']:.3f}"
            seconds = entry.get("training_seconds")
            lines.append(
                f"| {sigma:g} | {method} | {name} | {c['points']} | "
                + " | ".join(_pct(a) for a in c["accuracy"])
                + f" | {f'**{acr}**' if c['acr'] == best else acr} | "
                + ("–" if seconds is None else f"{seconds:.1f}")
                + " |"
            )
    return lines


def markdown(pipeline: Pipeline, results: dict[str, Any], plot_paths: dict[str, Path]) -> str:
    """The Markdown report."""
    config = results["config"]
    dataset = results["dataset"]
    lines = [
        f"# Robustness report: {dataset['name']} (preset `{config['preset']}`)",
        "",
        f"Created {results['created']}. Dataset {dataset['name']}: {dataset['train']} train / "
        f"{dataset['test']} test images of shape {tuple(dataset['input_shape'])}, {dataset['nb_classes']} "
        "classes, in [0, 1]. sigma, epsilon and radii are in those units. Seed "
        f"{config['run']['seed']}. Units of work computed this run: {results['work']['units_computed']}, "
        f"reused from checkpoints: {results['work']['units_reused']}.",
        "",
        *_model_lines(results),
        *_notes(results),
        "## Clean accuracy",
        "",
        "| defence | kind | points | clean accuracy (%) | abstain (%) | detected (%) |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in results["defences"].items():
        if entry.get("not_attacked") and not entry.get("clean_points"):
            lines.append(f"| {name} | {entry['kind']} | 0 ({entry['not_attacked']}) | – | – | – |")
            continue
        lines.append(
            f"| {name} | {entry['kind']} | {entry.get('clean_points', '–')} | "
            f"{_pct(entry.get('clean_accuracy'))} | "
            f"{_pct(entry.get('clean_abstain')) if entry['smoothed'] else '–'} | "
            f"{_pct(entry.get('clean_detected')) if 'clean_detected' in entry else '–'} |"
        )
    lines += [
        "",
        "Smoothed defences answer with Cohen's PREDICT (abstentions count as wrong); the detector's clean "
        "'detected' rate is its false-positive rate.",
    ]
    smoothed = {n: e for n, e in results["defences"].items() if "certified" in e}
    if smoothed:
        grid = config["report"]["radius_grid"]
        lines += [
            "",
            "## Certified accuracy (%) against L2 radius",
            "",
            "Abstentions count as wrong. ACR: average certified radius.",
            "",
            "| defence | σ | points | n | α | "
            + " | ".join(f"r={r:g}" for r in grid)
            + " | ACR | abstain (%) |",
            "|---|---|---|---|---|" + "---|" * len(grid) + "---|---|",
        ]
        for name, entry in smoothed.items():
            c = entry["certified"]
            lines.append(
                f"| {name} | {entry['sigma']:g} | {c['points']} | {c['n']} | {c['alpha']:g} | "
                + " | ".join(_pct(a) for a in c["accuracy"])
                + f" | {c['acr']:.3f} | {_pct(c['abstain'])} |"
            )
        for kind, envelope in results["envelopes"].items():
            lines.append(
                f"| {kind}: best σ per radius, OPTIMISTIC (σ chosen after the fact) | – | | | "
                f"{envelope['alpha']:g} | " + " | ".join(_pct(a) for a in envelope["optimistic"]) + " | | |"
            )
            lines.append(
                f"| {kind}: best σ per radius, α/k-corrected (k={len(envelope['sigmas'])}) | – | | | "
                f"{envelope['corrected_alpha']:.3g} | "
                + " | ".join(_pct(a) for a in envelope["corrected"])
                + " | | |"
            )
        selection = results.get("selection")
        if selection and selection["k"] > 1:
            best = selection["defences"][selection["best"]]
            lines += [
                "",
                f"Best smoothed defence, chosen without optimism: **{selection['best']}** (ACR "
                f"{best['acr']:.3f} with every certificate of the k = {selection['k']} smoothed defences "
                f"recomputed from the same counts at α/k = {best['alpha']:.3g}, so all hold jointly at "
                f"α = {selection['alpha']:g} and the choice costs nothing more); choosing by the "
                f"uncorrected ACR would pick {selection['optimistic_best']} (optimistic). The leaderboard "
                "ranks by the corrected choice.",
            ]
        lines += [
            "",
            "Why PREDICT (the clean table) abstains far less often than CERTIFY (this table): PREDICT "
            "abstains only when its top class does not significantly beat the runner-up, while CERTIFY "
            "abstains unless, at confidence 1 − α, the top class has probability above 1/2 (more than all "
            "other classes together), which heavy noise denies many points whose top class is a clear "
            "plurality.",
            "",
            "The largest radius n samples can certify is σ·Φ⁻¹(α^(1/n)): "
            + ", ".join(f"{n}: {e['certified']['max_certifiable_radius']:.2f}" for n, e in smoothed.items())
            + ".",
        ]
        lines += _training_lines(results)
    lines += ["", "## Empirical robust accuracy (%) under attack", ""]
    lines.append(
        "Each cell: accuracy under that attack at that ε. 'worst case' counts a point as robust only if it "
        "survives every attack (on the points every attack covered). For smoothed defences the attacked "
        "input is judged by PREDICT with fresh noise; the abstention rate is in brackets (abstentions count "
        "as wrong)." + _fewer_points_note(results)
    )
    attacked = any(entry["empirical"] for entry in results["defences"].values())
    if not attacked:  # one line instead of two tables of "not attacked" rows
        reasons = _not_attacked_by_reason(results["defences"].items(), default="not attacked")
        said = "; ".join(f"{', '.join(names)} ({reason})" for reason, names in reasons.items())
        lines += ["", f"No defence was attacked: {said}."]
    for norm in ("linf", "l2") if attacked else ():
        eps_grid = config["attacks"][f"{norm}_eps"]
        label = "L∞" if norm == "linf" else "L2"
        lines += [
            "",
            f"### {label}",
            "",
            "| defence | attack | " + " | ".join(f"ε={e:g}" for e in eps_grid) + " |",
            "|---|---|" + "---|" * len(eps_grid),
        ]
        for name, entry in results["defences"].items():
            table = entry["empirical"].get(norm)
            if entry.get("not_attacked"):
                lines.append(
                    f"| {name} | {entry['not_attacked']} | " + " | ".join("–" for _ in eps_grid) + " |"
                )
            if not table:
                continue
            for attack, values in table.items():
                cells = []
                for eps in eps_grid:
                    if eps not in values["eps"]:
                        cells.append("–")
                        continue
                    i = values["eps"].index(eps)
                    text = _pct(values["accuracy"][i])
                    if entry["smoothed"]:
                        text += f" ({_pct(values['abstain'][i])})"
                    if values.get("correct_or_detected"):
                        text += f" / {_pct(values['correct_or_detected'][i])} incl. detected"
                    elif values.get("detected"):
                        text += f" [det {_pct(values['detected'][i])}]"
                    cells.append(text)
                attack_name = "**worst case**" if attack == "worst_case" else attack
                lines.append(f"| {name} | {attack_name} | " + " | ".join(cells) + " |")
    lines += attack_audit.markdown_lines(results)
    gaps = {n: e.get("gaps", []) for n, e in smoothed.items() if e.get("gaps")}
    lines += ["", "## Empirical against certified accuracy", ""]
    if gaps:
        lines += [
            "Where empirical accuracy under attack falls below certified accuracy at the same radius "
            "(on the points both stages share): a certificate promises g is constant, not that a "
            "Monte-Carlo PREDICT answers, so the gap is *explained* when the points lost to abstentions "
            "cover it.",
            "",
            "| defence | ε = r | certified (%) | empirical (%) | abstain (%) | explained by abstentions |",
            "|---|---|---|---|---|---|",
        ]
        for name, rows in gaps.items():
            for gap in rows:
                lines.append(
                    f"| {name} | {gap['radius']:g} | {_pct(gap['certified'])} | {_pct(gap['empirical'])} | "
                    f"{_pct(gap['abstain'])} | {'yes' if gap['explained_by_abstentions'] else '**NO**'} |"
                )
    elif attacked:
        lines.append("Empirical accuracy is at or above certified accuracy at every radius attacked.")
    else:
        lines.append("Nothing to compare: no defence was attacked.")
    checks = {n: e["certificate_check"] for n, e in results["defences"].items() if "certificate_check" in e}
    if checks:
        lines += [
            "",
            "## Certificate check",
            "",
            "Every certified point among the first points certified (up to the configured number) is "
            "attacked with SmoothAdv inside its own certified radius (ε = radius_factor × radius), aiming "
            "away from its certified class, then answered by PREDICT with fresh noise. A *flip* is a "
            "non-abstained answer other than the certified class. Every attempted point is a trial (one "
            "CERTIFY abstained on cannot flip): per attempted point a sound certifier flips with "
            "probability at most α + α_predict (P(certified and wrong) ≤ α; PREDICT errs with probability "
            "≤ α_predict); the check is FLAGGED when the flip count is statistically above that "
            "(binomial test at 1 − confidence).",
            "",
            "| defence | trials | attacked | flips | abstained | rate | upper bound | reference rate | "
            "p-value | flagged |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        columns = lines[-2].count("|") - 1
        for name, entry in smoothed.items():
            check = checks.get(name)
            if check is None:
                reason = entry.get("not_attacked") or "certificate_check.enabled = false"
                lines.append(f"| {name} | not checked ({reason}) |" + " – |" * (columns - 2))
                continue
            rate = "–" if check["trials"] == 0 else f"{check['rate']:.4f}"
            lines.append(
                f"| {name} | {check['trials']} | {check.get('attacked', '–')} | {check['flips']} | "
                f"{check['abstained']} | {rate} | "
                f"{check['upper_bound']:.4f} | {check['reference_rate']:.4g} | {check['p_value']:.3g} | "
                f"{'**FLAGGED**' if check['flagged'] else 'no'} |"
            )
    if plot_paths:
        lines += ["", "## Plots", ""]
        for name, path in plot_paths.items():
            lines.append(f"![{name}]({path.relative_to(pipeline.out_dir).as_posix()})")
            lines.append("")
    lines += ["", "## Models", "", "| model | status | seconds |", "|---|---|---|"]
    for event in results["work"]["models"]:
        lines.append(f"| {event['name']} | {event['status']} | {event['seconds']:.1f} |")
    lines += ["", "## Stage timings (this run)", "", "| stage | seconds |", "|---|---|"]
    for stage, seconds in results["timings"].items():
        lines.append(f"| {stage} | {seconds:.1f} |")
    lines.append(f"| **total** | {sum(results['timings'].values()):.1f} |")
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items() if k != "platform")
    lines += ["", f"Versions: {versions}.", ""]
    return "\n".join(lines)


def write_report(pipeline: Pipeline, results: dict[str, Any]) -> dict[str, Path]:
    """Write every output file (atomically); returns name -> path."""
    out = pipeline.out_dir
    paths: dict[str, Path] = {}
    for path in write_tables(pipeline):
        paths[path.name] = path
    plot_paths = write_plots(pipeline, results) if pipeline.config["report"]["plots"] else {}
    paths.update(plot_paths)
    paths["report.md"] = atomic_write_text(out / "report.md", markdown(pipeline, results, plot_paths))
    results["timings"] = {k: round(v, 3) for k, v in pipeline.timings.items()}
    paths["results.json"] = atomic_write_json(out / "results.json", results)
    return paths


def run_and_report(pipeline: Pipeline) -> dict[str, Any]:
    """Run a whole evaluation: every stage of ``pipeline`` (reusing finished units), then the metrics and
    report stages; returns ``results.json``'s dict."""
    started = time.perf_counter()
    try:
        pipeline.run()
    finally:
        pipeline.close()  # a submission's worker is not needed past the certificate check
    with pipeline.stage("metrics"):
        results = summarise(pipeline)
    with pipeline.stage("report"):
        write_report(pipeline, results)
    results["timings"] = {k: round(v, 3) for k, v in pipeline.timings.items()}
    atomic_write_json(pipeline.out_dir / "results.json", results)  # now with the report stage's time
    total = time.perf_counter() - started
    pipeline.log(
        f"done in {total:.1f} s: {pipeline.store.count('computed')} units computed, "
        f"{pipeline.store.count('reused')} reused; report at {pipeline.out_dir / 'report.md'}"
    )
    return results
