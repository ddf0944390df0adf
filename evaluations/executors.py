"""Where the harness's work runs: in this process (``--executor local``) or as Ray tasks (``--executor ray``).

The pipeline cuts every long stage into units of work (:class:`Unit`: one chunk of test points of one
defence, attack, norm and epsilon) and hands each stage's units to an executor:

* :class:`LocalExecutor` computes them one after the other in this process (what the harness always did);
* :class:`RayExecutor` computes the units whose checkpoint is missing as Ray tasks, as many at a time as
  the cluster has room for, and **the driver writes each unit's checkpoint as its result returns**, so an
  interrupted run (driver or workers) resumes from every finished unit, with either executor: the
  checkpoints are the same files, keyed by what produced them, not by where.

Every task sets torch's thread count to the run's (``run.threads``, or the driver's torch default when it
is 0: Ray would otherwise give a task as many threads as CPUs it reserved, and models trained or attacked
with another thread count differ in their last bits); each reserves that many CPUs. Defences and attacks
reach the workers through Ray's object store, put once per run; models are trained once each, as tasks
(:meth:`RayExecutor.train`), and the driver writes them to the model cache. Code that is not installed (a
user's ``file.py:Class``) travels by value; installed packages, this project included, must be installed
on every node in the same version (a worker running other code is refused).

Faults: a task whose worker process dies is run again (``max_retries``, default 3: the unit's seed is
derived from its name, so the rerun gives the same result and only one result is written); an exception
raised by a unit is not retried (``retry_exceptions`` off: it would fail again). A unit that fails either
way is reported with its error once the other units of its stage have finished and been checkpointed, so a
rerun redoes only the failed ones.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .allocator import keep_freed_memory

if TYPE_CHECKING:  # pragma: no cover - only named in annotations; importing it would load torch
    from .storage import WorkStore

__all__ = [
    "EXECUTORS",
    "LocalExecutor",
    "RayExecutor",
    "Unit",
    "UnitsFailed",
    "check_code",
    "evaluate_remotely",
    "make_executor",
    "pack",
    "unpack",
]

#: The names ``--executor`` accepts.
EXECUTORS = ("local", "ray")
_HARNESS = Path(__file__).resolve().parent


@dataclass
class Unit:
    """One unit of work: ``function(*args)`` returns its arrays; ``stage``, ``name`` and ``key`` name its
    checkpoint (:class:`~evaluations.storage.WorkStore`)."""

    stage: str
    name: str
    key: dict[str, Any]
    function: Callable[..., Mapping[str, Any]]
    args: tuple = field(default_factory=tuple)


class UnitsFailed(RuntimeError):
    """Units of a stage failed (after their retries); every other unit of the stage was checkpointed.
    ``failures`` maps each failed unit's name to its error."""

    def __init__(self, stage: str, failures: dict[str, str]) -> None:
        self.stage = stage
        self.failures = failures
        listed = "; ".join(f"{name}: {error}" for name, error in failures.items())
        super().__init__(
            f"{len(failures)} unit(s) of the {stage} stage failed: {listed}. Every other unit is "
            "checkpointed: rerun the same command to retry only these"
        )


class LocalExecutor:
    """Every unit in this process, one after the other."""

    name = "local"

    def run_units(
        self, store: WorkStore, units: Sequence[Unit], done: Callable[[], Any] = lambda: None
    ) -> list[dict[str, np.ndarray]]:
        results = []
        for unit in units:
            results.append(store.fetch(unit.stage, unit.name, unit.key, lambda u=unit: u.function(*u.args)))
            done()
        return results

    def train(self, job: Callable[[], Any]) -> Any:
        return job()

    def check(self, objects: Mapping[str, Any]) -> None:
        """Nothing leaves this process: nothing to check."""

    def close(self) -> None:
        pass


def _run_unit(function: Callable[..., Mapping[str, Any]], threads: int, fingerprints: dict, *args: Any):
    """A unit in a Ray worker: the driver's code, the run's threads; returns its arrays and seconds."""
    import torch

    check_code(fingerprints)
    keep_freed_memory()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    arrays = {name: np.asarray(value) for name, value in function(*args).items()}
    return arrays, time.perf_counter() - start


def _run_job(job: Callable[[], Any], threads: int, fingerprints: dict) -> Any:
    import torch

    check_code(fingerprints)
    keep_freed_memory()
    torch.set_num_threads(threads)
    return job()


def _code_fingerprints() -> dict[str, str]:
    from art_smoothing_plugin.distributed import package_fingerprint

    return {"art_smoothing_plugin": package_fingerprint(), "evaluations": package_fingerprint(_HARNESS)}


def check_code(expected: dict[str, str]) -> None:
    here = _code_fingerprints()
    if here != expected:
        raise RuntimeError(
            f"this Ray worker runs other code than the driver (source fingerprints {here}, the driver's "
            f"{expected}; the worker imports the harness from {_HARNESS}): install the same version of "
            "art-smoothing-plugin on every node"
        )


class RayExecutor:
    """Units and model training as Ray tasks; checkpoints written by the driver as results return.

    :param address: where Ray runs when this process is not connected yet
        (:func:`art_smoothing_plugin.distributed.connect`: ``None`` starts a local instance).
    :param threads: torch threads (and CPUs reserved) per task.
    :param gpus: GPUs reserved per task (1 when the run's device is CUDA).
    :param max_retries: reruns of a task whose worker process died.
    :param timeout_s: about how long to try ``address`` before failing with an error naming it.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        threads: int = 1,
        gpus: float = 0.0,
        max_retries: int = 3,
        timeout_s: float = 30.0,
        log: Callable[[str], None] = print,
    ) -> None:
        from art_smoothing_plugin.distributed import connect, require_ray

        self.ray = require_ray()
        connect(address, timeout_s=timeout_s)
        self.threads = max(1, int(threads))
        self.log = log
        self.fingerprints = _code_fingerprints()
        options = {"num_cpus": self.threads, "num_gpus": gpus, "max_retries": max_retries}
        self._unit = self.ray.remote(_run_unit).options(retry_exceptions=False, **options)
        self._job = self.ray.remote(_run_job).options(retry_exceptions=False, **options)
        self._shared: dict[int, tuple[Any, Any]] = {}  # id(object) -> (object, its reference)
        self.max_retries = max_retries

    def check(self, objects: Mapping[str, Any]) -> None:
        """Refuse, before any work, an object the tasks need that cannot be pickled, naming it."""
        from art_smoothing_plugin.distributed import register_user_code, serialisation_problem

        register_user_code()  # code imported since (a user's model) travels by value too
        for name, value in objects.items():
            problem = serialisation_problem(value, name)
            if problem is not None:
                raise ValueError(f"{name} cannot be sent to the Ray workers: {problem}")

    def _share(self, value: Any) -> Any:
        """Defences and attacks go to the object store once; everything else travels with its task."""
        if isinstance(value, (np.ndarray, str, int, float, bool, type(None), tuple, list, dict)):
            return value
        entry = self._shared.get(id(value))
        if entry is None:
            entry = self._shared[id(value)] = (value, self.ray.put(value))
        return entry[1]

    def run_units(
        self, store: WorkStore, units: Sequence[Unit], done: Callable[[], Any] = lambda: None
    ) -> list[dict[str, np.ndarray]]:
        from art_smoothing_plugin.distributed import register_user_code

        ray = self.ray
        register_user_code()
        results: list[dict[str, np.ndarray] | None] = [None] * len(units)
        pending: dict[Any, int] = {}
        for position, unit in enumerate(units):
            arrays = store.load(unit.stage, unit.name, unit.key)
            if arrays is not None:
                results[position] = arrays
                done()
                continue
            args = [self._share(value) for value in unit.args]
            pending[self._unit.remote(unit.function, self.threads, self.fingerprints, *args)] = position
        failures: dict[str, str] = {}
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            position = pending.pop(ref)
            unit = units[position]
            try:
                arrays, seconds = ray.get(ref)
            except ray.exceptions.RayTaskError as error:  # the unit raised: not retried
                failures[unit.name] = _describe(error)
                continue
            except ray.exceptions.RayError as error:  # its worker kept dying: out of retries
                failures[unit.name] = f"{type(error).__name__} after {self.max_retries} retries: {error}"
                continue
            results[position] = store.save(unit.stage, unit.name, unit.key, arrays, seconds)
            done()
        if failures:
            raise UnitsFailed(units[0].stage, failures)
        return results  # type: ignore[return-value]

    def train(self, job: Callable[[], Any]) -> Any:
        """Run a training job as a task and return what it returns (the trained model)."""
        from art_smoothing_plugin.distributed import register_user_code

        ray = self.ray
        register_user_code()
        try:
            return ray.get(self._job.remote(job, self.threads, self.fingerprints))
        except ray.exceptions.RayTaskError as error:
            raise RuntimeError(f"training failed on a Ray worker: {_describe(error)}") from None

    def close(self) -> None:
        self._shared.clear()


def _describe(error: Exception) -> str:
    cause = getattr(error, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def make_executor(
    name: str,
    address: str | None = None,
    *,
    threads: int,
    gpus: float = 0.0,
    log: Callable[[str], None] = print,
) -> LocalExecutor | RayExecutor:
    """The executor called ``name`` (one of :data:`EXECUTORS`)."""
    if name == "local":
        if address:
            raise ValueError("--address applies to --executor ray only")
        return LocalExecutor()
    if name == "ray":
        timeout = float(os.environ.get("ART_SMOOTHING_RAY_TIMEOUT", "30"))
        return RayExecutor(address or None, threads=threads, gpus=gpus, timeout_s=timeout, log=log)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")


# -- instructor mode: one submission per task --------------------------------------------------------------
def pack(folder: Path) -> bytes:
    """A folder as the bytes of a tar archive (empty when the folder does not exist)."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        if folder.is_dir():
            archive.add(folder, arcname=".")
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    """Extract a tar archive made by :func:`pack` into ``folder`` (regular files and folders only, every
    path kept inside it: tarfile's ``data`` filter)."""
    import io
    import tarfile

    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
        archive.extractall(folder, filter="data")


def evaluate_remotely(
    jobs: Mapping[str, tuple[Any, Path]],
    address: str | None,
    task: Callable[..., tuple[str, bytes]],
    log: Callable[[str], None],
):
    """Evaluate submissions in parallel, one Ray task each; yields ``(name, results dict or error text)``
    as they finish, after writing each one's report folder where its pipeline would have.

    ``jobs`` maps each name to its prepared :class:`~evaluations.pipeline.Pipeline` (validated already,
    its settings reused) and the submission's folder; ``task(settings, submission, previous,
    fingerprints, threads)`` runs one in a worker (:func:`evaluations.leaderboard.evaluate_submission`)
    from the submission's folder and its earlier report folder (tar archives, :func:`pack`) and returns
    ``results.json``'s text and the new report folder packed (or ``""`` and an error message). Nothing a
    task returns is unpickled as an object of the submission's: JSON text and plain files only.
    """
    import json

    import torch

    executor = RayExecutor(address, threads=torch.get_num_threads(), log=log)
    ray = executor.ray
    remote = ray.remote(task).options(
        num_cpus=executor.threads, max_retries=executor.max_retries, retry_exceptions=False
    )
    pending = {}
    for name, (pipeline, folder) in jobs.items():
        settings = {
            "folder": str(folder),
            "config": pipeline.config,
            "cache_dir": str(pipeline.cache_dir),
            "notes": pipeline.notes,
            "isolation": pipeline.isolation,
            "protected": [str(path) for path in pipeline.protected],
        }
        log(f"submission {name}: evaluating (Ray task)")
        task = remote.remote(
            settings, pack(Path(folder)), pack(pipeline.out_dir), executor.fingerprints, executor.threads
        )
        pending[task] = (name, pipeline)
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        name, pipeline = pending.pop(ref)
        try:
            text, archive = ray.get(ref)
        except ray.exceptions.RayError as error:
            yield name, f"failed during evaluation: {_describe(error)}"
            continue
        if not text:
            yield name, archive.decode("utf-8", errors="replace")
            continue
        unpack(archive, pipeline.out_dir)
        yield name, json.loads(text)
