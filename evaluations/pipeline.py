"""The evaluation pipeline: data -> models -> defences -> clean -> certify -> attacks -> certificate check,
with stage timings, progress bars and resume. Its output is the per-example arrays of :class:`RunData`;
the metrics and report stages above it (:func:`evaluations.report.run_and_report`) turn them into
``results.json``, the TSV files, the Markdown report and the plots.

Every long stage is cut into units of work (one defence, one attack, one norm, one epsilon, one chunk of
``run.chunk_size`` test points). Each unit's result is a checkpoint file keyed by a hash of everything that
produced it (:class:`~evaluations.storage.WorkStore`), written atomically; a rerun with the same
configuration and output folder reuses every finished unit and computes only the rest, so an interrupted
run loses at most the unit it was in. Each unit draws its randomness from a seed derived from the run's
seed and the unit's name (:func:`~evaluations.reproducibility.derive_seed`), so a resumed run gives the
same numbers as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .attacks import Attack, AttackSettings, build_attacks
from .attacks.smoothadv import SmoothAdv
from .config import ConfigError, check_budgets
from .data import Dataset, load_dataset
from .defences import BuildContext, Defence, attack_points, build_defences
from .executors import EXECUTORS, LocalExecutor, RayExecutor, Unit, make_executor
from .models import DEFAULT_CACHE_DIR, ModelStore
from .reproducibility import config_hash, derive_seed
from .storage import WorkStore, atomic_write_json

__all__ = ["Pipeline", "RunData", "apportion_seconds", "package_versions", "read_events", "resolve_device"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("run.device", "'cpu' or 'auto' (no CUDA device is available here)", name)
    return torch.device(name)


def package_versions() -> dict[str, str]:
    """Versions of Python and of every package that affects the numbers."""
    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name, module in (
        ("torch", "torch"),
        ("numpy", "numpy"),
        ("scipy", "scipy"),
        ("art", "art"),
        ("torchattacks", "torchattacks"),
        ("scikit-learn", "sklearn"),
        ("art-smoothing-plugin", "art_smoothing_plugin"),
    ):
        try:
            versions[name] = str(__import__(module).__version__)
        except Exception:  # not installed or no version: record that, never fail a run for it
            versions[name] = "unavailable"
    return versions


class RunData:
    """Everything the stages produce, kept in memory for the metrics and the report."""

    def __init__(self) -> None:
        self.clean: dict[str, dict[str, np.ndarray]] = {}  # defence -> {"idx","label","predict","detected"}
        self.certified: dict[str, dict[str, np.ndarray]] = {}  # defence -> certification arrays
        self.empirical: list[dict[str, Any]] = []  # one dict of arrays per (defence, attack, norm, eps)
        self.checks: dict[str, dict[str, Any]] = {}  # defence -> certificate-check arrays and "attempted"


@dataclass(frozen=True)
class AttackJob:
    """One (defence, attack, norm, eps) of the attacks stage, on the first ``points`` test points;
    ``sweep``: a budget of the checklist's eps sweep, beyond the grid."""

    defence: Defence
    attack: Attack
    norm: str
    eps: float
    points: int
    sweep: bool


def _chunks(count: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def _distances(x: np.ndarray, x_adv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    delta = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    return np.linalg.norm(delta, axis=1), np.abs(delta).max(axis=1) if len(x) else np.zeros(0)


class Pipeline:
    """One evaluation run.

    :param config: a validated configuration (:func:`evaluations.config.resolve_config`).
    :param out_dir: where results, checkpoints and the report go; rerunning with the same folder resumes.
    :param cache_dir: trained-model cache (default ``~/.cache/art-smoothing/models``).
    :param progress: tqdm progress bars.
    :param log: receives one line per notable event (stage start/end, training, resume counts).
    :param search_path: folder searched first when importing a user's model (a submission's folder).
    :param notes: sentences the report prints near its top (e.g. what instructor mode overrode).
    :param isolation: where a user's code or ``.pt2`` file runs (default: the config's
        ``isolation.mode``); instructor mode passes ``sandbox`` (or ``process`` when trusted).
    :param protected: paths a sandboxed user's model must not see (other submissions, results, ...).
    :param executor: where the units of work and the model training run: ``"local"`` (this process),
        ``"ray"`` (Ray tasks; :mod:`evaluations.executors`), or an executor object.
    :param address: the Ray cluster for ``executor="ray"`` (``None``: the one this process is connected
        to, else a local instance).
    """

    def __init__(
        self,
        config: dict[str, Any],
        out_dir: str | Path,
        *,
        cache_dir: str | Path | None = None,
        progress: bool = True,
        log: Callable[[str], None] | None = None,
        search_path: Path | None = None,
        notes: list[str] | None = None,
        isolation: str | None = None,
        protected: Sequence[Path] = (),
        executor: str | LocalExecutor | RayExecutor = "local",
        address: str | None = None,
    ) -> None:
        if isinstance(executor, str) and executor not in EXECUTORS:
            raise ConfigError("--executor", f"one of {', '.join(EXECUTORS)}", executor)
        if address and executor != "ray":
            raise ConfigError("--address", "used with --executor ray", address)
        self.executor: LocalExecutor | RayExecutor = LocalExecutor() if executor == "local" else executor
        self._executor_spec = (executor, address)
        self.config = config
        self.isolation = isolation
        self.protected = list(protected)
        self.notes = list(notes or [])
        self.out_dir = Path(out_dir)
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE_DIR).expanduser()
        self.progress = progress
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self.search_path = search_path
        self.device = resolve_device(config["run"]["device"])
        self.store = WorkStore(self.out_dir / "checkpoints", self.out_dir / "events.jsonl")
        self.timings: dict[str, float] = {}
        self.data = RunData()
        self.dataset: Dataset | None = None
        self.models: ModelStore | None = None
        self.defences: list[Defence] = []
        self.attacks: list[Attack] = []

    # -- bookkeeping -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage (added to :attr:`timings`) and log its start and, when it finishes, its end (an
        interrupted stage logs no end: the command's one line says what happened)."""
        self.log(f"[{name}] start")
        start = time.perf_counter()
        finished = False
        try:
            yield
            finished = True
        finally:
            seconds = time.perf_counter() - start
            self.timings[name] = self.timings.get(name, 0.0) + seconds
            if finished:
                self.log(f"[{name}] {seconds:.1f} s")

    def _bar(self, total: int, desc: str) -> tqdm:
        return tqdm(total=total, desc=desc, unit="unit", disable=not self.progress, leave=False)

    def seed(self, *parts: Any) -> int:
        return derive_seed(self.config["run"]["seed"], *parts)

    # -- stages ----------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Cheap checks that must pass before any long work: load the data, import and check a user's
        model (raises :class:`~evaluations.config.ConfigError`), create the output folder."""
        threads = self.config["run"]["threads"]
        if threads:
            torch.set_num_threads(threads)
        with self.stage("data"):
            section = self.config["dataset"]
            self.dataset = load_dataset(section["name"], path=section["path"] or None, root=section["root"])
        check_budgets(self.config, self.dataset.input_shape)
        self.models = ModelStore(
            self.config,
            self.dataset,
            self.cache_dir,
            self.device,
            self.progress,
            self.log,
            self.search_path,
            isolation=self.isolation,
            protected=self.protected,
        )
        if self._executor_spec[0] == "ray":
            self.executor = self._connect(self._executor_spec[1])
        self.models.run_training = self.executor.train
        if self.models.user_model:
            module, _ = self.models.load_user()
            self.executor.check({"the model (model.module)": module})
        self.attacks = build_attacks(self.config)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.out_dir / "config.json", self.config)

    def _connect(self, address: str | None) -> RayExecutor:
        """The Ray executor, with the run's thread count per task (``run.threads``, else this process's)."""
        try:
            return make_executor(
                "ray",
                address,
                threads=torch.get_num_threads(),
                gpus=1.0 if self.device.type == "cuda" else 0.0,
                log=self.log,
            )
        except ImportError as error:
            raise ConfigError("--executor", "an installed executor", "ray", hint=str(error)) from None
        except ConnectionError as error:
            raise ConfigError(
                "--address",
                "the address of a running Ray cluster (HOST:PORT, auto, ray://HOST:PORT)",
                address,
                hint=str(error),
            ) from None
        except ValueError as error:
            raise ConfigError(
                "--address", "HOST:PORT, auto or ray://HOST:PORT", address, hint=str(error)
            ) from None

    def points(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The first ``count`` test points of the fixed split (already shuffled and stratified)."""
        assert self.dataset is not None
        count = min(count, len(self.dataset.x_test))
        return np.arange(count), self.dataset.x_test[:count], self.dataset.y_test[:count]

    def attack_points(self, defence: Defence) -> int:
        return attack_points(self.config, defence.kind)

    def build(self) -> None:
        assert self.dataset is not None and self.models is not None
        with self.stage("models"):
            context = BuildContext(
                self.dataset, self.config, self.models, self.device, self.progress, self.log
            )
            self.defences = build_defences(context)
        # Before any unit runs: everything the tasks need must travel (names the one that cannot).
        self.executor.check(
            {
                **{f"defence {d.name!r}": d for d in self.defences},
                **{f"attack {a.name!r}": a for a in self.attacks},
            }
        )
        for event in self.models.events:
            self.log(f"model {event['name']}: {event['status']} ({event['seconds']:.1f} s)")

    def unit_key(self, defence: Defence, **extra: Any) -> dict[str, Any]:
        assert self.dataset is not None
        return {
            "defence": defence.identity,
            "dataset": self.dataset.name,
            "seed": self.config["run"]["seed"],
            "chunk_size": self.config["run"]["chunk_size"],
            **extra,
        }

    def _run_units(self, units: list[Unit], bar: tqdm) -> list[dict[str, np.ndarray]]:
        return self.executor.run_units(self.store, units, bar.update)

    def _defence_chunks(
        self, stage: str, function: Callable[..., dict[str, np.ndarray]], plan: list[tuple[Defence, int]]
    ) -> tuple[list[Unit], list[tuple[Defence, np.ndarray, np.ndarray, int]]]:
        """The units of a stage that applies ``function(defence, x_chunk, seed)`` to the first ``count``
        test points of each ``(defence, count)`` of ``plan``, chunk by chunk, and how they group back:
        ``(defence, index, labels, number of chunks)`` per defence."""
        size = self.config["run"]["chunk_size"]
        units, groups = [], []
        for defence, count in plan:
            index, x, y = self.points(count)
            chunks = _chunks(len(index), size)
            groups.append((defence, index, y, len(chunks)))
            for start, stop in chunks:
                key = self.unit_key(defence, stage=stage, start=start, stop=stop)
                seed = self.seed(stage, defence.name, start)
                units.append(
                    Unit(stage, f"{defence.name}-{start}", key, function, (defence, x[start:stop], seed))
                )
        return units, groups

    def run_clean(self) -> None:
        plan = [(defence, self.attack_points(defence)) for defence in self.defences]
        units, groups = self._defence_chunks("clean", _clean_unit, plan)
        with self.stage("clean"), self._bar(len(units), "clean predictions") as bar:
            results = iter(self._run_units(units, bar))
            for defence, index, y, count in groups:
                parts = [next(results) for _ in range(count)]
                self.data.clean[defence.name] = {
                    "idx": index,
                    "label": y,
                    "predict": _concat(parts, "predict", np.int64),
                    "detected": _concat(parts, "detected", np.int8),
                }

    def run_certify(self) -> None:
        plan = [(defence, defence.points) for defence in self.defences if defence.smoothed]
        units, groups = self._defence_chunks("certify", _certify_unit, plan)
        with self.stage("certify"), self._bar(len(units), "certify") as bar:
            results = iter(self._run_units(units, bar))
            for defence, index, y, count in groups:
                parts = [next(results) for _ in range(count)]
                self.data.certified[defence.name] = {
                    "idx": index,
                    "label": y,
                    **{name: _concat(parts, name) for name in parts[0] if not name.startswith("_")},
                }

    def attack_plan(self) -> list[AttackJob]:
        """Every (defence, attack, norm, eps) to run: the grid's budgets, and for an attack with a sweep
        (AutoAttack) also the budget where every input is reachable (the checklist's eps sweep)."""
        assert self.dataset is not None
        grid = {"linf": self.config["attacks"]["linf_eps"], "l2": self.config["attacks"]["l2_eps"]}
        dims = int(np.prod(self.dataset.input_shape))
        plan = []
        for defence in self.defences:
            if self.attack_points(defence) == 0:
                continue
            for attack in self.attacks:
                if not attack.applies_to(defence):
                    continue
                points = min(self.attack_points(defence), attack.max_points() or self.attack_points(defence))
                for norm in attack.norms:
                    budgets = [float(eps) for eps in grid[norm] if eps > 0]
                    plan.extend(AttackJob(defence, attack, norm, eps, points, False) for eps in budgets)
                    for eps in attack.sweep_budgets(norm, dims):
                        if eps not in budgets:
                            plan.append(AttackJob(defence, attack, norm, eps, points, True))
        return plan

    def _unit_chunks(self, job: AttackJob) -> list[tuple[int, int]]:
        count = len(self.points(job.points)[0])
        return _chunks(count, self.config["run"]["chunk_size"] if job.attack.chunked else max(1, count))

    def run_attacks(self) -> None:
        plan = self.attack_plan()
        units, groups = [], []
        for job in plan:
            defence, attack, norm, eps = job.defence, job.attack, job.norm, job.eps
            index, x, y = self.points(job.points)
            part_names = list(attack.parts(defence))
            chunks = self._unit_chunks(job)
            groups.append((job, index, y, len(chunks)))
            for start, stop in chunks:
                unit = f"{defence.name}-{attack.name}-{norm}-{eps:g}-{start}"
                key = self.unit_key(
                    defence, stage="attack", attack=attack.identity(norm), eps=eps, start=start, stop=stop
                )
                # Every seed is drawn here on the driver, so a unit computes the same on any worker.
                predict_seeds = {
                    name: self.seed("predict", f"{unit}/{name}" if name else unit)
                    for name in ["", *part_names]
                }
                seed = self.seed("attack", defence.name, attack.name, norm, eps, start)
                args = (defence, attack, x[start:stop], y[start:stop], norm, eps, seed, predict_seeds)
                units.append(Unit("attacks", unit, key, _attack_unit, args))
        with self.stage("attacks"), self._bar(len(units), "attacks") as bar:
            results = iter(self._run_units(units, bar))
            for job, index, y, count in groups:
                defence, attack, norm, eps = job.defence, job.attack, job.norm, job.eps
                chunks = [next(results) for _ in range(count)]
                common = {"defence": defence.name, "norm": norm, "eps": eps, "idx": index, "label": y}
                components = {
                    name.split(".", 1)[1]: float(sum(float(c[name][0]) for c in chunks))
                    for name in chunks[0]
                    if name.startswith("seconds.")
                }
                self.data.empirical.append(
                    {
                        **common,
                        "attack": attack.name,
                        "predict": _concat(chunks, "predict", np.int64),
                        "detected": _concat(chunks, "detected", np.int8),
                        "l2_distance": _concat(chunks, "l2_distance"),
                        "linf_distance": _concat(chunks, "linf_distance"),
                        "threat": attack.threat(defence),
                        "gradient": attack.gradient,
                        "sweep": job.sweep,
                        "seconds": float(sum(float(c["seconds"][0]) for c in chunks)),
                        "units": len(chunks),
                        "component_seconds": components if len(components) > 1 else {},
                    }
                )
                for name, meta in attack.parts(defence).items():
                    effort = meta.get("more_effort_of")
                    self.data.empirical.append(
                        {
                            **common,
                            "attack": f"{attack.name}/{name}",
                            "part_of": attack.name,
                            "predict": _concat(chunks, f"part.{name}.predict", np.int64),
                            "detected": _concat(chunks, f"part.{name}.detected", np.int8),
                            "l2_distance": _concat(chunks, f"part.{name}.l2_distance"),
                            "linf_distance": _concat(chunks, f"part.{name}.linf_distance"),
                            "threat": meta["threat"],
                            "gradient": meta["gradient"],
                            "more_effort_of": f"{attack.name}/{effort}" if effort else None,
                            "sweep": job.sweep,
                        }
                    )

    def run_certificate_check(self) -> None:
        """Attack every certified point among the first ``certificate_check.points`` points certified of
        each smoothed defence that is attacked at all (``attack_points`` > 0) with SmoothAdv at
        ``radius_factor`` times its own certified radius, towards leaving its certified class, and PREDICT
        with fresh noise; a non-abstained answer other than the certified class is a flip. All of those
        first points are the check's trials (``attempted``): the prefix is fixed before looking at which
        points certify, so the flips of a sound certifier stay within Binomial(attempted, alpha +
        predict_alpha)."""
        section = self.config["certificate_check"]
        if not section["enabled"]:
            return
        settings = AttackSettings.from_config(self.config)
        attack = SmoothAdv(settings)
        size = self.config["run"]["chunk_size"]
        jobs = []
        for defence in self.defences:
            if not defence.smoothed or defence.name not in self.data.certified:
                continue
            if self.attack_points(defence) == 0:  # "not attacked" covers this attack too
                continue
            certified = self.data.certified[defence.name]
            attempted = min(section["points"], len(certified["labels"]))
            chosen = np.flatnonzero(certified["labels"][:attempted] != -1)
            jobs.append((defence, chosen, attempted))
        units, groups = [], []
        for defence, chosen, attempted in jobs:
            certified = self.data.certified[defence.name]
            x = self.dataset.x_test[certified["idx"][chosen]]
            target = certified["labels"][chosen]
            budget = section["radius_factor"] * certified["radii"][chosen]
            chunks = _chunks(len(chosen), size)
            groups.append((defence, chosen, attempted, target, budget, len(chunks)))
            for start, stop in chunks:
                unit = f"{defence.name}-{start}"
                key = self.unit_key(
                    defence,
                    stage="certificate_check",
                    check={k: section[k] for k in ("steps", "radius_factor")},
                    attack=attack.identity("l2"),
                    targets=config_hash(target[start:stop].tolist()),
                    budgets=config_hash(np.round(budget[start:stop], 10).tolist()),
                )
                args = (
                    defence,
                    attack,
                    x[start:stop],
                    target[start:stop],
                    budget[start:stop],
                    section["steps"],
                    self.seed("check", defence.name, start),
                    self.seed("check-predict", unit),
                )
                units.append(Unit("certificate_check", unit, key, _check_unit, args))
        with self.stage("certificate_check"), self._bar(len(units), "certificate check") as bar:
            results = iter(self._run_units(units, bar))
            for defence, chosen, attempted, target, budget, count in groups:
                certified = self.data.certified[defence.name]
                parts = [next(results) for _ in range(count)]
                predictions = _concat(parts, "predict", np.int64) if parts else np.zeros(0, np.int64)
                self.data.checks[defence.name] = {
                    "idx": certified["idx"][chosen],
                    "certified_label": target,
                    "radius": certified["radii"][chosen],
                    "eps": budget,
                    "predict": predictions,
                    "l2_distance": _concat(parts, "l2_distance") if parts else np.zeros(0),
                    "attempted": attempted,
                }

    # -- the whole run ---------------------------------------------------------------------------------
    def run(self) -> RunData:
        """Run every stage up to the certificate check (reusing finished units); returns :attr:`data`.
        :func:`evaluations.report.run_and_report` runs this, then the metrics and report stages."""
        if self.dataset is None:
            self.prepare()
        if not self.defences:
            self.build()
        self.run_clean()
        self.run_certify()
        self.run_attacks()
        self.run_certificate_check()
        return self.data

    def close(self) -> None:
        """Stop the worker of a user's model, if it has one (a later stage would open it again)."""
        if self.models is not None:
            self.models.release_user()
        self.executor.close()


# -- units of work: module-level functions of their arguments alone (so that they can run anywhere) ------
def _clean_unit(defence: Defence, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    return {"predict": defence.predict(x, seed=seed), "detected": _detected(defence.detect(x), len(x))}


def _certify_unit(defence: Defence, x: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    begin = time.perf_counter()
    result = defence.certify(x, seed=seed)
    seconds = time.perf_counter() - begin
    return {
        "time": apportion_seconds(seconds, result.samples_used),
        "labels": result.labels,
        "radii": result.radii,
        "p_lower": result.p_lower,
        "candidates": result.candidates,
        "counts_top": result.counts_top,
        "samples_used": result.samples_used,
    }


def _judge(defence: Defence, x: np.ndarray, adversarial: np.ndarray, predict_seed: int) -> dict[str, Any]:
    """The defence's verdict on attacked inputs (PREDICT with fresh noise of the unit's own seed for a
    smoothed defence), its detector's, and the perturbations' sizes."""
    l2, linf = _distances(x, adversarial)
    return {
        "predict": defence.predict(adversarial, seed=predict_seed),
        "detected": _detected(defence.detect(adversarial), len(x)),
        "l2_distance": l2,
        "linf_distance": linf,
    }


def _attack_unit(
    defence: Defence,
    attack: Attack,
    x: np.ndarray,
    y: np.ndarray,
    norm: str,
    eps: float,
    seed: int,
    predict_seeds: dict[str, int],
) -> dict[str, np.ndarray]:
    """One chunk of one attack job: the attack (and, for a composite attack such as AutoAttack, each of its
    parts) judged by the defence, with the seconds each part took. ``predict_seeds[""]`` judges the attack,
    ``predict_seeds[part]`` each part."""
    output = attack.perturb_detailed(defence, x, y, norm=norm, eps=eps, seed=seed)
    result = _judge(defence, x, output.adversarial, predict_seeds[""])
    result["seconds"] = np.array([sum(output.seconds.values())])
    for name, seconds in output.seconds.items():
        result[f"seconds.{name}"] = np.array([seconds])
    for name in predict_seeds:
        if name:
            judged = _judge(defence, x, output.parts[name], predict_seeds[name])
            result.update({f"part.{name}.{k}": v for k, v in judged.items()})
    return result


def _check_unit(
    defence: Defence,
    attack: Attack,
    x: np.ndarray,
    target: np.ndarray,
    budget: np.ndarray,
    steps: int,
    seed: int,
    predict_seed: int,
) -> dict[str, np.ndarray]:
    adversarial = attack.perturb(defence, x, target, norm="l2", eps=budget, seed=seed, steps=steps)
    l2, _ = _distances(x, adversarial)
    return {"predict": defence.predict(adversarial, seed=predict_seed), "l2_distance": l2}


def apportion_seconds(seconds: float, samples: np.ndarray) -> np.ndarray:
    """Each point's share of a chunk's wall time, in proportion to the noisy samples it used.

    The points of a chunk are certified together (their samples share forward batches), so no point has
    a time of its own; splitting the chunk's time by samples is the honest per-point figure (Cohen's
    ``time`` column), it sums to the chunk's time, and it differs between points whenever their sample
    counts do (adaptive certification) or their chunks ran at different speeds."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 1 or np.any(samples < 0):
        raise ValueError(f"samples must be a 1-D array of non-negative counts, got {samples!r}")
    total = samples.sum()
    if total == 0:
        return np.full(len(samples), seconds / max(1, len(samples)))
    return seconds * samples / total


def _detected(flags: np.ndarray | None, count: int) -> np.ndarray:
    """Detector flags as int8 (1 flagged, 0 not, -1 when the defence has no detector)."""
    if flags is None:
        return np.full(count, -1, dtype=np.int8)
    return np.asarray(flags, dtype=bool).astype(np.int8)


def _concat(parts: list[dict[str, np.ndarray]], name: str, dtype: Any = None) -> np.ndarray:
    array = np.concatenate([np.atleast_1d(p[name]) for p in parts]) if parts else np.zeros(0)
    return array.astype(dtype) if dtype is not None else array


def read_events(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every event logged in ``<out_dir>/events.jsonl`` (all runs that wrote there, oldest first)."""
    path = Path(out_dir) / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
