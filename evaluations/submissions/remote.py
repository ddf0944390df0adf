"""The evaluator's side of a worker: start it, talk to it in plain arrays, and present it as a torch module.

:class:`WorkerClient` starts a worker (:mod:`sandbox` builds its command line), waits for it to load the
submission, and sends requests with a wall-clock deadline each. Every reply is checked before it is
believed: the header (:func:`wire.read_message`), the dtype (float32), the exact shape the request
implies and finiteness. Anything else stops the worker and raises :class:`SubmissionFailure` with one
line that says what the submission did. Its stdout and stderr are drained by a thread, kept up to
``output_kb`` and the worker stopped beyond that.

:class:`RemoteModule` is an ``nn.Module`` whose forward pass runs in the worker: without gradients it
asks for outputs only; with them it asks the worker to keep the graph, and its backward pass sends the
output cotangent and receives the input gradient (a vector-Jacobian product), so torchattacks' and ART's
attacks, the smoothed soft classifier and every other part of the harness differentiate through it like
through a local model. :meth:`RemoteModule.behind` puts a module of the evaluator's (a denoiser) in
front of the submission's model in the same worker: its ``torch.export`` program goes through the pipe and
the worker answers a second route for ``model(front(x))``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from . import wire
from .sandbox import Limits, WorkerCommand, exposed_paths, process_command, sandbox_command, sandbox_support

try:  # widens the pipes to a worker (Linux); without it they keep their size
    import fcntl
except ImportError:  # pragma: no cover - not on Windows, where the sandbox does not run either
    fcntl = None  # type: ignore[assignment]

__all__ = ["RemoteModule", "SubmissionFailure", "WorkerClient", "export_front", "start_worker"]

#: Most classes a worker's outputs may have before the expected count is known (the first probe).
MAX_OUTPUTS = 100_000


class SubmissionFailure(RuntimeError):
    """A submission's worker failed: the message (one line) says how; ``output`` holds what the worker
    printed (the first ``output_kb``)."""

    def __init__(self, reason: str, output: str = "") -> None:
        super().__init__(reason)
        self.output = output


class _OutputDrain(threading.Thread):
    """Reads a worker's stdout/stderr to its end, keeps the first ``cap`` bytes, and calls ``overflow``
    (which stops the worker) as soon as more than that arrive."""

    def __init__(self, stream: Any, cap: int, overflow: Any) -> None:
        super().__init__(daemon=True)
        self.stream, self.cap, self.overflow = stream, cap, overflow
        self.kept = bytearray()
        self.total = 0

    def run(self) -> None:
        while True:
            chunk = self.stream.read1(1 << 16) if hasattr(self.stream, "read1") else self.stream.read(1 << 16)
            if not chunk:
                return
            self.total += len(chunk)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]
            if self.total > self.cap:
                self.overflow()


class WorkerClient:
    """One running worker.

    :param command: what to start (:func:`sandbox.sandbox_command` or :func:`sandbox.process_command`).
    :param output_kb: stdout/stderr kept; more stops the worker.
    :param load_timeout: seconds to start and load the model.
    :param call_timeout: seconds per request.
    """

    def __init__(
        self,
        command: WorkerCommand,
        *,
        output_kb: int,
        load_timeout: float,
        call_timeout: float,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.command = command
        self._on_close = on_close
        self.load_timeout = load_timeout
        self.call_timeout = call_timeout
        self.stop_reason: str | None = None
        self.failure: str | None = None
        self._handles = itertools.count(1)
        self._routes = itertools.count(1)  # route 0 is the submission's model
        self._last_work = 0  # the work of the latest request (_call), in input bytes
        self._lock = threading.Lock()
        #: Requests answered, by kind name (the report gives them; the overhead scales with them).
        self.requests = {"forward": 0, "forward_keep": 0, "vjp": 0}
        self.process = subprocess.Popen(
            command.argv,
            cwd=command.cwd,
            env=command.env or None,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._request_fd = self.process.stdin.fileno()
        self._reply_fd = self.process.stdout.fileno()
        for fd in (self._request_fd, self._reply_fd):
            _widen_pipe(fd)
        os.set_blocking(self._request_fd, False)
        self._drain = _OutputDrain(
            self.process.stderr,
            output_kb << 10,
            lambda: self._stop(f"wrote more than {output_kb} KiB of output"),
        )
        self._drain.start()
        try:
            reply = self._receive(
                frozenset({wire.Kind.READY, wire.Kind.FAILED}),
                0,
                time.monotonic() + load_timeout,
                load_timeout,
                "loading the model",
            )
        except SubmissionFailure:
            self.close()
            raise
        if reply.kind == wire.Kind.FAILED:
            self.close()
            self._fail(_one_line(reply.text))

    # -- lifecycle ---------------------------------------------------------------------------------------
    def _stop(self, reason: str) -> None:
        """Kill the worker (its whole sandbox) once, remembering why."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def close(self) -> None:
        """Stop the worker (its whole sandbox) at once. It holds nothing that needs a clean exit (its
        files are a tmpfs or a private copy, removed here), and asking it to exit cost the interpreter's
        shutdown with torch, 0.5-0.6 s a worker, at the end of every run."""
        self._stop(self.stop_reason or "closed")
        self.process.wait()
        self._drain.join(timeout=2.0)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def output(self) -> str:
        """The worker's stdout and stderr (the first ``output_kb``)."""
        return self._drain.kept.decode("utf-8", errors="replace")

    def _exit_reason(self) -> str:
        if self.stop_reason is not None:
            return self.stop_reason
        try:
            code = self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        self._drain.join(timeout=2.0)
        signum = -code if code < 0 else code - 128 if code > 128 else 0
        if signum:
            name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else signum
            known = {
                "SIGXCPU": "exceeded its CPU time limit",
                "SIGXFSZ": "exceeded its file size limit",
                "SIGKILL": "was killed (out of memory, or past its CPU time limit)",
            }
            return f"{known.get(str(name), 'was killed')} ({name})"
        last = _one_line(self.output.strip().splitlines()[-1], 160) if self.output.strip() else ""
        return f"exited with status {code}" + (f" (its last output: {last})" if last else "")

    def _fail(self, reason: str) -> NoReturn:
        self.failure = reason
        if self.process.poll() is not None:
            self._drain.join(timeout=2.0)
        raise SubmissionFailure(reason, self.output)

    # -- requests ----------------------------------------------------------------------------------------
    def _receive(
        self,
        allowed: frozenset[int],
        max_payload: int,
        deadline: float,
        limit: float,
        what: str,
        spin: float = 0.0,
    ) -> wire.Message:
        """Read one reply by ``deadline`` (``limit`` is the time allowed, for the message)."""
        try:
            return wire.read_message(
                self._reply_fd, allowed=allowed, max_payload=max_payload, deadline=deadline, spin=spin
            )
        except wire.ProtocolError as error:
            if "timed out" in str(error) and self.stop_reason is None:
                self._stop(f"did not answer within {limit:g} s")
            elif "pipe closed" not in str(error):
                self._stop(f"sent a reply that is not a valid message ({error})")
            else:
                self._stop_if_dead()
            self._fail(f"{self._exit_reason()} while {what}")
            raise  # unreachable: _fail raises

    def _stop_if_dead(self) -> None:
        try:
            self.process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            self._stop("closed its reply pipe")

    def _exchange(
        self,
        message: bytes,
        tag: int,
        allowed: frozenset[int],
        max_payload: int,
        timeout: float,
        what: str,
        work: int | None = None,
    ) -> wire.Message:
        """Send one encoded request and read its reply within ``timeout`` seconds. A worker that does not
        take the request, does not answer in time, answers FAILED or answers another request than ``tag``
        (UNKNOWN_HANDLE aside) is stopped and :class:`SubmissionFailure` raised. ``work`` sizes the work
        the request asks for, in input bytes, which decides whether the answer is polled for (``None``:
        never, and the request does not count as the latest one)."""
        if self.failure is not None:
            raise SubmissionFailure(self.failure, self.output)
        with self._lock:
            deadline = time.monotonic() + timeout
            try:
                wire.write_all(self._request_fd, message, deadline)
            except wire.ProtocolError:
                self._stop_if_dead()
                if self.stop_reason is None:
                    self._stop(f"did not read its input within {timeout:g} s")
                self._fail(f"{self._exit_reason()} while {what}")
            spin = 0.0
            if work is not None:
                # Poll only when this request and the one before it are small: after a large one the
                # worker's OpenMP threads still busy-wait for the next parallel region (GOMP_SPINCOUNT in
                # sandbox.py), and a poller here would make three busy threads on two cores. A small request
                # after a batch of 1,000 noisy digits took 3-4 ms more through the worker with polling, 1 ms
                # more without.
                spin = wire.spin_for(max(work, self._last_work))
                self._last_work = work
            reply = self._receive(allowed, max_payload, deadline, timeout, what, spin)
        if reply.kind == wire.Kind.FAILED:
            self._stop("failed")
            self._fail(f"{_one_line(reply.text)} (while {what})")
        if reply.kind != wire.Kind.UNKNOWN_HANDLE and reply.tag != tag:
            self._stop("protocol")
            self._fail(f"answered request {reply.tag} when asked for {tag} (while {what})")
        return reply

    def _call(
        self,
        kind: int,
        array: np.ndarray,
        tag: int,
        expect: tuple[int, ...] | None,
        what: str,
        work_bytes: int | None = None,
        route: int = 0,
    ) -> np.ndarray | None:
        """Send one request (for ``route``: see :meth:`load_front`) and return the checked array of its
        reply (``None`` for UNKNOWN_HANDLE). ``work_bytes`` sizes the work the request asks for (default:
        its own payload), which decides whether the answer is polled for (:func:`wire.spin_for`)."""
        if expect is not None:
            max_payload = int(np.prod(expect)) * 4
        else:
            max_payload = len(array) * MAX_OUTPUTS * 4
        reply = self._exchange(
            wire.encode(kind, array, tag, route=route),
            tag,
            frozenset({wire.Kind.ARRAY, wire.Kind.FAILED, wire.Kind.UNKNOWN_HANDLE}),
            max_payload,
            self.call_timeout,
            what,
            work=array.nbytes if work_bytes is None else work_bytes,
        )
        if reply.kind == wire.Kind.UNKNOWN_HANDLE:
            return None
        result = reply.array
        if result is None:  # an ARRAY header that declares no array: the worker's, never ours
            self._stop("protocol")
            self._fail(f"sent a result without an array (while {what})")
        if expect is not None and result.shape != expect:
            self._stop("shape")
            self._fail(f"returned shape {result.shape} where {expect} was due (while {what})")
        if expect is None and (result.ndim != 2 or result.shape[0] != len(array)):
            self._stop("shape")
            self._fail(f"returned shape {result.shape} for {len(array)} inputs (while {what})")
        if not np.isfinite(result).all():
            self._stop("non-finite")
            self._fail(f"returned non-finite values (NaN or inf) while {what}")
        return result

    def forward(self, x: np.ndarray, outputs: int | None = None, route: int = 0) -> np.ndarray:
        """The model's outputs on ``x`` (float32, shape ``(len(x), outputs)``)."""
        self.requests["forward"] += 1
        expect = None if outputs is None else (len(x), outputs)
        result = self._call(wire.Kind.FORWARD, x, 0, expect, "computing outputs", route=route)
        assert result is not None
        return result

    def forward_keep(
        self, x: np.ndarray, outputs: int | None = None, route: int = 0
    ) -> tuple[np.ndarray, int]:
        """The outputs on ``x`` and a handle to their graph for one :meth:`vjp`."""
        self.requests["forward_keep"] += 1
        handle = next(self._handles) & 0xFFFFFFFF
        expect = None if outputs is None else (len(x), outputs)
        result = self._call(wire.Kind.FORWARD_KEEP, x, handle, expect, "computing outputs", route=route)
        assert result is not None
        return result, handle

    def vjp(self, handle: int, cotangent: np.ndarray, x: np.ndarray, route: int = 0) -> np.ndarray:
        """The gradient of ``<outputs, cotangent>`` with respect to the inputs of ``handle``'s forward
        pass (recomputed from ``x`` on ``route`` if the worker no longer keeps that graph)."""
        self.requests["vjp"] += 1
        # The backward pass costs what the forward pass of x did, whatever the cotangent's size: polling
        # for the answer to a large one would take a core from the worker's threads for nothing.
        result = self._call(
            wire.Kind.VJP, cotangent, handle, x.shape, "computing a gradient", work_bytes=x.nbytes
        )
        if result is None:
            _, handle = self.forward_keep(x, cotangent.shape[1], route)
            result = self._call(
                wire.Kind.VJP, cotangent, handle, x.shape, "computing a gradient", work_bytes=x.nbytes
            )
            if result is None:
                self._stop("protocol")
                self._fail("lost the graph of a gradient it had just computed")
        assert result is not None
        return result

    def load_front(self, program: bytes, in_front_of: int = 0) -> int:
        """Send ``program`` (the bytes of a file :func:`export_front` wrote) and return the new route
        whose requests the worker answers for ``route_in_front_of(front(x))``.

        :raises SubmissionFailure: the worker did not load it (it is stopped: the program is the
            evaluator's, so a failure is the worker's doing or a sign it cannot be trusted to run it).
        """
        route = next(self._routes)
        if route > 255:
            raise RuntimeError("a worker serves at most 255 fronts")
        self._exchange(
            wire.encode(wire.Kind.LOAD_FRONT, np.frombuffer(program, dtype="u1"), route, route=in_front_of),
            route,
            frozenset({wire.Kind.READY, wire.Kind.FAILED}),
            0,
            self.load_timeout,
            "loading the evaluator's front module",
        )
        return route


#: Bytes a pipe to or from a worker holds (Linux's default is 64 KiB). A batch of noisy inputs for
#: CERTIFY is hundreds of KiB: through a 64 KiB pipe it crossed in slices, each a wake-up of the other
#: side, which cost more than the model's computation (1,000 digits: 9.3 ms through the worker, 5.5 ms in
#: process, before).
PIPE_BYTES = 1 << 20


def _widen_pipe(fd: int) -> None:
    """Grow the pipe behind ``fd`` to :data:`PIPE_BYTES` where the system allows (Linux, up to
    ``/proc/sys/fs/pipe-max-size``); elsewhere, or when refused, it stays as it is (only slower)."""
    setter = getattr(fcntl, "F_SETPIPE_SZ", None) if fcntl is not None else None
    if setter is None:
        return
    try:
        fcntl.fcntl(fd, setter, PIPE_BYTES)
    except OSError:
        pass


def _one_line(text: str, limit: int = 600) -> str:
    """A worker's text as one short line (no newlines or table separators it could inject)."""
    line = " ".join(text.split()).replace("|", "/")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class _RemoteFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: RemoteModule) -> torch.Tensor:  # type: ignore[override]
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        outputs, handle = module.client.forward_keep(array, module.outputs, module.route)
        ctx.module, ctx.handle, ctx.array, ctx.device = module, handle, array, x.device
        return torch.from_numpy(outputs).to(x.device)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        cotangent = grad_output.detach().to("cpu", torch.float32).contiguous().numpy()
        grad = ctx.module.client.vjp(ctx.handle, cotangent, ctx.array, ctx.module.route)
        return torch.from_numpy(grad).to(ctx.device), None


class RemoteModule(nn.Module):
    """A model that runs in a worker, seen as a local ``nn.Module`` (outputs float32 on the input's
    device; differentiable with respect to its input, not its parameters, which stay in the worker).

    :param client: the running worker.
    :param outputs: the number of outputs per input every reply must have (``None``: any, checked by
        the caller).
    :param route: which of the worker's models answers (0: the submission's; see :meth:`behind`).
    """

    def __init__(self, client: WorkerClient, outputs: int | None = None, *, route: int = 0) -> None:
        super().__init__()
        self.client = client
        self.outputs = outputs
        self.route = route
        # An empty parameter gives the module a device for code that asks ``next(model.parameters())``.
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @property
    def isolation(self) -> str:
        return self.client.command.description

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return _RemoteFunction.apply(x, self)
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.client.forward(array, self.outputs, self.route)).to(x.device)

    def behind(self, front: nn.Module, example: torch.Tensor) -> RemoteModule | None:
        """``self(front(x))`` answered wholly by this module's worker, which runs ``front`` (the
        evaluator's module, e.g. a denoiser) before the submission's model: an attack step then costs the
        worker's two exchanges and no pass of ``front`` in the evaluator between them. ``None`` when
        ``front`` cannot be exported (:func:`export_front`); see :meth:`behind_program`.

        :param example: a batch of at least 2 inputs of ``front``'s shape.
        """
        with tempfile.TemporaryDirectory(prefix="art-smoothing-export-") as folder:
            program = export_front(front, example, Path(folder) / "front.pt2")
            return None if program is None else self.behind_program(program)

    def behind_program(self, program: Path) -> RemoteModule:
        """``self(front(x))`` where ``program`` is ``front`` as written by :func:`export_front`: the file's
        bytes go to this module's worker through its pipe, and the module returned asks the worker for a
        route of its own. One worker per submission: ``front`` runs under the submission's isolation and
        limits (its computation counts toward the same CPU seconds) and the submission can read its
        weights: export nothing a submission must not read. The returned module shares this one's worker
        (closing it does nothing; closing this one stops the worker).

        :raises SubmissionFailure: the worker did not load it.
        """
        route = self.client.load_front(Path(program).read_bytes(), in_front_of=self.route)
        return RemoteModule(self.client, self.outputs, route=route)

    def close(self) -> None:
        """Stop the worker (a module of route 0, which :func:`start_worker` made); a module that
        :meth:`behind` made only shares that worker and leaves it running."""
        if self.route == 0:
            self.client.close()


#: The loggers through which torch.export reports a module it cannot trace.
_EXPORT_LOGGERS = ("torch.fx.experimental.symbolic_shapes", "torch.export", "torch._export")


def _below_error(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def export_front(front: nn.Module, example: torch.Tensor, path: Path) -> Path | None:
    """Write ``front`` as a ``torch.export`` program for a worker to run before its model: a copy in eval
    mode on the CPU, traced on ``example`` (a batch of at least 2 inputs) with the batch size left free.
    Returns ``path``, or ``None`` when ``front`` cannot be exported (data-dependent control flow, such as
    a check of its inputs' range): it then stays in the evaluator."""
    if len(example) < 2:
        raise ValueError(f"example must hold at least 2 inputs (1 fixes the batch size), got {len(example)}")
    module = copy.deepcopy(front).to("cpu").eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 24)
    # A front that cannot be exported is expected (it stays here): torch would log its whole graph.
    loggers = [logging.getLogger(name) for name in _EXPORT_LOGGERS]
    try:
        for logger in loggers:
            logger.addFilter(_below_error)  # a filter, since torch.export resets its loggers' levels
        # torch.export.save warns about weights it has just put on the CPU; a failed trace prints its graph
        quiet = io.StringIO()
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore", UserWarning)
            inputs = (example.detach().to("cpu", torch.float32),)
            program = torch.export.export(module, inputs, dynamic_shapes=({0: batch},), strict=False)
            torch.export.save(program, str(path))
    except Exception:  # noqa: BLE001 -- whatever stops the export, the front runs here as before
        return None
    finally:
        for logger in loggers:
            logger.removeFilter(_below_error)
    return path


def start_worker(
    folder: Path,
    spec: dict[str, Any],
    *,
    isolation: str,
    limits: Limits,
    threads: int,
    outputs: int | None = None,
    protected: Sequence[Path] = (),
) -> RemoteModule:
    """Start a worker for the submission in ``folder`` and return its model as a :class:`RemoteModule`
    (whose :meth:`~RemoteModule.behind` puts the evaluator's modules in front of it in the same worker).

    :param spec: ``{"format": "python" | "torch_export", "module", "weights", "kwargs"}``, paths relative
        to ``folder``.
    :param isolation: ``"sandbox"`` or ``"process"`` (see :mod:`.sandbox`).
    :param protected: paths the submission must not be able to read (other submissions, results,
        configuration, model cache); a sandbox that would expose one is refused.
    :raises SubmissionFailure: the worker could not be started or did not load the model.
    """
    folder = Path(folder).resolve()
    private: Path | None = None

    def on_close() -> None:
        if private is not None:
            shutil.rmtree(private, ignore_errors=True)

    try:
        if isolation == "sandbox":
            support = sandbox_support()
            if not support.available:
                raise SubmissionFailure(f"the sandbox is not available here: {support.reason}")
            exposed = exposed_paths(folder, list(protected))
            if exposed:
                raise SubmissionFailure(
                    f"the sandbox would let the submission read {exposed[0]}; keep submissions, results and "
                    "configuration outside the Python installation and the system folders"
                )
            command = sandbox_command(folder, spec, limits, threads, support)
        elif isolation == "process":
            private = Path(tempfile.mkdtemp(prefix="art-smoothing-submission-"))
            shutil.copytree(folder, private / "submission", symlinks=True)
            command = process_command(private / "submission", spec, limits, threads)
        else:
            raise ValueError(f"isolation must be 'sandbox' or 'process', got {isolation!r}")
    except BaseException:
        on_close()
        raise
    try:
        client = WorkerClient(
            command,
            output_kb=limits.output_kb,
            load_timeout=limits.load_timeout,
            call_timeout=limits.call_timeout,
            on_close=on_close,
        )
    except OSError as error:
        on_close()
        raise SubmissionFailure(f"the worker did not start: {error}") from None
    return RemoteModule(client, outputs)
