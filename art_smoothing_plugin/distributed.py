"""Certification over Ray workers, with results identical to one process.

:class:`DistributedSmoothing` runs ``certify``, ``certify_detailed``, ``certify_adaptive`` and
``predict_labels`` of any smoothing estimator of this package (randomized, denoised, diffusion denoised)
on a pool of Ray actors. Each actor holds one replica of the estimator, shipped once: the driver puts the
pickled estimator in Ray's object store and every actor's constructor reads it from there (never once per
task). The inputs of a call are cut into shards; each shard runs on whichever actor is free, and the
results come back as the same :class:`~art_smoothing_plugin.smoothing.CertificationResult` (or labels),
in input order, with a tqdm bar over inputs.

**Identical results.** The driver takes the call's :class:`~art_smoothing_plugin.sampling.NoiseKey` once
(from ``seed``, or from the driver estimator's own noise, which advances as a local call's would) and
sends it with each shard's global index of its first input; noise is a function of (key, global index,
phase), and shards are cut on the batch grid (:func:`~art_smoothing_plugin.sampling.shard_alignment`), so
each shard evaluates exactly the batches the single-process call evaluates for its inputs. With the same
batch size, torch thread count, torch build and device type, counts, labels and radii are bit-identical
to the single-process call, for any number of workers (docs/scale-out.md says what torch guarantees).

**One query budget.** A budget of a query-only or HTTP classifier (or the denoised estimator's own) is
one budget for the whole call: a ledger actor holds what remains of each, and every replica charges it
before each query, as a single process does, so the replicas together never exceed it. Queries made by
an attempt that a worker's death cut short stay charged (they were sent).

**Faults.** A worker process that dies is restarted (``max_restarts``) and its shard is run again from
the start (``max_task_retries``): the result is identical, and only that attempt's result is used, so
nothing is lost or counted twice. Exceptions raised by the estimator (bad input, an exhausted budget,
an API error) are not retried (``retry_exceptions`` stays off: they would fail again) and stop the call.
A shard whose worker keeps dying is reported after the retries, once the other shards have finished.

**User code.** Modules that are not installed (a model given as ``file.py:Class``, a script's own
classes, a submission folder) travel *by value* inside the pickle
(``cloudpickle.register_pickle_by_value``); installed packages, this one included, must be installed on
every node (a worker whose copy of this package differs from the driver's is refused). For larger code
bases use Ray's runtime environments (``ray.init(runtime_env={"py_modules": [...]})``).
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import sys
import sysconfig
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import statistics
from ._validation import check_int_at_least, check_positive_float
from .sampling import shard_alignment
from .smoothing import CertificationResult

__all__ = [
    "DistributedSmoothing",
    "ShardFailedError",
    "connect",
    "package_fingerprint",
    "require_ray",
]

INSTALL_HINT = (
    "install it with: pip install 'art-smoothing-plugin[distributed]' (or pip install 'ray>=2.40,<3')"
)
#: Per-input entries of ``CertificationResult.extras`` (concatenated across shards); ``SUMMED_EXTRAS``
#: are counts over the call (added up); every other entry is the same in every shard.
PER_INPUT_EXTRAS = ("p_upper", "stop_look", "certified")
SUMMED_EXTRAS = ("queries", "api")


class ShardFailedError(RuntimeError):
    """Some shards failed after their retries (their workers kept dying). ``failures`` maps each failed
    shard ``(start, stop)`` to its error; ``partial`` holds the results of the shards that succeeded."""

    def __init__(
        self, message: str, failures: dict[tuple[int, int], str], partial: dict[tuple[int, int], Any]
    ):
        super().__init__(message)
        self.failures = failures
        self.partial = partial


def require_ray() -> Any:
    """The ``ray`` module, or ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            f"the distributed executor needs Ray, which is not installed; {INSTALL_HINT}"
        ) from None
    return ray


def connect(address: str | None = None, *, timeout_s: float = 30.0, **init_options: Any) -> None:
    """Connect this process to Ray, unless it already is.

    :param address: ``None`` or ``"local"``: start a local instance on this machine (no dashboard, no usage
        reporting unless ``RAY_USAGE_STATS_ENABLED`` says otherwise); ``"auto"``: the cluster already
        running on this machine (``ray start --head``); ``"HOST:PORT"``: a cluster's head (its GCS port,
        6379 by default); ``"ray://HOST:PORT"``: a cluster through Ray Client (port 10001).
    :param timeout_s: about how long to try ``HOST:PORT`` (accepting a connection, then answering as a Ray
        cluster) before giving up with an error naming it.
    :param init_options: passed to ``ray.init`` (``num_cpus``, ``runtime_env``, ...).
    """
    ray = require_ray()
    if ray.is_initialized():
        return
    timeout_s = check_positive_float("timeout_s", timeout_s)
    if address in (None, "local"):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        init_options.setdefault("include_dashboard", False)
        ray.init(**init_options)
        return
    if not isinstance(address, str):
        raise ValueError(
            f"address must be 'local', 'auto', 'HOST:PORT' or 'ray://HOST:PORT', got {address!r}"
        )
    if address != "auto":
        _probe(address, timeout_s)
    # Something accepts connections there; Ray itself retries about once a second for 20 attempts before
    # it gives up on a port that is not a Ray cluster's: keep that within timeout_s too.
    constants = getattr(getattr(ray, "_private", None), "ray_constants", None)
    retries = getattr(constants, "NUM_REDIS_GET_RETRIES", None)
    if retries is not None:
        constants.NUM_REDIS_GET_RETRIES = max(1, min(int(retries), math.ceil(timeout_s)))
    try:
        ray.init(address=address, **init_options)
    except ConnectionError as error:
        raise ConnectionError(
            f"could not connect to a Ray cluster at address {address!r} within about {timeout_s:g} s: {error}"
        ) from None
    finally:
        if retries is not None:
            constants.NUM_REDIS_GET_RETRIES = retries


def _probe(address: str, timeout_s: float) -> None:
    """Fail within ``timeout_s`` with a message naming ``address`` if nothing accepts connections there."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"address must be 'local', 'auto', 'HOST:PORT' or 'ray://HOST:PORT' (e.g. 10.0.0.5:6379), "
            f"got {address!r}"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        raise ConnectionError(
            f"no Ray cluster reachable at address {address!r} within {timeout_s:g} s ({error}); start one "
            "with `ray start --head` on that machine, check the host and port, or leave the address out "
            "to start a local instance"
        ) from None


def package_fingerprint(root: str | os.PathLike[str] | None = None) -> str:
    """A hash of the source files of a package (this one by default): driver and workers must run the
    same code.

    :param root: the package's folder."""
    root = Path(__file__).resolve().parent if root is None else Path(root)
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


# -- what travels to the workers ---------------------------------------------------------------------------
def _install_locations() -> list[str]:
    paths = sysconfig.get_paths()
    places = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    try:
        import site

        places.update(site.getsitepackages())
        places.add(site.getusersitepackages())
    except AttributeError:  # pragma: no cover - virtualenvs without site.getsitepackages
        pass
    return sorted(os.path.realpath(p) + os.sep for p in places if p)


def register_user_code() -> list[str]:
    """Register for pickling by value every imported module that is not installed (not under the standard
    library or site-packages) and not part of this project: user models given as ``file.py:Class``,
    scripts' and submissions' modules. Returns their names. Registering a module costs nothing until one
    of its classes or functions is pickled."""
    ray = require_ray()
    installed = _install_locations()
    own = (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "evaluations")
    names = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not file or name == "__main__" or name.startswith(("art_smoothing_plugin", "evaluations")):
            continue
        real = os.path.realpath(file)
        if any(real.startswith(place) for place in installed) or any(
            Path(real).is_relative_to(folder) for folder in own
        ):
            continue
        try:
            ray.cloudpickle.register_pickle_by_value(module)
        except (ValueError, TypeError):  # pragma: no cover - a module cloudpickle cannot take by value
            continue
        names.append(name)
    return names


def serialisation_problem(obj: Any, name: str = "estimator") -> str | None:
    """``None`` if ``obj`` pickles for the workers, else which attribute (by path) does not, and why."""
    ray = require_ray()
    try:
        ray.cloudpickle.dumps(obj)
        return None
    except Exception as error:  # any pickling failure is reported with the culprit's path
        culprit = _find_unpicklable(obj, name, ray.cloudpickle.dumps, depth=8, seen=set())
        path, bad, reason = culprit or (name, obj, error)
        return f"{path} (a {type(bad).__name__}) cannot be pickled: {type(reason).__name__}: {reason}"


def _children(obj: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(obj, dict):
        return ((f"[{k!r}]", v) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return ((f"[{i}]", v) for i, v in enumerate(obj))
    state = getattr(obj, "__dict__", None)
    if isinstance(state, dict):
        items = []
        for key, value in state.items():
            if key in ("_modules", "_parameters", "_buffers") and isinstance(value, dict):
                items.extend((f".{k}", v) for k, v in value.items())
            else:
                items.append((f".{key}", value))
        return items
    return ()


def _find_unpicklable(obj: Any, path: str, dumps: Callable[[Any], bytes], depth: int, seen: set[int]):
    """The deepest attribute on a failing path, as ``(path, object, error)``, or None. A bound method
    of an object already on the path (the estimator's own methods) fails only because of what that object
    holds: it is passed over for the attribute that really fails."""
    if id(obj) in seen or depth == 0:
        return None
    seen.add(id(obj))
    fallback = None
    for suffix, child in _children(obj):
        try:
            dumps(child)
        except Exception as error:
            deeper = _find_unpicklable(child, path + suffix, dumps, depth - 1, seen)
            if deeper is not None:
                return deeper
            if id(getattr(child, "__self__", None)) in seen:
                continue
            fallback = fallback or (path + suffix, child, error)
    return fallback


# -- the actors --------------------------------------------------------------------------------------------
class _Replica:
    """One replica of the estimator in a Ray worker process."""

    def __init__(self, estimator: Any, torch_threads: int, fingerprint: str) -> None:
        import torch

        here = package_fingerprint()
        if here != fingerprint:
            import art_smoothing_plugin

            raise RuntimeError(
                f"this worker imports art_smoothing_plugin from {Path(art_smoothing_plugin.__file__).parent} "
                f"(source fingerprint {here}), which differs from the driver's ({fingerprint}); install the "
                "same version on every node (or put the driver's checkout first on the workers' PYTHONPATH)"
            )
        torch.set_num_threads(torch_threads)
        self.estimator = estimator
        self.counters = estimator._query_counters()

    def ready(self) -> int:
        return os.getpid()

    def auto_batch_size(self, x_one: np.ndarray, precision: str | None, channels_last: bool) -> int | None:
        """What ``batch_size="auto"`` of ``certify_adaptive`` resolves to on this worker."""
        estimator = self.estimator
        return estimator._adaptive_batch_size("auto", estimator._to_tensor(x_one), precision, channels_last)

    def run(self, method: str, x: np.ndarray, options: dict[str, Any], ledger: Any) -> tuple[Any, list[int]]:
        before = [counter.query_count for counter in self.counters]
        if ledger is not None:
            for slot, counter in enumerate(self.counters):
                counter.charge_to(_LedgerCharge(ledger, slot))
        try:
            result = getattr(self.estimator, method)(x, **options)
        finally:
            for counter in self.counters:
                counter.charge_to(None)
        return result, [c.query_count - b for c, b in zip(self.counters, before, strict=True)]


class _LedgerCharge:
    """Charges one counter's queries to the call's ledger actor (a blocking call before each query)."""

    def __init__(self, ledger: Any, slot: int) -> None:
        self.ledger, self.slot = ledger, slot

    def __call__(self, count: int) -> None:
        import ray

        from .classifiers.callable import QueryBudgetExceeded

        refusal = ray.get(self.ledger.charge.remote(self.slot, count))
        if refusal is not None:
            raise QueryBudgetExceeded(refusal)


class _Ledger:
    """What remains of each query budget during one call, for every replica at once."""

    def __init__(self, remaining: list[int | None]) -> None:
        self.remaining = list(remaining)
        self.used = [0] * len(remaining)

    def charge(self, slot: int, count: int) -> str | None:
        left = self.remaining[slot]
        if left is not None and count > left:
            return (
                f"query budget exhausted: {self.used[slot]} queries of this call used across the workers, "
                f"{left} left, {count} more needed; nothing past the budget was classified"
            )
        if left is not None:
            self.remaining[slot] = left - count
        self.used[slot] += count
        return None

    def totals(self) -> list[int]:
        return self.used


# -- the pool ----------------------------------------------------------------------------------------------
class DistributedSmoothing:
    """An estimator's certification on a pool of Ray actors, with the estimator's own call signatures.

    :param estimator: a ``RandomizedSmoothingClassifier`` or ``DenoisedSmoothingClassifier`` (diffusion
        denoisers included). Its own noise advances with each call made here, as with local calls.
    :param num_workers: actors (replicas).
    :param cpus_per_worker: CPUs each actor reserves (fractions allowed: Ray schedules by them).
    :param gpus_per_worker: GPUs each actor reserves; default 1 when the estimator runs on CUDA, else 0.
        A fraction puts several actors on one GPU.
    :param torch_threads: torch intra-op threads per actor; default ``max(1, round(cpus_per_worker))``.
        Results are bit-identical to a single process that uses the same number.
    :param shard_size: inputs per shard (rounded up to the batch grid); default about four shards per
        worker, so that a slow worker does not hold the others up.
    :param max_restarts, max_task_retries: how often a dead actor is restarted and its running shard
        retried (Ray's actor options); application exceptions are never retried.
    :param address: where Ray runs, if this process is not connected yet (see :func:`connect`).
    :param start_timeout_s: how long to wait for every actor to start (they wait for free resources).
    :param progress: a tqdm bar over the inputs of each call.
    """

    def __init__(
        self,
        estimator: Any,
        *,
        num_workers: int = 2,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float | None = None,
        torch_threads: int | None = None,
        shard_size: int | None = None,
        max_restarts: int = 3,
        max_task_retries: int = 3,
        address: str | None = None,
        start_timeout_s: float = 120.0,
        progress: bool = True,
    ) -> None:
        from .estimators._smoothing_estimator import SmoothingEstimatorMixin

        if not isinstance(estimator, SmoothingEstimatorMixin):
            raise ValueError(
                "estimator must be a RandomizedSmoothingClassifier or DenoisedSmoothingClassifier, got "
                f"{type(estimator).__name__}"
            )
        self.num_workers = check_int_at_least("num_workers", num_workers, 1)
        self.cpus_per_worker = check_positive_float("cpus_per_worker", cpus_per_worker)
        device_is_cuda = getattr(getattr(estimator, "_device", None), "type", "cpu") == "cuda"
        gpus = (1.0 if device_is_cuda else 0.0) if gpus_per_worker is None else float(gpus_per_worker)
        if not math.isfinite(gpus) or gpus < 0:
            raise ValueError(f"gpus_per_worker must be a number >= 0, got {gpus_per_worker!r}")
        self.gpus_per_worker = gpus
        default_threads = max(1, round(self.cpus_per_worker))
        self.torch_threads = check_int_at_least(
            "torch_threads", default_threads if torch_threads is None else torch_threads, 1
        )
        self.shard_size = None if shard_size is None else check_int_at_least("shard_size", shard_size, 1)
        self.max_restarts = check_int_at_least("max_restarts", max_restarts, 0)
        self.max_task_retries = check_int_at_least("max_task_retries", max_task_retries, 0)
        self.progress = bool(progress)
        self.estimator = estimator
        ray = require_ray()
        connect(address)
        register_user_code()
        problem = serialisation_problem(estimator)
        if problem is not None:
            raise ValueError(f"the estimator cannot be sent to the Ray workers: {problem}")
        self._ray = ray
        # Once, in the object store; each actor reads it from there. The pool keeps the reference: a
        # restarted actor reads its constructor's arguments again.
        self._payload = ray.put(estimator)
        payload = self._payload
        actor = ray.remote(_Replica).options(
            num_cpus=self.cpus_per_worker,
            num_gpus=self.gpus_per_worker,
            max_restarts=self.max_restarts,
            max_task_retries=self.max_task_retries,
        )
        fingerprint = package_fingerprint()
        self._actors = [
            actor.remote(payload, self.torch_threads, fingerprint) for _ in range(self.num_workers)
        ]
        self._start(float(start_timeout_s))

    def _start(self, timeout_s: float) -> None:
        ray = self._ray
        pending = {actor.ready.remote(): k for k, actor in enumerate(self._actors)}
        ready, waiting = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        if waiting:
            self.shutdown()
            raise RuntimeError(
                f"only {len(ready)} of {self.num_workers} Ray workers started within {timeout_s:g} s: each "
                f"asks for {self.cpus_per_worker:g} CPU and {self.gpus_per_worker:g} GPU, the cluster has "
                f"{ray.cluster_resources()} in all; ask for fewer workers or smaller shares"
            )
        try:
            ray.get(ready)
        except ray.exceptions.RayError as error:
            self.shutdown()
            raise RuntimeError(f"a Ray worker failed to start: {_cause(error)}") from None

    def worker_pids(self) -> list[int]:
        """The process id of each actor now (a restarted actor has a new one)."""
        return self._ray.get([actor.ready.remote() for actor in self._actors])

    def shutdown(self) -> None:
        """Stop the actors (the Ray instance keeps running)."""
        for actor in getattr(self, "_actors", []):
            self._ray.kill(actor, no_restart=True)
        self._actors = []
        self._payload = None

    def __enter__(self) -> DistributedSmoothing:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # -- the estimator's calls --------------------------------------------------------------------------
    def certify(
        self, x: Any, n: int, batch_size: int | None = None, **kwargs: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """``certify`` of the estimator, on the workers: ``(labels, radii)``."""
        result = self.certify_detailed(x, n, batch_size, **kwargs)
        return result.labels, result.radii

    def certify_detailed(
        self,
        x: Any,
        n: int,
        batch_size: int | None = None,
        *,
        n0: int | None = None,
        alpha: float | None = None,
        seed: int | None = None,
    ) -> CertificationResult:
        """``certify_detailed`` of the estimator, on the workers; the same result as the local call."""
        est = self.estimator
        n = check_int_at_least("n", n, 1)
        n0 = check_int_at_least("n0", est.n0 if n0 is None else n0, 1)
        batch = est.batch_size if batch_size is None else check_int_at_least("batch_size", batch_size, 1)
        x_np = self._checked(x, n0 + n)
        options = {"n": n, "batch_size": batch_size, "n0": n0, "alpha": alpha}
        parts = self._run(
            "certify_detailed", x_np, options, est._call_key(seed), shard_alignment([n0, n], batch)
        )
        return _merge_results(parts)

    def predict_labels(
        self,
        x: Any,
        n: int | None = None,
        alpha: float | None = None,
        batch_size: int | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """``predict_labels`` (Cohen's PREDICT) of the estimator, on the workers."""
        est = self.estimator
        n = check_int_at_least("n", est.sample_size if n is None else n, 1)
        batch = est.batch_size if batch_size is None else check_int_at_least("batch_size", batch_size, 1)
        x_np = self._checked(x, n)
        options = {"n": n, "alpha": alpha, "batch_size": batch_size}
        parts = self._run("predict_labels", x_np, options, est._call_key(seed), shard_alignment([n], batch))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def certify_adaptive(
        self,
        x: Any,
        mode: str = "radius",
        *,
        seed: int | None = None,
        batch_size: int | str | None = None,
        max_samples: int = 100_000,
        n0: int | None = None,
        first_look: int = 64,
        growth: float = 1.5,
        **options: Any,
    ) -> CertificationResult:
        """``certify_adaptive`` of the estimator, on the workers; ``batch_size="auto"`` is resolved once
        (by one worker, for its hardware) and used by all."""
        est = self.estimator
        max_samples = check_int_at_least("max_samples", max_samples, 1)
        n0 = check_int_at_least("n0", est.n0 if n0 is None else n0, 1)
        x_np = self._checked(x, max_samples)
        if batch_size == "auto":
            batch_size = self._ray.get(
                self._actors[0].auto_batch_size.remote(
                    x_np[:1], options.get("precision"), bool(options.get("channels_last", False))
                )
            )
        elif batch_size is not None:
            batch_size = check_int_at_least("batch_size", batch_size, 1)
        batch = est.batch_size if batch_size is None else batch_size
        if max_samples <= n0:  # the estimator's own check gives the message
            est.certify_adaptive(x_np[:0], mode, max_samples=max_samples, n0=n0, **options)
        looks = statistics.sequential_looks(max_samples - n0, first_look, growth)
        alignment = shard_alignment([n0, *np.diff(looks, prepend=0).tolist()], batch)
        arguments = {
            "mode": mode,
            "batch_size": batch_size,
            "max_samples": max_samples,
            "n0": n0,
            "first_look": first_look,
            "growth": growth,
            **options,
        }
        return _merge_results(self._run("certify_adaptive", x_np, arguments, est._call_key(seed), alignment))

    # -- machinery ----------------------------------------------------------------------------------------
    def _checked(self, x: Any, samples_per_input: int) -> np.ndarray:
        """``x`` validated by the estimator (shape, range, sigma, query budget) as NumPy, before any work."""
        import torch

        self.estimator._prepare_call(x, samples_per_input)
        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
        return np.asarray(x)

    def shards(self, count: int, alignment: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each shard: cut at multiples of ``alignment`` (the batch grid)."""
        size = (
            self.shard_size
            if self.shard_size is not None
            else max(1, math.ceil(count / (4 * self.num_workers)))
        )
        size = math.ceil(size / alignment) * alignment
        return [(start, min(start + size, count)) for start in range(0, count, size)]

    def _run(self, method: str, x: np.ndarray, options: dict, key: Any, alignment: int) -> list[Any]:
        ray = self._ray
        if not self._actors:
            raise RuntimeError("this DistributedSmoothing was shut down; create a new one")
        shards = self.shards(len(x), alignment)
        counters = self.estimator._query_counters()
        budgets = [counter.queries_remaining for counter in counters]
        ledger = None
        if any(budget is not None for budget in budgets):
            ledger = ray.remote(_Ledger).options(num_cpus=0, max_restarts=0).remote(budgets)
        results: dict[int, Any] = {}
        failures: dict[tuple[int, int], str] = {}
        used = [0] * len(counters)
        queue = deque(range(len(shards)))
        running: dict[Any, tuple[int, int]] = {}  # object ref -> (actor, shard)
        idle = deque(range(len(self._actors)))
        dead: set[int] = set()

        def submit() -> None:
            while queue and idle:
                worker, shard = idle.popleft(), queue.popleft()
                start, stop = shards[shard]
                call = {**options, "noise_key": key, "first_index": start}
                running[self._actors[worker].run.remote(method, x[start:stop], call, ledger)] = (
                    worker,
                    shard,
                )

        error: Exception | None = None
        try:
            with tqdm(total=len(x), unit="input", desc=method, disable=not self.progress, leave=False) as bar:
                submit()
                while running:
                    (ref,), _ = ray.wait(list(running), num_returns=1)
                    worker, shard = running.pop(ref)
                    try:
                        result, counts = ray.get(ref)
                    except ray.exceptions.RayTaskError as raised:  # the estimator raised: not retried
                        error = error or _cause(raised)
                        queue.clear()  # let the running shards finish (their queries are counted), then raise
                        continue
                    except ray.exceptions.RayActorError as died:  # dead beyond its restarts and retries
                        failures[shards[shard]] = f"{type(died).__name__}: {died}"
                        dead.add(worker)
                        if len(dead) == len(self._actors):
                            for pending in queue:
                                failures[shards[pending]] = "not run: every worker died"
                            queue.clear()
                        submit()
                        continue
                    results[shard] = result
                    used = [u + c for u, c in zip(used, counts, strict=True)]
                    bar.update(shards[shard][1] - shards[shard][0])
                    idle.append(worker)
                    submit()
        finally:
            if ledger is not None:
                try:  # every query charged, attempts that a worker's death cut short included
                    used = ray.get(ledger.totals.remote(), timeout=60)
                finally:
                    ray.kill(ledger)
            for counter, count in zip(counters, used, strict=True):
                counter.query_count += count
        if error is not None:
            raise error
        if failures:
            raise ShardFailedError(
                f"{len(failures)} of {len(shards)} shards of {method} failed after {self.max_task_retries} "
                f"retries: " + "; ".join(f"inputs [{a}, {b}): {why}" for (a, b), why in failures.items()),
                failures,
                {shards[k]: v for k, v in results.items()},
            )
        return [results[k] for k in range(len(shards))]


def _cause(error: Exception) -> Exception:
    """The exception a Ray task raised, as its own type where Ray can give it."""
    cause = getattr(error, "cause", None)
    if isinstance(cause, Exception):
        return cause
    try:
        return error.as_instanceof_cause()  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - Ray's wrapper is all there is
        return error


def _merge_results(parts: list[CertificationResult]) -> CertificationResult:
    """One result from the shards' results, in input order."""
    if not parts:
        raise ValueError("no shards: x holds no inputs")
    arrays = {
        name: np.concatenate([getattr(part, name) for part in parts])
        for name in ("labels", "radii", "p_lower", "candidates", "counts_top", "samples_used")
    }
    extras: dict[str, Any] = {}
    for name, value in parts[0].extras.items():
        values = [part.extras.get(name) for part in parts]
        if name in PER_INPUT_EXTRAS:
            extras[name] = np.concatenate([np.atleast_1d(v) for v in values])
        elif name in SUMMED_EXTRAS:
            extras[name] = _summed(values)
        else:
            extras[name] = value
    return replace(parts[0], extras=extras, **arrays)


def _summed(values: list[Any]) -> Any:
    if isinstance(values[0], dict):
        return {key: _summed([v[key] for v in values]) for key in values[0]}
    return sum(values)
