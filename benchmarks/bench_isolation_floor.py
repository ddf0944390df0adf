"""The floor under the sandbox's cost: a quick-preset homework run's requests to its worker, replayed with
a model that computes nothing.

``bench_isolation.py`` measures what the sandbox costs a homework run. This measures the part that any
design running the submission in a process of its own pays for the same run, whatever the sandbox: it
records every request the sandboxed run makes to its worker (kind and batch size, in order), then replays
that sequence against a worker whose model does no work (its outputs are the first ten numbers of each
input), once in the sandbox and once in this process. The difference is the exchanges' own cost (the
pipes, the copies, waking the other process and being woken) with no model computation on either side.
Its share of an in-process run of the same submission is the least overhead the run's requests allow on
this machine; the real run adds the worker's start and the two processes sharing the cores and caches.

Run: ``python3 benchmarks/bench_isolation_floor.py`` (about 6 minutes on 2 idle cores: a warm-up that
fills the model cache, a recorded sandboxed run, an in-process run, the replays); ``--cache-dir DIR``
(a model cache to fill and reuse, as for ``bench_isolation.py``), ``--json FILE``. Needs bubblewrap.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ECHO_SOURCE = '''import torch


class Echo(torch.nn.Module):
    """No work: the first ten numbers of each input, as its ten outputs."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x.flatten(1)[:, :10] * self.scale
'''

#: Request kinds as the wire protocol numbers them (evaluations.submissions.wire.Kind).
KIND_NAMES = {1: "forward", 2: "forward_keep", 3: "vjp"}


def record(log: Path, cli_args: list[str]) -> int:
    """Run the harness's CLI in this process, writing each worker request's (kind, rows) to ``log``."""
    from evaluations.cli import quiet_openmp_for_workers

    quiet_openmp_for_workers()  # what the CLI does for a worker run, before torch loads
    from evaluations.cli import main as cli_main
    from evaluations.submissions import remote

    requests: list[tuple[int, int]] = []
    call = remote.WorkerClient._call

    def recording(self, kind, array, *args, **kwargs):  # type: ignore[no-untyped-def]
        requests.append((int(kind), int(array.shape[0])))
        return call(self, kind, array, *args, **kwargs)

    remote.WorkerClient._call = recording  # type: ignore[method-assign]
    code = cli_main(cli_args)
    log.write_text("".join(f"{kind}\t{rows}\n" for kind, rows in requests))
    return code


def replay(requests: list[tuple[int, int]], forward, forward_keep, vjp) -> float:  # type: ignore[no-untyped-def]
    """Seconds to make ``requests`` in order: a VJP answers the latest forward_keep not yet answered."""
    import numpy as np

    inputs: dict[int, np.ndarray] = {}
    pending: list[tuple[object, np.ndarray]] = []
    start = time.perf_counter()
    for kind, rows in requests:
        x = inputs.get(rows)
        if x is None:
            x = inputs[rows] = np.random.default_rng(rows).random((rows, 1, 8, 8), dtype=np.float32)
        if kind == 1:
            forward(x)
        elif kind == 2:
            pending.append((forward_keep(x), x))
        elif pending:
            handle, kept = pending.pop()
            vjp(handle, np.ones((len(kept), 10), np.float32), kept)
    return time.perf_counter() - start


def echo_replays(requests: list[tuple[int, int]], folder: Path) -> dict[str, float]:
    """The replay through a sandboxed worker of the echo model, and through the same module here."""
    import torch

    from evaluations.submissions.remote import start_worker
    from evaluations.submissions.sandbox import Limits

    (folder / "model.py").write_text(ECHO_SOURCE)
    namespace: dict = {}
    exec(compile(ECHO_SOURCE, str(folder / "model.py"), "exec"), namespace)  # the benchmark's own source
    local = namespace["Echo"]()
    torch.save(local.state_dict(), folder / "weights.pt")
    spec = {"format": "python", "module": "model.py:Echo", "weights": "weights.pt", "kwargs": {}}
    worker = start_worker(folder, spec, isolation="sandbox", limits=Limits(), threads=2, outputs=10)
    client = worker.client
    try:
        sandbox = replay(
            requests,
            lambda x: client.forward(x, 10),
            lambda x: client.forward_keep(x, 10)[1],
            lambda handle, cotangent, x: client.vjp(handle, cotangent, x),
        )
    finally:
        worker.close()

    def forward(x):  # type: ignore[no-untyped-def]
        with torch.no_grad():
            return local(torch.from_numpy(x)).numpy()

    def forward_keep(x):  # type: ignore[no-untyped-def]
        inputs = torch.from_numpy(x).requires_grad_(True)
        with torch.enable_grad():
            outputs = local(inputs)
        outputs.detach().numpy()
        return inputs, outputs

    def vjp(handle, cotangent, x):  # type: ignore[no-untyped-def]
        inputs, outputs = handle
        return torch.autograd.grad(outputs, inputs, torch.from_numpy(cotangent))[0].numpy()

    in_process = replay(requests, forward, forward_keep, vjp)
    return {"sandbox_s": sandbox, "in_process_s": in_process}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--record"]:  # the child that runs the recorded sandboxed run
        sys.path.insert(0, str(ROOT))
        return record(Path(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="the model cache to fill and use (default: a new one)"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_isolation import make_submission, run_once

    from evaluations.submissions.sandbox import sandbox_support

    support = sandbox_support()
    if not support.available:
        raise SystemExit(f"no sandbox here: {support.reason}")
    work = Path(tempfile.mkdtemp(prefix="bench-isolation-floor-"))
    config = make_submission(work / "submission")
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    print(f"warm-up (fills the model cache under {cache}) ...", flush=True)
    run_once(config, "sandbox", work / "warm-up", cache, 2)
    log = work / "requests.tsv"
    recorder = (sys.executable, __file__, "--record", str(log), "--")
    sandbox_run = run_once(config, "sandbox", work / "recorded", cache, None, launcher=recorder)
    print(f"recorded sandboxed run: {sandbox_run:.1f} s", flush=True)
    in_process_run = run_once(config, "none", work / "in-process", cache, None)
    print(f"in-process run: {in_process_run:.1f} s", flush=True)
    requests = [tuple(map(int, line.split("\t"))) for line in log.read_text().splitlines()]
    (work / "echo").mkdir()
    replays = echo_replays(requests, work / "echo")  # type: ignore[arg-type]
    floor = replays["sandbox_s"] - replays["in_process_s"]
    counts = Counter(KIND_NAMES.get(kind, str(kind)) for kind, _ in requests)
    summary = {
        "command": "python3 benchmarks/bench_isolation_floor.py",
        "cpus": os.cpu_count(),
        "requests": len(requests),
        "requests_by_kind": dict(counts),
        "replay_sandbox_s": replays["sandbox_s"],
        "replay_in_process_s": replays["in_process_s"],
        "floor_s": floor,
        "in_process_run_s": in_process_run,
        "sandbox_run_s": sandbox_run,
        "floor_share": floor / in_process_run,
        "sandbox_overhead": sandbox_run / in_process_run - 1,
    }
    kinds = ", ".join(f"{count} {name}" for name, count in counts.most_common())
    print(f"requests of the sandboxed run: {len(requests)} ({kinds})")
    print(
        f"replayed with a model that computes nothing: sandbox {replays['sandbox_s']:.2f} s, in process "
        f"{replays['in_process_s']:.2f} s; the exchanges alone cost {floor:.2f} s, "
        f"{100 * summary['floor_share']:.1f}% of the in-process run ({in_process_run:.1f} s); this pair's "
        f"sandbox overhead: {100 * summary['sandbox_overhead']:+.1f}%"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
