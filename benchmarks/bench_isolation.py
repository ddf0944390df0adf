"""What the sandbox costs: one homework submission (Python code + state_dict) evaluated with the quick preset,
in the evaluator's process (``isolation.mode = "none"``) and in the bubblewrap sandbox (``"sandbox"``),
in interleaved pairs.

Each run is the command an instructor's run performs for one submission, as a fresh process with a fresh
results folder: ``python3 -m evaluations run --preset quick --config <submission.toml> --set
isolation.mode=MODE --out <new folder> --cache-dir <shared cache>``, with the defences instructor mode
evaluates a submission under (every defence that does not train its own classifier). The shared model
cache is filled by a warm-up run in the sandbox first (it trains the models and exports the denoisers that
the submission's workers run), so every timed run only loads them, as a second instructor's run would.
The pairs alternate which mode goes first, and each pair's ratio is taken (a shared host's speed drifts
within minutes); the table gives every run, the ratios and their median.

Run: ``python3 benchmarks/bench_isolation.py`` (about 30 minutes on 2 idle cores: a warm-up that trains
the models, evaluating 2 points, and three pairs of quick-preset runs); ``--pairs N``, ``--limit N``
(points per stage, a smoke run) and ``--json FILE``. Needs bubblewrap (``apt-get install bubblewrap``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluations.data import load_dataset  # noqa: E402
from evaluations.models import train_cross_entropy  # noqa: E402
from evaluations.submissions.sandbox import sandbox_support  # noqa: E402

MODEL_SOURCE = '''import torch


class Model(torch.nn.Module):
    """A student's small CNN for 8x8 digits."""

    def __init__(self, width=16):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(1, width, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(width, 2 * width, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
            torch.nn.Linear(2 * width * 16, 10),
        )

    def forward(self, x):
        return self.net(x)
'''

DEFENCES = [
    "undefended",
    "randomized_smoothing",
    "denoised_smoothing",
    "diffusion_smoothing",
    "feature_squeezing",
]


def make_submission(folder: Path) -> Path:
    """A trained submission: model.py, weights.pt and submission.toml in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(MODEL_SOURCE)
    namespace: dict = {}
    exec(compile(MODEL_SOURCE, str(folder / "model.py"), "exec"), namespace)  # the benchmark's own source
    torch.manual_seed(0)
    model = namespace["Model"]()
    dataset = load_dataset("digits")
    train_cross_entropy(
        model, dataset.x_train, dataset.y_train, epochs=10, batch_size=64, learning_rate=3e-3, seed=0
    )
    torch.save(model.state_dict(), folder / "weights.pt")
    (folder / "submission.toml").write_text(
        f'[model]\nmodule = "{folder / "model.py"}:Model"\nweights = "{folder / "weights.pt"}"\n\n'
        f"[defences]\nenabled = {json.dumps(DEFENCES)}\n"
    )
    return folder / "submission.toml"


def run_once(
    config: Path,
    mode: str,
    out: Path,
    cache: Path,
    limit: int | None,
    launcher: Sequence[str] = (sys.executable, "-m", "evaluations"),
) -> float:
    """Seconds one ``run`` of the harness's CLI takes as a fresh process (``launcher``: what runs the
    CLI's arguments; ``bench_isolation_floor.py`` passes its recording wrapper)."""
    command = [
        *launcher,
        "run",
        "--preset",
        "quick",
        "--config",
        str(config),
        "--set",
        f'isolation.mode="{mode}"',
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--no-progress",
    ]
    if limit:
        command += ["--limit", str(limit)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-3000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3, help="interleaved (in-process, sandbox) pairs")
    parser.add_argument("--limit", type=int, help="cap every number of test points (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="the model cache to fill and use (default: a new one)"
    )
    args = parser.parse_args(argv)
    support = sandbox_support()
    if not support.available:
        raise SystemExit(f"no sandbox here: {support.reason}")
    work = Path(tempfile.mkdtemp(prefix="bench-isolation-"))
    config = make_submission(work / "submission")
    cache = Path(args.cache_dir) if args.cache_dir else work / "cache"
    print(f"warm-up (fills the model cache under {cache}) ...", flush=True)
    run_once(config, "sandbox", work / "warm-up", cache, 2)  # trains and exports every model; 2 points
    rows = []
    for pair in range(args.pairs):
        order = ["none", "sandbox"] if pair % 2 == 0 else ["sandbox", "none"]
        seconds = {mode: run_once(config, mode, work / f"{mode}-{pair}", cache, args.limit) for mode in order}
        rows.append({"pair": pair, "order": order, **seconds, "ratio": seconds["sandbox"] / seconds["none"]})
        print(
            f"pair {pair + 1}: in-process {seconds['none']:.1f} s, sandbox {seconds['sandbox']:.1f} s, "
            f"ratio {rows[-1]['ratio']:.3f} ({' first, '.join(order)} second)",
            flush=True,
        )
    ratios = [row["ratio"] for row in rows]
    summary = {
        "command": "python3 benchmarks/bench_isolation.py"
        + (f" --pairs {args.pairs}" if args.pairs != 3 else "")
        + (f" --limit {args.limit}" if args.limit else ""),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "pairs": rows,
        "median_ratio": statistics.median(ratios),
        "median_in_process_s": statistics.median(row["none"] for row in rows),
        "median_sandbox_s": statistics.median(row["sandbox"] for row in rows),
    }
    print(
        f"median: in-process {summary['median_in_process_s']:.1f} s, "
        f"sandbox {summary['median_sandbox_s']:.1f} s; median ratio {summary['median_ratio']:.3f} "
        f"(overhead {100 * (summary['median_ratio'] - 1):+.1f}%)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
