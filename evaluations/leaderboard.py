"""Instructor mode: evaluate a folder of submissions and write one leaderboard beside their reports.

Layout of the submissions folder: one sub-folder per submission (its name is the submission's name),
holding the model code, the weights and optionally ``submission.toml`` (or ``.json``) with a ``[model]``
table (``module``, ``weights``, ``kwargs``, ``mean``, ``std``, ``nb_classes``). A ``[smoothing]`` table
with ``sigmas`` is accepted but ignored, with a note in that submission's report: the instructor's
configuration fixes the sigmas and defences of every submission, so ranks compare like with like.
Without that file the defaults are the
folder's one ``.onnx``, ``.pt2`` or ``.pt``/``.pth``/``.safetensors`` file, with ``module =
"model.py:Model"`` for the last kind. Paths are relative to the submission's folder.

A submission is an ONNX file (``model.onnx``: loaded here, no submitted code runs), a ``torch.export``
program (``model.pt2``) or Python code with a state_dict. The last two run code, so each runs in its own
worker process inside a bubblewrap sandbox (:mod:`evaluations.submissions.sandbox`: no network, only its
own files, uid nobody, resource limits) and answers in plain arrays. Where the sandbox is unavailable they
are refused, each with a row saying why, unless ``trust_submissions`` (``--trust-submissions``) lets them
run in a plain worker process; their rows are then marked TRUSTED.

Every submission is validated first (config, import, weights, output shape); one that fails gets a row
with its error, listed without a rank, and the others still run. Defences that train their own
classifier (adversarial training) are left out: a submission is evaluated as given (undefended), under
feature squeezing, and smoothed at the instructor's sigmas. The ranking uses each submission's best
smoothed defence chosen at alpha / k (:func:`leaderboard_rows`). Output: ``<out>/<submission>/`` (each
one's full report) and ``<out>/leaderboard.md``, ``.tsv`` and ``.json`` (numbers as numbers there).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, load_config_file, resolve_config
from .config.sections import WHOLE_MODEL_SUFFIXES
from .models import DEFAULT_CACHE_DIR
from .pipeline import Pipeline
from .registry import DEFENCE_KINDS
from .report import run_and_report
from .storage import atomic_write_json, atomic_write_text
from .submissions.formats import model_format
from .submissions.sandbox import sandbox_support

__all__ = [
    "Submission",
    "discover_submissions",
    "evaluate_submission",
    "leaderboard_rows",
    "run_leaderboard",
]

_ALLOWED = {"model": None, "smoothing": {"sigmas"}}
_WEIGHT_SUFFIXES = (".onnx", ".pt2", ".pt", ".pth", ".safetensors")


@dataclass
class Submission:
    name: str
    folder: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    format: str = ""  # onnx, torch_export or python (evaluations.submissions.formats)


def _submission_config(folder: Path) -> dict[str, Any]:
    for candidate in ("submission.toml", "submission.json"):
        path = folder / candidate
        if path.is_file():
            data = load_config_file(path)
            for section, keys in data.items():
                if section not in _ALLOWED:
                    raise ConfigError(
                        f"{candidate}:{section}", "only [model] and [smoothing] tables", show_got=False
                    )
                if _ALLOWED[section] is not None and set(keys) - _ALLOWED[section]:
                    raise ConfigError(
                        f"{candidate}:{section}", f"only keys {sorted(_ALLOWED[section])}", sorted(keys)
                    )
            return data
    return {}


def discover_submissions(folder: str | Path) -> list[Submission]:
    """Every sub-folder of ``folder`` as a :class:`Submission` (with ``error`` set when its files are
    incomplete), sorted by name."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError("--submissions", "a folder of submission folders", str(root))
    submissions = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        submission = Submission(sub.name, sub.resolve())
        try:
            data = _submission_config(sub)
            model = dict(data.get("model", {}))
            weights = model.get("weights")
            if not weights:
                found = sorted(p for p in sub.iterdir() if p.suffix.lower() in _WEIGHT_SUFFIXES)
                if len(found) != 1:
                    raise ConfigError(
                        "model.weights",
                        f"one {'/'.join(_WEIGHT_SUFFIXES)} file in the submission folder, or "
                        "model.weights in submission.toml",
                        [p.name for p in found],
                    )
                weights = found[0].name
            whole = Path(weights).suffix.lower() in WHOLE_MODEL_SUFFIXES
            module = model.get("module", "" if whole else "model.py:Model")
            target, _, attribute = str(module).rpartition(":")
            if target.endswith(".py") and not Path(target).is_absolute():
                module = f"{(sub / target).resolve()}:{attribute}"
            model["module"] = module
            model["weights"] = str((sub / weights).resolve()) if not Path(weights).is_absolute() else weights
            submission.format = model_format(module, model["weights"])
            submission.overrides = {
                "model": model,
                **({"smoothing": data["smoothing"]} if "smoothing" in data else {}),
            }
        except ConfigError as error:
            submission.error = str(error)
        submissions.append(submission)
    if not submissions:
        raise ConfigError("--submissions", "a folder holding at least one submission folder", str(root))
    return submissions


#: The note a submission's report carries when its own ``[smoothing] sigmas`` were set aside.
SIGMAS_IGNORED = (
    "This submission's own [smoothing] sigmas = {sigmas} were ignored: in instructor mode the instructor's "
    "configuration fixes the σ values and defences of every submission, so ranks compare like with like."
)


def _config_for(
    submission: Submission, preset, file_config, overrides, limit
) -> tuple[dict[str, Any], list[str]]:
    """A submission's configuration and the notes of its report. The instructor's configuration (preset,
    ``--config``, ``--set``) fixes everything but the ``[model]`` table: the same defences and the same
    sigmas for every submission (a submission's ``[smoothing] sigmas`` is ignored, with a note), minus
    the defences that train their own classifier."""
    base = copy.deepcopy(dict(file_config or {}))
    notes = []
    base.setdefault("model", {}).update(submission.overrides.get("model", {}))
    if "smoothing" in submission.overrides:
        notes.append(SIGMAS_IGNORED.format(sigmas=submission.overrides["smoothing"].get("sigmas")))
    probe = resolve_config(preset, {k: v for k, v in base.items() if k != "model"}, overrides, limit)
    enabled = [d for d in probe["defences"]["enabled"] if not DEFENCE_KINDS[d].trains_classifier]
    base.setdefault("defences", {})["enabled"] = enabled
    return resolve_config(preset, base, overrides, limit), notes


#: What the robust columns measure.
ROBUST_SOURCE = "undefended"


#: The isolation column: how each kind of submission ran.
ISOLATION_LABELS = {
    "onnx": "none needed (ONNX: no code runs)",
    "sandbox": "sandbox",
    "process": "TRUSTED: own process, no sandbox",
    "none": "TRUSTED: the evaluator's process",
}


def leaderboard_rows(
    reports: dict[str, dict[str, Any] | str], details: dict[str, dict[str, str]] | None = None
) -> tuple[list[str], list[list[Any]], str]:
    """``(header, rows, ranking note)`` from each submission's results (or a status string: an error
    message, or the dry run's "valid"). Cells are numbers (percent), strings or ``None`` (no value).
    ``details`` gives each submission's ``format`` and ``isolation`` columns.

    Ranking: a submission with a smoothed defence is ranked by the ACR of its best one chosen WITHOUT
    optimism, as its report does (``results["selection"]``: every certificate of its k smoothed defences
    recomputed at alpha / k from the same counts, so all hold jointly at alpha); the certified columns
    are that defence's, at that level. Otherwise by the mean worst-case robust accuracy. Only evaluated
    submissions are ranked; the others are listed after them with their status and rank ``None``."""
    sample = next((r for r in reports.values() if isinstance(r, dict)), None)
    details = details or {}
    header = ["rank", "submission", "status", "format", "isolation", "clean accuracy (%)"]
    eps_columns: list[tuple[str, float]] = []
    radii: list[float] = []
    if sample is not None:
        config = sample["config"]
        eps_columns = [("linf", e) for e in config["attacks"]["linf_eps"]] + [
            ("l2", e) for e in config["attacks"]["l2_eps"]
        ]
        radii = [r for r in config["report"]["radius_grid"] if r > 0]
    header += [f"{ROBUST_SOURCE} robust {'L∞' if n == 'linf' else 'L2'} ε={e:g} (%)" for n, e in eps_columns]
    header += ["selected defence (α/k)"] + [f"certified r={r:g} (%)" for r in radii]
    header += ["ACR (α/k)", "certificate check"]
    ranked, unranked = [], []
    certified_any = False
    for name, report in reports.items():
        kind = details.get(name, {})
        described = [kind.get("format") or None, kind.get("isolation") or None]
        if not isinstance(report, dict):
            unranked.append([None, name, str(report), *described] + [None] * (len(header) - 5))
            continue
        source = report["defences"].get(ROBUST_SOURCE, {})
        cells: list[Any] = [name, "ok", *described, _pct(source.get("clean_accuracy"))]
        robust_values = []
        for norm, eps in eps_columns:
            worst = source.get("empirical", {}).get(norm, {}).get("worst_case")
            value = worst["accuracy"][worst["eps"].index(eps)] if worst and eps in worst["eps"] else None
            robust_values.append(value)
            cells.append(_pct(value))
        selection = report.get("selection")
        chosen = selection["defences"][selection["best"]] if selection else None
        certified_any |= chosen is not None
        cells.append(selection["best"] if selection else None)
        for radius in radii:
            value = None
            if chosen is not None and radius in selection["radius_grid"]:
                value = chosen["accuracy"][selection["radius_grid"].index(radius)]
            cells.append(_pct(value))
        cells.append(round(chosen["acr"], 4) if chosen else None)
        smoothed = [e for e in report["defences"].values() if e.get("certified")]
        flagged = [e["certificate_check"]["flagged"] for e in smoothed if "certificate_check" in e]
        cells.append(None if not flagged else ("FLAGGED" if any(flagged) else "passed"))
        known = [v for v in robust_values if v is not None]
        score = chosen["acr"] if chosen else (sum(known) / len(known) if known else float("-inf"))
        ranked.append((score, cells))
    if certified_any:
        note = (
            "Ranked by the average certified radius (ACR) of each submission's best smoothed defence, chosen "
            "among its k smoothed defences with every certificate recomputed at α/k from the same counts "
            "(all hold jointly at α, so the choice is not optimistic); the certified columns are that "
            "defence's, at that level"
        )
    else:
        note = "Ranked by the mean worst-case robust accuracy of the submitted model over every epsilon"
    note += (
        f". Robust columns: the submitted model as given ({ROBUST_SOURCE}), worst case over every attack "
        "that applies. Submissions that were not evaluated are listed after the ranked ones, without a rank"
    )
    rows = [[rank, *cells] for rank, (_, cells) in enumerate(sorted(ranked, key=lambda s: -s[0]), start=1)]
    return header, rows + unranked, note


def _pct(value: Any) -> float | None:
    return None if value is None else round(100.0 * float(value), 2)


def _one_line(text: str, limit: int = 600) -> str:
    """A text cell on one line: a submission's error message must not add or forge table rows."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _text(value: Any, column: str) -> str:
    """A cell as the Markdown table prints it: percentages with one decimal, radii with three; text on
    one line with its pipes escaped."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.1f}" if column.endswith("(%)") else f"{value:.3f}"
    return _one_line(value).replace("|", "\\|")


def _write(
    out: Path, reports: dict[str, dict[str, Any] | str], details: dict[str, dict[str, str]] | None = None
) -> Path:
    header, rows, note = leaderboard_rows(reports, details)
    rows = [[_one_line(c) if isinstance(c, str) else c for c in row] for row in rows]
    lines = [
        "# Leaderboard",
        "",
        note + ". Each submission's full report is in its own folder.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        name = _text(row[1], "submission")
        link = f"[{name}]({name}/report.md)" if row[2] == "ok" else name
        cells = [
            _text(row[0], header[0]),
            link,
            *(_text(c, h) for c, h in zip(row[2:], header[2:], strict=True)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    path = atomic_write_text(out / "leaderboard.md", "\n".join(lines) + "\n")
    tsv = [header, *[["" if c is None else c for c in row] for row in rows]]
    atomic_write_text(out / "leaderboard.tsv", "\n".join("\t".join(map(str, r)) for r in tsv) + "\n")
    atomic_write_json(out / "leaderboard.json", {"header": header, "rows": rows, "ranking": note})
    return path


def run_leaderboard(
    submissions_dir: str | Path,
    out: str | Path,
    *,
    preset: str | None = None,
    file_config: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    limit: int | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    dry_run: bool = False,
    trust_submissions: bool = False,
    protected: Sequence[str | Path] = (),
    log=None,
    executor: str = "local",
    address: str | None = None,
) -> dict[str, dict[str, Any] | str]:
    """Validate every submission, run the valid ones, write the leaderboard; returns name -> results
    (or the error message of an invalid submission).

    :param trust_submissions: where the sandbox is unavailable, run code and ``.pt2`` submissions in a
        plain worker process (rows marked TRUSTED) instead of refusing them.
    :param protected: further paths no submission may see (the instructor's configuration file); the
        submissions folder, ``out`` and the model cache are always protected.
    :param executor: ``"ray"`` evaluates the valid submissions in parallel, one Ray task each
        (:func:`evaluations.executors.evaluate_remotely`): the submission's folder (and its earlier
        checkpoints) travel to the worker, its report folder comes back; one that fails is reported and
        the others go on.
    :param address: the Ray cluster (see :func:`art_smoothing_plugin.distributed.connect`).
    """
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    out = Path(out)
    root = Path(submissions_dir).expanduser()
    guarded = [root, out, Path(cache_dir or DEFAULT_CACHE_DIR).expanduser(), *map(Path, protected)]
    reports: dict[str, dict[str, Any] | str] = {}
    details: dict[str, dict[str, str]] = {}
    pipelines: dict[str, Pipeline] = {}
    folders: dict[str, Path] = {}
    for submission in discover_submissions(submissions_dir):
        details[submission.name] = {"format": submission.format, "isolation": ""}
        if submission.error:
            reports[submission.name] = f"invalid: {submission.error}"
            continue
        isolation = _isolation(submission, trust_submissions)
        if isolation.startswith("refused"):
            reports[submission.name] = isolation
            log(f"submission {submission.name}: {isolation}")
            continue
        details[submission.name]["isolation"] = ISOLATION_LABELS[
            "onnx" if submission.format == "onnx" else isolation
        ]
        try:
            config, notes = _config_for(submission, preset, file_config, overrides, limit)
            pipeline = Pipeline(
                config,
                out / submission.name,
                cache_dir=cache_dir,
                progress=progress,
                log=log,
                search_path=submission.folder,
                notes=notes,
                isolation=isolation,
                protected=guarded,
            )
            pipeline.prepare()
            pipeline.close()  # its worker starts again for the evaluation: one runs at a time
            pipelines[submission.name] = pipeline
            folders[submission.name] = submission.folder
            log(f"submission {submission.name}: valid")
        except ConfigError as error:
            reports[submission.name] = f"invalid: {error}"
            log(f"submission {submission.name}: INVALID: {error}")
    if dry_run:
        for name in pipelines:
            reports[name] = "valid (dry run: not evaluated)"
        out.mkdir(parents=True, exist_ok=True)
        _write(out, reports, details)
        return reports
    if executor == "ray":
        from .executors import evaluate_remotely

        jobs = {name: (pipeline, folders[name]) for name, pipeline in pipelines.items()}
        for name, outcome in evaluate_remotely(jobs, address, evaluate_submission, log=log):
            reports[name] = outcome
            if isinstance(outcome, str):
                log(f"submission {name}: FAILED: {outcome}")
            _write(out, {n: reports.get(n, "pending") for n in [*reports, *pipelines]}, details)
        _write(out, reports, details)
        return reports
    for name, pipeline in pipelines.items():
        log(f"submission {name}: evaluating")
        try:
            reports[name] = run_and_report(pipeline)
        except Exception as error:  # one broken submission must not stop the others
            reports[name] = f"failed during evaluation: {type(error).__name__}: {error}"
            log(f"submission {name}: FAILED: {reports[name]}")
        finally:
            pipeline.close()
        _write(out, {n: reports.get(n, "pending") for n in [*reports, *pipelines]}, details)
    _write(out, reports, details)
    return reports


def evaluate_submission(
    settings: dict[str, Any], submission: bytes, previous: bytes, fingerprints: dict, threads: int
) -> tuple[str, bytes]:
    """One submission's whole evaluation in a Ray worker, in a fresh temporary folder: its files and
    earlier checkpoints unpacked there, the pipeline run locally (the submission's code in the sandbox its
    isolation says), its report folder packed. Returns ``results.json``'s text and the report folder, or
    ``""`` and the error message (UTF-8) when the evaluation failed."""
    import json
    import tempfile

    import torch

    from .executors import check_code, pack, unpack

    check_code(fingerprints)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="art-smoothing-submission-") as scratch:
        # The submission's own folder where this node sees it unchanged (this machine, a shared file
        # system): its report then names the same paths as a local run's; else the copy that came along.
        original = settings["folder"]
        folder, out, config = Path(original), Path(scratch, "out"), copy.deepcopy(settings["config"])
        if not folder.is_dir() or pack(folder) != submission:
            folder = Path(scratch, "submission")
            unpack(submission, folder)
            for key in ("module", "weights"):  # the copy's paths in place of the original folder's
                value = str(config["model"].get(key) or "")
                if value.startswith(original + os.sep):
                    config["model"][key] = str(folder) + value[len(original) :]
        unpack(previous, out)
        try:
            pipeline = Pipeline(
                config,
                out,
                cache_dir=settings["cache_dir"],
                progress=False,
                search_path=folder,
                notes=settings["notes"],
                isolation=settings["isolation"],
                protected=[out, *settings["protected"]],
            )
            pipeline.prepare()
            results = run_and_report(pipeline)
        except Exception as error:  # reported as this submission's row; the others go on
            return "", f"failed during evaluation: {type(error).__name__}: {error}".encode()
        return json.dumps(results, default=str), pack(out)


def _isolation(submission: Submission, trust: bool) -> str:
    """Where a submission runs: ``sandbox`` (code or ``.pt2`` where the sandbox works), ``process`` (the
    same, trusted, where it does not), ``none`` (ONNX: no worker), or a ``refused: ...`` row text."""
    if submission.format == "onnx":
        return "none"
    support = sandbox_support()
    if support.available:
        return "sandbox"
    if trust:
        return "process"
    kind = "its .pt2 file's loader" if submission.format == "torch_export" else "its Python code"
    return (
        f"refused: {kind} would run without the sandbox, which is unavailable here ({support.reason}); "
        "install bubblewrap, or pass --trust-submissions to run it in a plain process"
    )
