"""Where a submission's worker runs: the command line of its process and the limits it runs under.

Three isolation modes (``isolation.mode``, :data:`evaluations.config.sections.ISOLATION_MODES`):

``sandbox``
    bubblewrap (``bwrap``): new PID, network, IPC, UTS (and cgroup) namespaces, an empty root filesystem
    that holds only read-only binds of the system's libraries, the Python installation and the worker's
    own code, the submission's folder read-only at ``/submission-files``, and a private, size-limited
    tmpfs working directory ``/submission`` that the worker fills with a copy of those files. The worker
    runs as user ``nobody`` (65534) with no capabilities and ``no_new_privs``. Run by root, bwrap sets
    the namespaces up and ``setpriv`` drops to the real uid 65534 (so ``RLIMIT_NPROC`` binds: the kernel
    exempts uid 0 from it); run by anyone else, bwrap maps the caller to uid 65534 in a new user
    namespace, whose process count ``RLIMIT_NPROC`` bounds. Nothing of the evaluator's (the other
    submissions, the instructor's configuration, the results, the model cache) is mounted, and there is
    no network interface but loopback.
``process``
    a plain child process in a private temporary copy of the submission's folder, with the same resource
    limits (except processes) and the same plain-array protocol, but the caller's uid and filesystem and
    network: for submissions the instructor trusts (``--trust-submissions``) on a machine without
    bubblewrap.
``none``
    no worker: the model is loaded in the evaluator's process (a user's own model).

Limits (:class:`Limits`), set by the worker itself before it imports anything of the submission:
``RLIMIT_AS`` (memory), ``RLIMIT_CPU`` (CPU seconds over the worker's life), ``RLIMIT_NPROC`` (sandbox
only), ``RLIMIT_FSIZE`` (largest file), ``RLIMIT_CORE`` = 0, ``RLIMIT_NOFILE``; the evaluator adds a
wall-clock deadline to loading and to every request and stops a worker that writes more than
``output_kb`` to stdout/stderr.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..allocator import worker_environment

__all__ = [
    "NOBODY",
    "WORKER_DIR",
    "Limits",
    "SandboxSupport",
    "WorkerCommand",
    "exposed_paths",
    "process_command",
    "sandbox_command",
    "sandbox_support",
]

#: uid and gid of the sandboxed worker.
NOBODY = 65534
#: The worker's own code: bound read-only into the sandbox.
WORKER_DIR = Path(__file__).resolve().parent
_SUBMISSION_FILES = "/submission-files"
_WORKDIR = "/submission"
_HARNESS = "/opt/art-smoothing-worker"
_PRIVATE_TMP = "/tmp"  # an empty tmpfs of the sandbox's own, hiding the host's /tmp

#: The niceness a worker adds to its own before it loads the submission (capped at 19, the lowest CPU
#: priority; a submission cannot lower it again). The evaluator waits while a worker computes, so the worker
#: loses nothing by it; while the evaluator computes, the worker's idle threads (and a submission that
#: burns CPU) yield the cores to it.
WORKER_NICE = 19


@dataclass(frozen=True)
class Limits:
    """Resource limits of one worker.

    :ivar memory_mb: address space (``RLIMIT_AS``); torch alone maps about 1 GiB.
    :ivar cpu_seconds: CPU time over the worker's whole life (``RLIMIT_CPU``).
    :ivar processes: processes and threads of the sandbox's user (``RLIMIT_NPROC``; sandbox only).
    :ivar disk_mb: largest file (``RLIMIT_FSIZE``) and size of the private working directory and /tmp.
    :ivar output_kb: stdout and stderr kept; a worker that writes more is stopped.
    :ivar load_timeout: wall-clock seconds to start and load the model.
    :ivar call_timeout: wall-clock seconds per request (one forward pass or one gradient).
    """

    memory_mb: int = 4096
    cpu_seconds: int = 3600
    processes: int = 64
    disk_mb: int = 256
    output_kb: int = 1024
    load_timeout: float = 120.0
    call_timeout: float = 60.0

    @classmethod
    def from_config(cls, section: dict) -> Limits:
        """The limits of the configuration's ``[isolation]`` section."""
        return cls(**{name: section[name] for name in cls.__dataclass_fields__})

    def rlimits(self, *, processes: bool) -> dict[str, list[int]]:
        """The ``RLIMIT_*`` (soft, hard) pairs the worker sets on itself. The CPU limit's soft value
        sends SIGXCPU, its hard value 5 s later SIGKILL (for a submission that ignores SIGXCPU)."""
        limits = {
            "RLIMIT_AS": [self.memory_mb << 20] * 2,
            "RLIMIT_CPU": [int(self.cpu_seconds), int(self.cpu_seconds) + 5],
            "RLIMIT_FSIZE": [self.disk_mb << 20] * 2,
            "RLIMIT_CORE": [0, 0],
            "RLIMIT_NOFILE": [256, 256],
        }
        if processes:
            limits["RLIMIT_NPROC"] = [self.processes] * 2
        return limits

    def describe(self) -> str:
        return (
            f"nice {WORKER_NICE}, {self.memory_mb} MiB memory, {self.cpu_seconds} CPU s, "
            f"{self.processes} processes, "
            f"{self.disk_mb} MiB files, {self.output_kb} KiB output, {self.load_timeout:g} s to load, "
            f"{self.call_timeout:g} s per call"
        )


@dataclass(frozen=True)
class SandboxSupport:
    """Whether this machine can run the sandbox, and if not, why."""

    available: bool
    reason: str
    bwrap: str | None = None
    privileged: bool = False  # run as root: namespaces without a user namespace, then setpriv to nobody


@dataclass(frozen=True)
class WorkerCommand:
    """How to start one worker: ``argv`` run in ``cwd`` with ``env``; ``isolation`` says what it gives."""

    argv: list[str]
    cwd: str
    env: dict[str, str]
    isolation: str
    description: str


def _python_dirs() -> list[Path]:
    """Directories the worker's Python needs: the installation, the standard library, site-packages and
    the folders torch and numpy were imported from."""
    candidates = {Path(sys.base_prefix), Path(sys.prefix), Path(sys.executable).resolve().parent}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(name)
        if path:
            candidates.add(Path(path))
    for module in ("torch", "numpy"):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            candidates.add(Path(spec.origin).resolve().parent.parent)
    resolved = sorted({p.resolve() for p in candidates if p.exists()}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in resolved:  # drop folders inside one already bound
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return kept


_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_SYSTEM_FILES = ("/etc/ld.so.cache",)


def _read_only_binds() -> list[Path]:
    binds = [Path(d) for d in _SYSTEM_DIRS if os.path.exists(d)]
    binds += [Path(f) for f in _SYSTEM_FILES if os.path.exists(f)]
    for path in _python_dirs():
        if not any(path == b or b in path.parents for b in binds if not str(b).startswith("/etc")):
            binds.append(path)
    return binds


def exposed_paths(folder: Path, protected: list[Path]) -> list[str]:
    """The ``protected`` paths (other submissions, results, configuration, model cache) that a sandbox of
    ``folder`` would make readable: each is inside one of the read-only binds or inside ``folder``."""
    visible = [*(b.resolve() for b in _read_only_binds()), WORKER_DIR, folder.resolve()]
    found = []
    for path in protected:
        target = Path(path).expanduser().resolve()
        for bind in visible:
            if target == bind or bind in target.parents:
                found.append(f"{target} (visible through {bind})")
                break
    return found


def _environment(threads: int, home: str) -> dict[str, str]:
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        # libgomp's own default, stated because the environment is cleared: after a parallel region the
        # worker's threads wait about 3 ms for the next before they sleep, so the regions of one forward or
        # backward pass start without a wake-up each. They would take the cores the evaluator computes on
        # between requests, were the worker not at the lowest CPU priority (WORKER_NICE): there they yield.
        # Measured (a smoothed-classifier gradient on 800 noisy digits, 2 cores): sleeping at once
        # (OMP_WAIT_POLICY=PASSIVE) 19-25 ms, waiting at nice 19 15-16 ms, in the evaluator's process
        # 13-15 ms.
        "GOMP_SPINCOUNT": "300000",
        **worker_environment(),  # malloc keeps a batch's freed activations for the next (allocator.py)
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def _worker_argv(python: str, worker: str, spec: dict) -> list[str]:
    return [python, "-I", "-B", worker, json.dumps(spec)]


def _sandbox_prefix(folder: Path, limits: Limits, threads: int, support: SandboxSupport) -> list[str]:
    """bwrap (and, as root, setpriv) up to the command it runs."""
    if not support.available or support.bwrap is None:
        raise RuntimeError(f"the sandbox is not available: {support.reason}")
    argv = [
        support.bwrap,
        "--unshare-ipc",
        "--unshare-pid",
        "--unshare-net",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--hostname",
        "submission",
    ]
    if support.privileged:
        # Root sets up the namespaces; setpriv (below) then drops to the real uid nobody, which needs
        # these three capabilities and nothing else.
        argv += ["--cap-drop", "ALL"]
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        argv += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns"]
        argv += ["--cap-drop", "ALL"]
    binds = _read_only_binds()
    parents: set[Path] = set()
    for path in [*binds, Path(_HARNESS), Path(_SUBMISSION_FILES), Path(_WORKDIR)]:
        parents.update(p for p in path.parents if str(p) != "/")
    for parent in sorted(parents, key=lambda p: len(p.parts)):
        if not any(parent == b or b in parent.parents for b in binds):
            argv += ["--perms", "0755", "--dir", str(parent)]
    for path in binds:
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--ro-bind", str(WORKER_DIR), _HARNESS]
    argv += ["--ro-bind", str(folder.resolve()), _SUBMISSION_FILES]
    argv += ["--proc", "/proc", "--dev", "/dev"]
    argv += ["--perms", "01777", "--size", str(limits.disk_mb << 20), "--tmpfs", _PRIVATE_TMP]
    argv += ["--perms", "0777", "--size", str(limits.disk_mb << 20), "--tmpfs", _WORKDIR]
    for key, value in _environment(threads, _WORKDIR).items():
        argv += ["--setenv", key, value]
    argv += ["--chdir", _WORKDIR, "--"]
    if support.privileged:
        argv += [
            shutil.which("setpriv") or "/usr/bin/setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
        ]
    return argv


def sandbox_command(
    folder: Path, spec: dict, limits: Limits, threads: int, support: SandboxSupport | None = None
) -> WorkerCommand:
    """The bubblewrap command line of a sandboxed worker for the submission in ``folder``.

    :param spec: the worker's model spec (format, module, weights, kwargs); paths relative to ``folder``.
    """
    support = support or sandbox_support()
    worker_spec = {
        **spec,
        "threads": threads,
        "nice": WORKER_NICE,
        "limits": limits.rlimits(processes=True),
        "copy_from": _SUBMISSION_FILES,
    }
    argv = _sandbox_prefix(folder, limits, threads, support)
    argv += _worker_argv(sys.executable, f"{_HARNESS}/worker.py", worker_spec)
    mode = "as root, then setpriv to uid 65534" if support.privileged else "user namespace, uid 65534"
    description = (
        f"sandbox (bubblewrap {mode}: no network, PID/IPC/UTS namespaces, only its own files, "
        f"{limits.describe()})"
    )
    return WorkerCommand(argv, "/", {}, "sandbox", description)


def process_command(workdir: Path, spec: dict, limits: Limits, threads: int) -> WorkerCommand:
    """A trusted worker: a plain child process in ``workdir`` (a private copy of the submission's
    folder) with the resource limits but no namespaces."""
    worker_spec = {
        **spec,
        "threads": threads,
        "nice": WORKER_NICE,
        "limits": limits.rlimits(processes=False),
        "copy_from": None,
    }
    argv = _worker_argv(sys.executable, str(WORKER_DIR / "worker.py"), worker_spec)
    environment = _environment(threads, str(workdir))
    description = (
        "process (TRUSTED: own process and private copy of its folder, limits except processes, but the "
        f"evaluator's uid, files and network; {limits.describe()})"
    )
    return WorkerCommand(argv, str(workdir), environment, "process", description)


@functools.lru_cache(maxsize=1)
def sandbox_support() -> SandboxSupport:
    """Find bubblewrap and check, once per process, that it can build the sandbox here (a Python
    interpreter started in it as uid 65534 without network)."""
    if not sys.platform.startswith("linux"):
        return SandboxSupport(False, f"the sandbox needs Linux namespaces; this is {sys.platform}")
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return SandboxSupport(
            False, "bubblewrap is not installed (apt-get install bubblewrap, or dnf install bubblewrap)"
        )
    hidden = [str(path) for path in _python_dirs() if path.is_relative_to(_PRIVATE_TMP)]
    if hidden:
        return SandboxSupport(
            False,
            f"the Python installation ({hidden[0]}) lies under /tmp, which the sandbox replaces with its own "
            "empty /tmp; use a Python (or virtual environment) outside /tmp",
            bwrap,
        )
    privileged = os.geteuid() == 0
    if privileged and shutil.which("setpriv") is None:
        return SandboxSupport(False, "running as root needs setpriv (util-linux) to drop to uid 65534", bwrap)
    support = SandboxSupport(True, "", bwrap, privileged)
    check = (
        "import os, socket; assert os.getuid() == 65534, 'not uid 65534'; s = socket.socket(); "
        "s.settimeout(2); assert s.connect_ex(('1.1.1.1', 53)) != 0, 'the network is reachable'"
    )
    argv = _sandbox_prefix(WORKER_DIR, Limits(), 1, support) + [sys.executable, "-I", "-c", check]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return SandboxSupport(False, f"bubblewrap did not start: {error}", bwrap, privileged)
    if done.returncode != 0:
        detail = " ".join(done.stderr.decode("utf-8", "replace").split())[-300:]
        return SandboxSupport(False, f"bubblewrap failed here: {detail}", bwrap, privileged)
    return support
