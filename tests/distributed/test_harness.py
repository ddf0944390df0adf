"""The harness on Ray (``--executor ray``): the same files as ``--executor local`` (timings aside), models
trained once each as tasks, a worker killed in the middle of a unit, a unit that keeps failing, a driver
killed mid-run and resumed by the other executor, and the bad inputs of the command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from evaluations.config import resolve_config
from evaluations.pipeline import Pipeline
from evaluations.report import run_and_report

from ..harness.conftest import TINY_OVERRIDES

pytest.importorskip("ray", reason="Ray is in the [distributed] extra (and in [dev])")

from evaluations.executors import RayExecutor, UnitsFailed  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
#: The tiny configuration, cut further: two defences, one attack, two chunks of six points each.
SMALL = [
    *TINY_OVERRIDES,
    'defences.enabled=["undefended", "randomized_smoothing"]',
    "smoothing.sigmas=[0.25]",
    'attacks.enabled=["pgd"]',
    "model.epochs=1",
    "run.threads=1",
]
TIMING_COLUMNS = {"time"}


def is_timing(name: str) -> bool:
    """A checkpoint array that holds wall-clock time: the unit's, an attack's and its components'."""
    return name in ("_seconds", "seconds", *TIMING_COLUMNS) or name.startswith("seconds.")


def small_config(*extra: str) -> dict:
    return resolve_config("quick", None, [*SMALL, *extra], None)


def run(config: dict, out: Path, cache: Path, executor="local") -> Pipeline:
    pipeline = Pipeline(config, out, cache_dir=cache, progress=False, log=lambda m: None, executor=executor)
    pipeline.prepare()
    run_and_report(pipeline)
    return pipeline


def unit_arrays(out: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every checkpoint's arrays but the timings, by file name."""
    arrays = {}
    for path in sorted((out / "checkpoints").rglob("*.npz")):
        with np.load(path) as archive:
            arrays[path.name] = {k: archive[k] for k in archive.files if not is_timing(k)}
    return arrays


def tsv_without_timings(path: Path) -> list[list[str]]:
    header, *rows = (line.split("\t") for line in path.read_text().splitlines())
    keep = [i for i, name in enumerate(header) if name not in TIMING_COLUMNS]
    return [[row[i] for i in keep] for row in [header, *rows]]


def assert_same_files(a: Path, b: Path) -> None:
    """The two output folders hold the same results: every checkpoint's arrays, every TSV, results.json's
    numbers; only timing columns and wall-clock fields differ."""
    first, second = unit_arrays(a), unit_arrays(b)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name].keys() == second[name].keys()
        for key in first[name]:
            np.testing.assert_array_equal(first[name][key], second[name][key], err_msg=f"{name}:{key}")
    tsvs = sorted(p.name for p in a.glob("*.tsv"))
    assert tsvs and tsvs == sorted(p.name for p in b.glob("*.tsv"))
    for name in tsvs:
        assert tsv_without_timings(a / name) == tsv_without_timings(b / name), name
    assert _numbers(a) == _numbers(b)


def _numbers(out: Path) -> str:
    """results.json without wall-clock figures (timings, seconds, creation time) and without ``work``,
    the account of what this run did (models trained or cached, units computed or reused), which a
    resumed run reports differently by design."""

    def strip(value):
        if isinstance(value, dict):
            return {
                k: strip(v)
                for k, v in value.items()
                if k not in ("created", "timings", "work") and "second" not in k
            }
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return json.dumps(strip(json.loads((out / "results.json").read_text())), sort_keys=True)


def ray_unit_pids() -> list[int]:
    """Processes of Ray workers running a unit of work now (Ray titles them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"ray::_run_unit" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


@pytest.fixture(scope="module")
def local_run(tmp_path_factory) -> tuple[Path, Path]:
    """The small configuration run by the local executor: ``(output folder, model cache)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out, cache = tmp_path_factory.mktemp("local"), tmp_path_factory.mktemp("local-cache")
        run(small_config(), out, cache)
    finally:
        torch.set_num_threads(threads)
    return out, cache


def test_ray_gives_the_local_files_trains_models_as_tasks_and_survives_a_killed_worker(
    ray_session, local_run, tmp_path
) -> None:
    local_out, local_cache = local_run
    out, cache = tmp_path / "ray", tmp_path / "ray-cache"
    killed: list[int] = []

    def kill_a_worker_in_a_unit() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            pids = ray_unit_pids()
            if pids:
                time.sleep(0.05)  # inside the unit, not at its first line
                try:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                except ProcessLookupError:
                    continue
            time.sleep(0.01)

    killer = threading.Thread(target=kill_a_worker_in_a_unit, daemon=True)
    killer.start()
    pipeline = run(small_config(), out, cache, executor="ray")
    killer.join(timeout=1)
    assert killed, "no unit was running to be killed"
    # Models: trained once each, as tasks, with the weights the local run trained.
    assert {e["status"] for e in pipeline.models.events} == {"trained"}
    for path in sorted(local_cache.glob("*.pt")):
        mine, theirs = torch.load(path, weights_only=True), torch.load(cache / path.name, weights_only=True)
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), path.name
    # Every unit computed exactly once (the killed one retried, written once), none lost.
    computed = [e["file"] for e in pipeline.store.events if e["status"] == "computed"]
    assert len(computed) == len(set(computed)) == len(unit_arrays(local_out))
    assert_same_files(local_out, out)


def poison_model(folder: Path, poisoned_row: np.ndarray) -> list[str]:
    """A user model (``file.py:Class`` with weights) whose process exits whenever it is asked to classify
    ``poisoned_row`` itself: the clean-prediction unit of the chunk holding that point kills every worker
    that runs it, and raises in-process when the trigger file says so."""
    np.save(folder / "poison.npy", poisoned_row)
    (folder / "net.py").write_text(
        "import os\n"
        "import numpy as np\n"
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self, poison='', mode='exit'):\n"
        "        super().__init__()\n"
        "        self.linear = torch.nn.Linear(64, 10)\n"
        "        self.poison = torch.from_numpy(np.load(poison)) if poison else None\n"
        "        self.mode = mode\n"
        "    def forward(self, x):\n"
        "        armed = os.path.exists(os.path.join(os.path.dirname(__file__), 'armed'))\n"
        "        if self.poison is not None and armed:\n"
        "            if any(torch.equal(row, self.poison) for row in x.detach().cpu()):\n"
        "                if self.mode == 'exit':\n"
        "                    os._exit(3)\n"
        "                raise RuntimeError('poisoned input')\n"
        "        return self.linear(x.flatten(1))\n"
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        state = {f"linear.{k}": v for k, v in torch.nn.Linear(64, 10).state_dict().items()}
        torch.save(state, folder / "net.pt")
    (folder / "armed").touch()
    return [
        f'model.module="{folder / "net.py"}:Net"',
        f'model.weights="{folder / "net.pt"}"',
        f'model.kwargs={{"poison": "{folder / "poison.npy"}", "mode": "exit"}}',
        'defences.enabled=["undefended"]',
    ]


def test_a_unit_that_keeps_killing_its_worker_is_reported_after_bounded_retries(
    ray_session, local_run, tmp_path
) -> None:
    from evaluations.data import load_dataset

    x_test = load_dataset("digits").x_test
    settings = poison_model(tmp_path, x_test[7])  # in the second chunk of six: unit "undefended-6"
    config = small_config(*settings)
    out = tmp_path / "out"
    executor = RayExecutor(threads=1, max_retries=1)
    pipeline = Pipeline(
        config, out, cache_dir=tmp_path / "cache", progress=False, log=lambda m: None, executor=executor
    )
    pipeline.prepare()
    start = time.monotonic()
    with pytest.raises(UnitsFailed, match="undefended-6") as raised:
        run_and_report(pipeline)
    assert list(raised.value.failures) == ["undefended-6"], raised.value.failures
    assert "after 1 retries" in raised.value.failures["undefended-6"]
    assert time.monotonic() - start < 120  # bounded: one retry, not forever
    done = {e["unit"] for e in pipeline.store.events if e["status"] == "computed"}
    assert done == {"undefended-0"}  # the rest of the stage completed and was checkpointed
    # Disarmed, a rerun by the local executor redoes only the failed unit (resume across executors).
    (tmp_path / "armed").unlink()
    again = Pipeline(config, out, cache_dir=tmp_path / "cache", progress=False, log=lambda m: None)
    again.prepare()
    run_and_report(again)
    reused = {e["unit"] for e in again.store.events if e["status"] == "reused"}
    assert "undefended-0" in reused and "undefended-6" not in reused


def test_a_killed_driver_resumes_from_its_checkpoints_with_the_other_executor(
    ray_session, local_run, tmp_path
) -> None:
    """A ``run --executor ray --address ADDR`` process (a driver of the test's Ray instance) killed once
    some units are checkpointed; the same command with ``--executor local`` finishes the run: the finished
    units are reused and the files equal an uninterrupted run's."""
    local_out, local_cache = local_run
    out = tmp_path / "out"
    sets = [arg for setting in SMALL for arg in ("--set", setting)]
    command = [sys.executable, "-m", "evaluations", "run", "--preset", "quick", *sets]
    command += ["--out", str(out), "--cache-dir", str(local_cache), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    address = ray_session.get_runtime_context().gcs_address
    driver = subprocess.Popen(
        [*command, "--executor", "ray", "--address", address],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(out.glob("checkpoints/*/*.npz"))) < 3:
        assert driver.poll() is None, "the driver ended before it could be interrupted"
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)  # Ray ends a dead driver's tasks
    driver.wait()
    finished = {p.name for p in out.glob("checkpoints/*/*.npz")}
    assert 3 <= len(finished) < len(unit_arrays(local_out))
    resumed = subprocess.run(
        [*command, "--executor", "local"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    reused = {e["file"] for e in events if e["status"] == "reused"}
    assert finished <= reused
    assert_same_files(local_out, out)


def test_bad_executor_arguments_name_the_argument(tmp_path, capsys) -> None:
    from evaluations.cli import main

    out = ["--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--executor", "dask", *out])
    unknown = capsys.readouterr().err
    assert exit_.value.code == 2 and "--executor" in unknown
    assert "'local'" in unknown and "'ray'" in unknown  # the choices are listed
    assert main(["run", "--address", "10.0.0.5:6379", *out]) == 2
    alone = capsys.readouterr().err
    assert "--address" in alone and "--executor ray" in alone
    # Unreachable clusters, from a process not yet connected to Ray: nothing listens on 127.0.0.1:9;
    # 10.255.255.1 either never answers or (behind some proxies) answers without being Ray. Both fail
    # within about the timeout (3 s here) with exit status 2, naming the address, before any work.
    sets = [a for s in SMALL for a in ("--set", s)]
    script = (
        "import json, sys, time\n"
        "from evaluations.cli import main\n"
        "for address in ('127.0.0.1:9', '10.255.255.1:6379'):\n"
        "    start = time.monotonic()\n"
        f"    status = main(['run', '--executor', 'ray', '--address', address, *{sets!r}, *{out!r}])\n"
        "    print(json.dumps([address, status, time.monotonic() - start]), flush=True)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "ART_SMOOTHING_RAY_TIMEOUT": "3"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    outcomes = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("[")]
    assert [o[:2] for o in outcomes] == [["127.0.0.1:9", 2], ["10.255.255.1:6379", 2]], done.stderr[-800:]
    assert all(seconds < 45 for *_, seconds in outcomes)
    assert "'127.0.0.1:9'" in done.stderr and "'10.255.255.1:6379'" in done.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()  # nothing ran


SUBMISSION_CODE = """
import torch
from torch import nn

class Model(nn.Sequential):
    def __init__(self, hidden=16, fail_above=0):
        super().__init__(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.fail_above = fail_above

    def forward(self, x):
        if self.fail_above and len(x) > self.fail_above:  # passes validation, fails in certification
            raise RuntimeError("this model breaks on large batches")
        return super().forward(x)
"""


def _submission(root: Path, name: str, fail_above: int = 0) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(SUBMISSION_CODE)
    with torch.random.fork_rng():
        torch.manual_seed(len(name))
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
        )
        torch.save(model.state_dict(), folder / "weights.pt")
    if fail_above:
        (folder / "submission.toml").write_text(f"[model]\nkwargs = {{fail_above = {fail_above}}}\n")


def test_instructor_mode_evaluates_submissions_in_parallel_and_reports_a_failing_one(
    ray_session, local_run, tmp_path
) -> None:
    from evaluations.leaderboard import run_leaderboard

    root = tmp_path / "submissions"
    for name in ("alice", "dave"):
        _submission(root, name)
    _submission(root, "eve", fail_above=50)  # smoothing's batches are larger: fails mid-evaluation
    overrides = [*SMALL, 'defences.enabled=["undefended", "randomized_smoothing"]', "attacks.points=6"]
    options = dict(overrides=overrides, progress=False, log=lambda m: None, trust_submissions=True)
    remote = run_leaderboard(root, tmp_path / "ray", cache_dir=tmp_path / "c1", executor="ray", **options)
    assert isinstance(remote["alice"], dict) and isinstance(remote["dave"], dict)
    assert isinstance(remote["eve"], str) and "breaks on large batches" in remote["eve"]
    board = (tmp_path / "ray" / "leaderboard.md").read_text()
    assert "alice" in board and "dave" in board and "breaks on large batches" in board
    for name in ("alice", "dave"):  # each report came back whole (the worker ran the local pipeline)
        assert set(remote[name]["defences"]) == {"undefended", "rs_sigma0.25"}
        assert (tmp_path / "ray" / name / "report.md").is_file()
        assert (tmp_path / "ray" / name / "results.json").is_file()
    assert not (tmp_path / "ray" / "eve" / "results.json").exists()
