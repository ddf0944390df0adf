"""The worker and its isolation: a sandboxed model answers exactly like the same model in-process
(outputs and gradients), and a probe submission inside the sandbox sees only itself: uid 65534 without
capabilities, no network, none of the evaluator's files, hard resource limits it cannot raise."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from evaluations.submissions import sandbox as sandbox_module
from evaluations.submissions.remote import SubmissionFailure, start_worker
from evaluations.submissions.sandbox import Limits

from .conftest import (
    HONEST_SOURCE,
    TEST_LIMITS,
    honest_module,
    write_export_submission,
    write_python_submission,
)

PYTHON_SPEC = {"format": "python", "module": "model.py:Model", "weights": "weights.pt", "kwargs": {}}
EXPORT_SPEC = {"format": "torch_export", "module": "", "weights": "model.pt2", "kwargs": {}}


@pytest.mark.parametrize("isolation", ["sandbox", "process"])
@pytest.mark.parametrize("kind", ["python", "torch_export"])
def test_a_worker_answers_exactly_like_the_model_in_process(tmp_path, sandbox, isolation, kind):
    if kind == "python":
        folder, spec = write_python_submission(tmp_path / "bob"), PYTHON_SPEC
    else:
        folder, spec = write_export_submission(tmp_path / "carol"), EXPORT_SPEC
    local = honest_module()
    remote = start_worker(folder, spec, isolation=isolation, limits=TEST_LIMITS, threads=1, outputs=10)
    try:
        x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(remote(x), local(x))
        labels = torch.arange(20) % 10
        for _ in range(3):  # several rounds: graphs are kept and released in turn
            mine, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
            torch.nn.functional.cross_entropy(remote(mine), labels).backward()
            torch.nn.functional.cross_entropy(local(theirs), labels).backward()
            assert torch.equal(mine.grad, theirs.grad)
            x = x + 0.01
        # A graph the worker no longer keeps is recomputed from the inputs the proxy kept.
        inputs = [x.clone().requires_grad_(True) for _ in range(12)]
        outputs = [remote(i) for i in inputs]
        sum(o.sum() for o in outputs).backward()
        expected = x.clone().requires_grad_(True)
        local(expected).sum().backward()
        assert all(torch.equal(i.grad, expected.grad) for i in inputs)
        assert isolation in remote.isolation
    finally:
        remote.close()


@pytest.mark.parametrize("isolation", ["sandbox", "process"])
def test_a_worker_behind_a_front_answers_like_the_composition_in_process(tmp_path, sandbox, isolation):
    """behind(): the evaluator's denoiser, exported, goes through the pipe to the submission's worker and
    runs there in front of its model, on a route of its own; outputs and input gradients are those of
    model(denoiser(x)) in process, the submission's own route is unchanged, graphs of both routes kept at
    once answer their own gradients, and closing the composition leaves the worker to the submission's
    module, whose closing stops it."""
    from art_smoothing_plugin.denoisers import DENOISER_ARCHITECTURES

    folder = write_python_submission(tmp_path / "bob")
    denoiser = DENOISER_ARCHITECTURES["dncnn"](channels=1, depth=3, width=8, seed=0).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # an untrained residual denoiser is close to the identity: make it act
        for parameter in denoiser.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    local = honest_module()
    remote = start_worker(folder, PYTHON_SPEC, isolation=isolation, limits=TEST_LIMITS, threads=1, outputs=10)
    try:
        x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        chain = remote.behind(denoiser, x[:2])
        assert chain is not None and chain.client is remote.client and chain.route != remote.route
        with torch.no_grad():
            expected = local(denoiser(x))
            torch.testing.assert_close(chain(x), expected, rtol=1e-5, atol=1e-6)
            assert torch.equal(remote(x), local(x))  # the submission's own route: the model alone
        mine, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        alone, alone_here = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        labels = torch.arange(20) % 10
        loss = torch.nn.functional.cross_entropy(chain(mine), labels)
        loss = loss + torch.nn.functional.cross_entropy(remote(alone), labels)
        loss.backward()  # two graphs of two routes kept at once, each answering its own gradient
        torch.nn.functional.cross_entropy(local(denoiser(theirs)), labels).backward()
        torch.nn.functional.cross_entropy(local(alone_here), labels).backward()
        torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4, atol=1e-6)
        assert torch.equal(alone.grad, alone_here.grad)
        # A second front goes in front of the first one's route: model(front(front(x))).
        twice = chain.behind(denoiser, x[:2])
        assert twice is not None and len({remote.route, chain.route, twice.route}) == 3
        with torch.no_grad():
            torch.testing.assert_close(twice(x), local(denoiser(denoiser(x))), rtol=1e-5, atol=1e-5)
        chain.close()  # shares the worker: nothing stops
        assert remote.client.process.poll() is None and torch.equal(remote(x).detach(), local(x).detach())
    finally:
        remote.close()
    assert remote.client.process.poll() is not None


def test_a_front_the_worker_cannot_load_fails_the_submission_in_one_line(tmp_path):
    """The evaluator's program is refused by the worker (here: not a program): the worker is stopped and
    the failure says what it was doing, as for any other request it failed."""
    folder = write_python_submission(tmp_path / "bob")
    remote = start_worker(folder, PYTHON_SPEC, isolation="process", limits=TEST_LIMITS, threads=1, outputs=10)
    (tmp_path / "not-a-program.pt2").write_bytes(b"PK not a zip at all")
    try:
        with pytest.raises(SubmissionFailure, match="front module did not load.*loading the evaluator's"):
            remote.behind_program(tmp_path / "not-a-program.pt2")
        assert remote.client.stop_reason == "failed" and remote.client.process.wait(timeout=10) != 0
    finally:
        remote.close()


def test_a_result_without_an_array_fails_the_submission_in_one_line(tmp_path):
    """A reply header of kind ARRAY that declares no array (written down the reply pipe by the model,
    as an attacker in the worker's process can) stops the worker with a reason, not an assertion."""
    source = HONEST_SOURCE.replace(
        "        return self.net(x)",
        "        import __main__, os, struct\n"
        "        if len(x) == 3:\n"
        "            header = struct.pack('<4sBBBBIQ', b'ASW1', 17, 0, 0, 0, 0, 0)  # ARRAY, no array\n"
        "            os.write(__main__.channel_out_fd, header)\n"
        "        return self.net(x)",
    )
    assert source != HONEST_SOURCE
    folder = write_python_submission(tmp_path / "mallory", source)
    torch.save(honest_module().state_dict(), folder / "weights.pt")  # the honest model's weights
    remote = start_worker(folder, PYTHON_SPEC, isolation="process", limits=TEST_LIMITS, threads=1, outputs=10)
    try:
        with torch.no_grad():
            remote(torch.rand(2, 1, 8, 8))  # answers honestly first
            with pytest.raises(SubmissionFailure, match=r"sent a result without an array \(while computing"):
                remote(torch.rand(3, 1, 8, 8))
    finally:
        remote.close()


def test_the_answer_to_a_gradient_is_polled_for_only_after_a_small_forward_pass(tmp_path, monkeypatch):
    """Polling takes a core; it pays only when the answer comes within the polling window and no worker
    thread needs the core. A gradient costs what its forward pass did, however small its cotangent: 1,000
    digits' cotangent (40 KB) is under wire.SPIN_BYTES, their inputs (256 KB) are not, and their backward
    pass runs for milliseconds on every thread the worker has. The first small request after a large one
    is not polled for either: the worker's threads still busy-wait after the large one."""
    from evaluations.submissions import wire

    folder = write_python_submission(tmp_path / "bob")
    remote = start_worker(folder, PYTHON_SPEC, isolation="process", limits=TEST_LIMITS, threads=1, outputs=10)
    polled: list[tuple[str, float]] = []
    receive = remote.client._receive

    def recording(allowed, max_payload, deadline, limit, what, spin=0.0):
        polled.append((what, spin))
        return receive(allowed, max_payload, deadline, limit, what, spin)

    monkeypatch.setattr(remote.client, "_receive", recording)
    try:
        for count in (1000, 10, 10):
            x = torch.rand(count, 1, 8, 8, requires_grad=True)
            remote(x).sum().backward()
    finally:
        remote.close()
    assert 1000 * 10 * 4 <= wire.SPIN_BYTES < 1000 * 64 * 4
    spin = wire.SPIN_SECONDS
    assert polled == [
        ("computing outputs", 0.0),
        ("computing a gradient", 0.0),
        ("computing outputs", 0.0),  # small, after the large gradient
        ("computing a gradient", spin),
        ("computing outputs", spin),
        ("computing a gradient", spin),
    ]


def test_a_front_that_cannot_be_exported_stays_with_the_evaluator(tmp_path):
    class Checked(torch.nn.Module):  # data-dependent control flow: torch.export cannot trace it
        def forward(self, x):
            if float(x.max()) > 1.5:
                raise ValueError("inputs outside [0, 1]")
            return x

    folder = write_python_submission(tmp_path / "bob")
    remote = start_worker(folder, PYTHON_SPEC, isolation="process", limits=TEST_LIMITS, threads=1, outputs=10)
    try:
        assert remote.behind(Checked(), torch.rand(2, 1, 8, 8)) is None
        with torch.no_grad():  # the worker goes on answering for the model alone
            x = torch.rand(4, 1, 8, 8)
            assert torch.equal(remote(x), honest_module()(x))
    finally:
        remote.close()


def test_the_rand_autoattack_asks_a_worker_twice_per_step_not_twice_per_noise_draw(tmp_path):
    """The rand version's EOT draws of a step reach the worker as one forward and one gradient request
    (evaluations.attacks.eot): a round trip costs ~0.5 ms, and AutoAttack makes thousands of steps."""
    from art_smoothing_plugin import SmoothedSoftClassifier
    from art_smoothing_plugin.sampling import make_generator
    from evaluations.attacks.autoattack import AutoAttackSettings, rand_autoattack

    folder = write_python_submission(tmp_path / "bob")
    remote = start_worker(folder, PYTHON_SPEC, isolation="process", limits=TEST_LIMITS, threads=1, outputs=10)
    try:
        noisy = SmoothedSoftClassifier(remote, 0.25, 1, generator=make_generator(0, "cpu")).eval()
        score = SmoothedSoftClassifier(remote, 0.25, 4, noise_seed=1).eval()
        x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2))
        y = torch.arange(6)
        settings = AutoAttackSettings(steps=3, eot_iter=10, extra_restarts=0)
        rand_autoattack(noisy, score, x, y, norm="l2", eps=0.5, seed=0, settings=settings)
        # APGD-CE, then APGD-DLR on the points still standing: (steps + 1) gradients each at most.
        most = 2 * (settings.steps + 1)
        assert 0 < remote.client.requests["vjp"] <= most, remote.client.requests
        assert 0 < remote.client.requests["forward_keep"] <= most, remote.client.requests
    finally:
        remote.close()


PROBE = textwrap.dedent(
    """
    import ctypes, json, os, resource, socket, sys

    def unshare_user_namespace():
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

    def attempt(action):
        try:
            action()
            return "ok"
        except BaseException as error:
            return f"{type(error).__name__}: {error}"

    def page_faults_of_repeated_blocks():  # as a model's activations, batch after batch (allocator.py)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            blocks = [b"\x01" * (4 << 20) for _ in range(2)]
            del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    observed = {
        "repeated_block_faults": page_faults_of_repeated_blocks(),
        "ids": [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()],
        "capabilities": [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0],
        "root": sorted(os.listdir("/")),
        "cwd": os.getcwd(),
        "cwd_files": sorted(os.listdir(".")),
        "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "environment": sorted(os.environ),
        "read_instructor_file": attempt(lambda: open($instructor_file).read()),
        "list_other_submission": attempt(lambda: os.listdir($other_submission)),
        "write_system": attempt(lambda: open("/usr/evil", "w")),
        "write_python": attempt(lambda: open(os.path.join(sys.prefix, "evil"), "w")),
        "write_own_originals": attempt(lambda: open("/submission-files/evil", "w")),
        "write_private_copy": attempt(lambda: open("scratch.txt", "w").write("ok")),
        "connect_evaluator": attempt(lambda: socket.create_connection(("127.0.0.1", $port), timeout=2)),
        "connect_internet": attempt(lambda: socket.create_connection(("1.1.1.1", 53), timeout=2)),
        "become_root": attempt(lambda: os.setuid(0)),
        "new_user_namespace": attempt(unshare_user_namespace),
        "limits": {
            name: resource.getrlimit(getattr(resource, name))
            for name in ("RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_CORE")
        },
        "raise_a_limit": attempt(
            lambda: resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        ),
        "nice": os.nice(0),
        "raise_priority": attempt(lambda: os.nice(-1)),
    }
    print("OBSERVED " + json.dumps(observed))
    raise SystemExit("probe finished")
    """
)


def _probe(tmp_path: Path, isolation: str, listener: socket.socket) -> dict:
    other = write_python_submission(tmp_path / "alice")
    source = (
        PROBE.replace("$instructor_file", repr(str(Path(__file__).resolve())))
        .replace("$other_submission", repr(str(other)))
        .replace("$port", str(listener.getsockname()[1]))
    )
    folder = write_python_submission(tmp_path / "mallory", source)
    torch.save(honest_module().state_dict(), folder / "weights.pt")  # the honest model's weights
    with pytest.raises(SubmissionFailure, match="probe finished") as failure:
        start_worker(folder, PYTHON_SPEC, isolation=isolation, limits=TEST_LIMITS, threads=1)
    line = next(line for line in failure.value.output.splitlines() if line.startswith("OBSERVED "))
    return json.loads(line[len("OBSERVED ") :])


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    yield server
    server.close()


def _accepted(server: socket.socket) -> bool:
    try:
        server.accept()[0].close()
        return True
    except BlockingIOError:
        return False


def test_inside_the_sandbox_a_submission_sees_only_itself(tmp_path, sandbox, listener, monkeypatch):
    monkeypatch.setenv("INSTRUCTOR_SECRET", "hunter2")
    seen = _probe(tmp_path, "sandbox", listener)
    assert seen["ids"] == [65534, 65534, 65534, []] and seen["capabilities"] == "0000000000000000"
    assert seen["cwd"] == "/submission" and seen["cwd_files"] == ["model.py", "weights.pt"]
    # Only the system, the Python installation, the worker's code and the submission itself: a top folder
    # such as /home or /work appears only as the parent of the Python installation (a virtual
    # environment inside a clone, as the README sets up), never with the evaluator's files in it.
    python_tops = {path.parts[1] for path in sandbox_module._python_dirs() if len(path.parts) > 1}
    assert "etc" in seen["root"]
    assert all(name not in seen["root"] or name in python_tops for name in ("work", "home")), seen["root"]
    assert len(seen["processes"]) <= 3  # bwrap's init, setpriv's exec'd worker: no other process visible
    assert "INSTRUCTOR_SECRET" not in seen["environment"]
    for key in ("read_instructor_file", "list_other_submission"):
        assert seen[key].startswith("FileNotFoundError"), (key, seen[key])
    for key in ("write_system", "write_python", "write_own_originals"):
        assert seen[key].startswith("OSError: [Errno 30] Read-only file system"), (key, seen[key])
    assert seen["write_private_copy"] == "ok"
    assert seen["connect_evaluator"].startswith(("ConnectionRefusedError", "OSError")), seen[
        "connect_evaluator"
    ]
    assert "unreachable" in seen["connect_internet"].lower() or "Errno" in seen["connect_internet"]
    assert not _accepted(listener)
    assert seen["become_root"].startswith("PermissionError")
    if not sandbox.privileged:  # bwrap --disable-userns; as root see sandbox.py: it is an ordinary uid
        assert seen["new_user_namespace"] != "ok"
    assert seen["limits"] == {
        "RLIMIT_AS": [2048 << 20] * 2,
        "RLIMIT_CPU": [120, 125],
        "RLIMIT_NPROC": [32] * 2,
        "RLIMIT_FSIZE": [16 << 20] * 2,
        "RLIMIT_CORE": [0, 0],
    }
    assert seen["raise_a_limit"].startswith("ValueError")
    # The lowest CPU priority, for good: the evaluator's threads come first while it computes.
    assert seen["nice"] == sandbox_module.WORKER_NICE == 19
    assert seen["raise_priority"].startswith("PermissionError"), seen["raise_priority"]
    # malloc keeps freed blocks for the next round (evaluations/allocator.py): two 4 MiB blocks' 2,048
    # pages fault once, not in each of the 50 rounds (about 100,000 faults without the setting).
    assert seen["repeated_block_faults"] < 3072, seen["repeated_block_faults"]


def test_a_trusted_process_worker_has_the_limits_and_a_private_copy_but_no_namespaces(tmp_path, listener):
    seen = _probe(tmp_path, "process", listener)
    assert seen["cwd"] != str(tmp_path / "mallory") and seen["cwd"].endswith("/submission")
    assert seen["write_private_copy"] == "ok" and not (tmp_path / "mallory" / "scratch.txt").exists()
    assert seen["read_instructor_file"] == "ok"  # trusted: it could read the evaluator's files
    assert (
        seen["limits"]["RLIMIT_AS"] == [2048 << 20] * 2 and seen["limits"]["RLIMIT_FSIZE"] == [16 << 20] * 2
    )
    assert seen["raise_a_limit"].startswith("ValueError")
    assert seen["nice"] == 19  # a trusted worker too yields the cores to the evaluator
    assert seen["repeated_block_faults"] < 3072, seen["repeated_block_faults"]
    assert not [p for p in Path("/tmp").glob("art-smoothing-submission-*") if p.name in seen["cwd"]]


def test_a_cpu_bound_submission_is_stopped_by_its_cpu_limit(tmp_path, sandbox):
    folder = write_python_submission(tmp_path / "spin", "while True:\n    pass\n")
    limits = Limits(**{**TEST_LIMITS.__dict__, "cpu_seconds": 2})
    with pytest.raises(SubmissionFailure, match=r"exceeded its CPU time limit \(SIGXCPU\) while loading"):
        start_worker(folder, PYTHON_SPEC, isolation="sandbox", limits=limits, threads=1)


def test_a_malicious_torch_export_file_runs_its_code_only_inside_the_sandbox(tmp_path, sandbox):
    """torch.export.load unpickles what the archive marks use_pickle: the loader runs code (the reason
    .pt2 files are loaded only in the worker). Here that code tries to leave a marker on the host."""
    import pickle
    from unittest import mock

    import torch.export.pt2_archive._package as package

    marker = tmp_path / "host-marker"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    def evil_save(obj, stream, **kwargs):
        stream.write(pickle.dumps(Evil()))

    folder = tmp_path / "mallory"
    folder.mkdir()
    program = torch.export.export(honest_module(), (torch.rand(2, 1, 8, 8),))
    with (
        mock.patch.object(package, "_should_use_pickle", lambda t: True),
        mock.patch.object(package.torch, "save", evil_save),
    ):
        torch.export.save(program, folder / "model.pt2")
    with pytest.raises(SubmissionFailure, match="loading raised|torch.export.load raised"):
        start_worker(folder, EXPORT_SPEC, isolation="sandbox", limits=TEST_LIMITS, threads=1)
    assert not marker.exists()


def test_a_sandbox_that_would_expose_a_protected_path_is_refused(tmp_path, sandbox):
    folder = write_python_submission(tmp_path / "bob")
    inside_python = Path(sys.prefix) / "lib"
    with pytest.raises(SubmissionFailure, match="would let the submission read"):
        start_worker(
            folder, PYTHON_SPEC, isolation="sandbox", limits=TEST_LIMITS, threads=1, protected=[inside_python]
        )
    results_inside_submission = folder / "results"
    with pytest.raises(SubmissionFailure, match="would let the submission read"):
        start_worker(
            folder,
            PYTHON_SPEC,
            isolation="sandbox",
            limits=TEST_LIMITS,
            threads=1,
            protected=[results_inside_submission],
        )


def test_a_python_under_tmp_is_refused_with_the_reason(monkeypatch):
    # The sandbox mounts an empty /tmp of its own: a Python installed there would not start in it.
    sandbox_module.sandbox_support.cache_clear()
    monkeypatch.setattr(sandbox_module, "_python_dirs", lambda: [Path("/usr"), Path("/tmp/clone/.venv")])
    monkeypatch.setattr(sandbox_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    try:
        support = sandbox_module.sandbox_support()
        assert not support.available
        assert "/tmp/clone/.venv" in support.reason and "outside /tmp" in support.reason
    finally:
        monkeypatch.undo()
        sandbox_module.sandbox_support.cache_clear()


def test_without_bubblewrap_the_reason_is_given(monkeypatch):
    sandbox_module.sandbox_support.cache_clear()
    real_which = shutil.which
    monkeypatch.setattr(
        sandbox_module.shutil, "which", lambda name: None if name == "bwrap" else real_which(name)
    )
    try:
        support = sandbox_module.sandbox_support()
        assert not support.available and "bubblewrap is not installed" in support.reason
        with pytest.raises(
            SubmissionFailure, match="sandbox is not available here: bubblewrap is not installed"
        ):
            start_worker(Path("."), PYTHON_SPEC, isolation="sandbox", limits=TEST_LIMITS, threads=1)
    finally:
        monkeypatch.undo()
        sandbox_module.sandbox_support.cache_clear()


def test_wrong_replies_are_refused_with_a_reason(tmp_path, sandbox):
    source = textwrap.dedent(
        """
        import torch
        class Model(torch.nn.Module):
            def forward(self, x):
                return torch.zeros(len(x), 3)
        """
    )
    folder = write_python_submission(tmp_path / "shape", source)
    remote = start_worker(folder, PYTHON_SPEC, isolation="sandbox", limits=TEST_LIMITS, threads=1, outputs=10)
    try:
        with pytest.raises(SubmissionFailure, match=r"returned shape \(4, 3\) where \(4, 10\) was due"):
            remote(torch.zeros(4, 1, 8, 8))
        with pytest.raises(SubmissionFailure, match="returned shape"):  # the failure is final
            remote(torch.zeros(4, 1, 8, 8))
    finally:
        remote.close()
