"""Certification over Ray workers (art_smoothing_plugin.distributed): the same results as one process for
1, 2 and 3 workers, one query budget across replicas, a worker killed mid-shard, a shard that keeps
killing its worker, and the bad inputs (unserialisable model, unreachable address, foreign worker code)."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from art_smoothing_plugin import DenoisedSmoothingClassifier, RandomizedSmoothingClassifier
from art_smoothing_plugin.classifiers import HTTPClassifier, QueryBudgetExceeded

pytest.importorskip("ray", reason="Ray is in the [distributed] extra (and in [dev])")

from art_smoothing_plugin.distributed import DistributedSmoothing, ShardFailedError  # noqa: E402

SHAPE = (3, 8, 8)
CLASSES = 4
REPO = Path(__file__).resolve().parents[2]
FIELDS = ("labels", "radii", "p_lower", "candidates", "counts_top", "samples_used")


class TinyCNN(torch.nn.Module):
    """A seeded, untrained conv net (its votes vary between classes: good for comparing counts). With
    ``marker_dir`` each forward pass leaves a file named by the process id and sleeps a little (so a test
    can kill the worker mid-shard); ``poison`` makes the process exit on inputs whose first value exceeds
    it (a shard that kills every worker it runs on)."""

    def __init__(self, marker_dir: str | None = None, poison: float | None = None) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.head = torch.nn.Linear(6 * 8 * 8, CLASSES)
        self.marker_dir = marker_dir
        self.poison = poison

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.poison is not None and float(z[:, 0, 0, 0].max()) > self.poison:
            os._exit(3)
        if self.marker_dir is not None:
            Path(self.marker_dir, str(os.getpid())).touch()
            time.sleep(0.02)
        return self.head(torch.relu(self.conv(z)).flatten(1))


def estimator(model: torch.nn.Module | None = None, **kwargs) -> RandomizedSmoothingClassifier:
    options = dict(
        input_shape=SHAPE, nb_classes=CLASSES, clip_values=(0.0, 1.0), device_type="cpu", scale=0.25
    )
    options.update(kwargs)
    return RandomizedSmoothingClassifier((model or TinyCNN()).eval(), **options)


def inputs(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *SHAPE), dtype=np.float32)


def assert_same(a, b) -> None:
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


CERTIFY = dict(n=200, batch_size=64, n0=16, alpha=0.01)
ADAPTIVE = dict(mode="budget", tolerance=0.05, max_samples=600, n0=16, alpha=0.01, batch_size=64)


def test_one_two_and_three_workers_give_the_single_process_results(ray_session) -> None:
    x = inputs(20)
    local = estimator(seed=None)
    expected = {
        "certify": local.certify_detailed(x, seed=1, **CERTIFY),
        "predict": local.predict_labels(x, n=100, alpha=0.01, batch_size=64, seed=2),
        "adaptive": local.certify_adaptive(x, seed=3, **ADAPTIVE),
    }
    assert len(set(expected["adaptive"].samples_used.tolist())) > 1  # inputs stopped at different looks
    # Without a seed, the driver's noise advances per call exactly as local calls do.
    twin_local, twin_remote = estimator(seed=7), estimator(seed=7)
    stream = [twin_local.certify_detailed(x, **CERTIFY) for _ in range(2)]
    assert not np.array_equal(stream[0].counts_top, stream[1].counts_top)
    for workers in (1, 2, 3):
        # 3 workers on 2 logical CPUs: fractional shares let Ray schedule all of them
        with DistributedSmoothing(
            estimator(seed=None),
            num_workers=workers,
            cpus_per_worker=0.5,
            torch_threads=1,
            shard_size=4,
            progress=False,
        ) as pool:
            assert_same(pool.certify_detailed(x, seed=1, **CERTIFY), expected["certify"])
            np.testing.assert_array_equal(
                pool.predict_labels(x, n=100, alpha=0.01, batch_size=64, seed=2), expected["predict"]
            )
            adaptive = pool.certify_adaptive(x, seed=3, **ADAPTIVE)
            assert_same(adaptive, expected["adaptive"])
            np.testing.assert_array_equal(
                adaptive.extras["stop_look"], expected["adaptive"].extras["stop_look"]
            )
            if workers == 2:
                pool.estimator = twin_remote  # the driver's own noise, advancing call by call
                for local_result in stream:
                    assert_same(pool.certify_detailed(x, **CERTIFY), local_result)


class FlakyServer:
    """A model server on loopback that answers every fourth request with HTTP 503 (retried, and counted
    as queries: the server saw them); it counts every input it receives."""

    def __init__(self) -> None:
        model = TinyCNN().eval()
        self.inputs_seen = 0
        self.requests = 0
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
                batch = np.asarray(
                    json.loads(self.rfile.read(int(self.headers["Content-Length"])))["inputs"], np.float32
                )
                with lock:
                    number = server.requests
                    server.requests += 1
                    server.inputs_seen += len(batch)
                if number % 4 == 3:
                    status, payload = 503, b"{}"
                else:
                    with torch.no_grad():
                        labels = model(torch.from_numpy(batch)).argmax(1).tolist()
                    status, payload = 200, json.dumps({"labels": labels}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/predict"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def http_estimator(url: str, budget: int | None) -> DenoisedSmoothingClassifier:
    api = HTTPClassifier(url, CLASSES, batch_size=32, max_retries=5, backoff=0.0, query_budget=budget)
    return DenoisedSmoothingClassifier(
        api, None, input_shape=SHAPE, nb_classes=CLASSES, scale=0.25, batch_size=64, seed=0
    )


def test_one_query_budget_for_all_replicas(ray_session) -> None:
    server = FlakyServer()
    x = inputs(12, seed=1)
    options = dict(n=96, n0=32, batch_size=64)
    nominal = len(x) * (options["n"] + options["n0"])
    local = http_estimator(server.url, None).certify_detailed(x, seed=4, **options)
    # No budget pressure: the same certificates; every input the server saw is counted once on the driver.
    remote = http_estimator(server.url, None)
    seen = server.inputs_seen
    with DistributedSmoothing(
        remote, num_workers=2, cpus_per_worker=0.5, shard_size=4, progress=False
    ) as pool:
        result = pool.certify_detailed(x, seed=4, **options)
        assert_same(result, local)
        assert remote._query_fn.query_count == server.inputs_seen - seen > nominal  # the 503s were counted
        assert remote.query_count == nominal == result.extras["queries"]
        # A budget of exactly the nominal need, held by the driver's estimator (the budgets a call obeys
        # are the driver's: the replicas charge its ledger, whatever their own copies say): the retries push
        # the call past it, and the replicas together stop there. On their own budgets, each replica would
        # spend its half plus retries, about 1.33x the budget in all, and never be refused.
        budgeted = http_estimator(server.url, nominal)
        pool.estimator = budgeted
        seen = server.inputs_seen
        with pytest.raises(QueryBudgetExceeded, match="budget"):
            pool.certify_detailed(x, seed=4, **options)
        assert server.inputs_seen - seen <= nominal
        assert budgeted._query_fn.query_count == server.inputs_seen - seen
        # What remains is known on the driver: a call needing more is refused before anything is sent.
        before = server.inputs_seen
        with pytest.raises(QueryBudgetExceeded, match="nothing was queried"):
            pool.certify_detailed(x, seed=4, **options)
        assert server.inputs_seen == before
    server.httpd.shutdown()


def test_a_worker_killed_mid_shard_is_retried_with_identical_results(ray_session, tmp_path: Path) -> None:
    x = inputs(16, seed=2)
    expected = estimator().certify_detailed(x, seed=6, **CERTIFY)
    marked = estimator(TinyCNN(marker_dir=str(tmp_path)))
    killed: list[int] = []

    def kill_first_worker_seen() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            markers = list(tmp_path.iterdir())
            if markers:
                pid = int(markers[0].name)
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.005)

    with DistributedSmoothing(
        marked, num_workers=2, cpus_per_worker=0.5, shard_size=4, progress=False
    ) as pool:
        before = pool.worker_pids()
        killer = threading.Thread(target=kill_first_worker_seen)
        killer.start()
        result = pool.certify_detailed(x, seed=6, **CERTIFY)
        killer.join()
        after = pool.worker_pids()
    assert killed and killed[0] in before and killed[0] not in after  # it died mid-shard and was restarted
    assert_same(result, expected)
    assert int(result.samples_used.sum()) == len(x) * (CERTIFY["n"] + CERTIFY["n0"])  # nothing counted twice


def test_a_shard_that_keeps_killing_its_worker_is_reported_and_the_rest_completes(ray_session) -> None:
    x = inputs(20, seed=3)
    x[10, 0, 0, 0] = 20.0  # input 10 (shard [8, 12)) kills any process that classifies it
    model = TinyCNN(poison=10.0)
    clean = estimator(TinyCNN(), clip_values=(0.0, 100.0)).certify_detailed(x, seed=8, **CERTIFY)
    pool = DistributedSmoothing(
        estimator(model, clip_values=(0.0, 100.0)),
        num_workers=2,
        cpus_per_worker=0.5,
        shard_size=4,
        max_restarts=1,
        max_task_retries=1,
        progress=False,
    )
    with pool, pytest.raises(ShardFailedError, match=r"inputs \[8, 12\)") as raised:
        pool.certify_detailed(x, seed=8, **CERTIFY)
    assert list(raised.value.failures) == [(8, 12)]
    assert sorted(raised.value.partial) == [(0, 4), (4, 8), (12, 16), (16, 20)]
    for (start, stop), part in raised.value.partial.items():
        for name in FIELDS:
            np.testing.assert_array_equal(getattr(part, name), getattr(clean, name)[start:stop])


def test_an_unserialisable_model_is_refused_before_any_work_naming_the_object(ray_session) -> None:
    model = TinyCNN()
    model.head.lock = threading.Lock()  # a lock cannot travel to another process
    with pytest.raises(
        ValueError, match=r"estimator\._model\._model\.head\.lock \(a lock\) cannot be pickled"
    ):
        DistributedSmoothing(estimator(model), num_workers=1, cpus_per_worker=0.5, progress=False)


def test_a_worker_running_other_code_than_the_driver_is_refused(ray_session, monkeypatch) -> None:
    import art_smoothing_plugin.distributed as distributed

    monkeypatch.setattr(distributed, "package_fingerprint", lambda: "0" * 16)
    with pytest.raises(RuntimeError, match="differs from the driver's"):
        DistributedSmoothing(estimator(), num_workers=1, cpus_per_worker=0.5, progress=False)


def test_a_model_from_a_file_reaches_the_workers_by_value(ray_session, tmp_path: Path) -> None:
    # The harness's "file.py:Class": a module loaded from a path that no worker can import by name.
    import importlib.util

    source = tmp_path / "student_model.py"
    source.write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        torch.manual_seed(1)\n"
        "        self.linear = torch.nn.Linear(192, 4)\n"
        "    def forward(self, z):\n"
        "        return self.linear(z.flatten(1))\n"
    )
    spec = importlib.util.spec_from_file_location("_student_model_for_ray_test", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    try:
        x = inputs(6, seed=4)
        expected = estimator(module.Net()).predict_labels(x, n=64, alpha=0.05, seed=9)
        with DistributedSmoothing(
            estimator(module.Net()), num_workers=1, cpus_per_worker=0.5, progress=False
        ) as pool:
            np.testing.assert_array_equal(pool.predict_labels(x, n=64, alpha=0.05, seed=9), expected)
    finally:
        del sys.modules[spec.name]


def test_an_address_nothing_answers_or_of_the_wrong_form_is_refused_naming_it() -> None:
    # The probe connect() runs before Ray's own attempts (this process is connected already, so connect
    # itself would return at once; tests/distributed/test_harness.py runs it from the command line).
    from art_smoothing_plugin.distributed import _probe

    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"'127\.0\.0\.1:9' within 5 s"):
        _probe("127.0.0.1:9", 5.0)
    assert time.monotonic() - start < 5.0
    for bad in ("no-port", "host:", "host:99999"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            _probe(bad, 1.0)
