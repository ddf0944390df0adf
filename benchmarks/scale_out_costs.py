"""What a 500-image ImageNet certification at n = 100,000 costs on k GPUs, fixed-n and adaptive.

The figures come from the authors' own logs (Cohen, Rosenfeld & Kolter 2019, ResNet-50 on ImageNet,
``data_certify_imagenet_resnet50_noise_S_test_sigma_S``: one line per image with its radius and the
wall time it took on their GPU) and from this package's statistics:

* **per-sample cost**: the logs' median time per image divided by its n0 + n = 100,100 forward passes;
* **fixed n**: every image costs its own logged time;
* **adaptive** (``certify_adaptive``, radius mode at the target radius, alpha = 0.001, n0 = 100, budget
  100,100): each image's top-class count is read back from its logged radius (the largest count whose
  Clopper-Pearson bound gives that radius; an abstained image is taken at p = 1/2, the hardest case
  below the threshold), and the stopping rule is run on binomial draws at that rate (``run_sequential``,
  seeded); its cost is its mean samples times the per-sample cost;
* **k GPUs**: one image per task, longest first onto the least loaded GPU (what a Ray pool with one
  actor per GPU does up to ordering), plus each GPU's start (``--start-s``: loading the model on a
  worker) and a per-task round trip (``--task-s``, measured by ``bench_distributed.py``). 500 images:
  the logs hold every 100th validation image (about 430 of them here), scaled to 500 by resampling.

Run: ``python benchmarks/scale_out_costs.py`` (seconds); ``--markdown`` prints the docs' table.
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from art_smoothing_plugin import statistics as stats  # noqa: E402
from art_smoothing_plugin.adaptive import run_sequential  # noqa: E402

LOGS = Path(os.environ.get("COHEN2019_LOGS", REPO.parent / "shared" / "reference" / "cohen2019"))
N0, N, ALPHA, IMAGES = 100, 100_000, 0.001, 500
#: (sigma, target radius) of the adaptive rows: a mid-range radius of each of the paper's curves.
SETTINGS = ((0.25, 0.5), (0.5, 1.0), (1.0, 2.0))
GPUS = (1, 8, 32, 128, 500)


def read_log(sigma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(radius, predict, seconds) per image of the test-sigma = train-sigma log."""
    path = LOGS / f"data_certify_imagenet_resnet50_noise_{sigma:.2f}_test_sigma_{sigma:.2f}"
    if not path.is_file():
        raise SystemExit(
            f"Cohen et al.'s log {path} is missing; set COHEN2019_LOGS to the folder of the logs"
        )
    radius, predict, seconds = [], [], []
    for line in path.read_text().splitlines()[1:]:
        _, _, label, r, _, clock = line.split("\t")
        hours, minutes, secs = clock.split(":")
        radius.append(float(r))
        predict.append(int(label))
        seconds.append(3600 * int(hours) + 60 * int(minutes) + float(secs))
    return np.array(radius), np.array(predict), np.array(seconds)


def top_rate(radius: float, abstained: bool, sigma: float) -> float:
    """The top-class rate behind a logged radius: the largest count k of n whose (1 - alpha) lower bound
    gives at most that radius (the logs round radii to 3 digits), as k / n; 1/2 where it abstained."""
    if abstained:
        return 0.5
    target = float(stats.required_top_probability(radius + 5e-4, sigma))  # the rounding's upper edge
    low, high = N // 2, N
    while low < high:  # largest k with clopper_pearson_lower(k) <= target
        mid = (low + high + 1) // 2
        if float(stats.clopper_pearson_lower(mid, N, ALPHA)) <= target:
            low = mid
        else:
            high = mid - 1
    return low / N


def adaptive_samples(rates: np.ndarray, sigma: float, radius: float, seed: int = 0) -> np.ndarray:
    """Samples per image (n0 included) that adaptive certification at ``radius`` takes at these rates."""
    rng = np.random.default_rng(seed)
    looks = stats.sequential_looks(N, 64, 1.5)
    alphas = stats.sequential_alphas(ALPHA, len(looks), 0.5)

    def draw(active: np.ndarray, m: int) -> np.ndarray:
        return rng.binomial(m, rates[active])

    outcome = run_sequential(
        draw,
        len(rates),
        looks,
        alphas,
        sigma,
        mode="radius",
        threshold=float(stats.required_top_probability(radius, sigma)),
    )
    return N0 + outcome.trials


def makespan(task_seconds: np.ndarray, gpus: int, start_s: float, task_s: float) -> float:
    """Wall time of the tasks on ``gpus`` workers, longest first onto the least loaded."""
    loads = [0.0] * gpus
    heapq.heapify(loads)
    for seconds in sorted(task_seconds, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + seconds + task_s)
    return start_s + max(loads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start-s", type=float, default=60.0, help="seconds for a GPU worker to start")
    parser.add_argument("--task-s", type=float, default=0.005, help="seconds of a task's round trip")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    rows = []
    for sigma, radius in SETTINGS:
        radii, predict, seconds = read_log(sigma)
        per_sample = float(np.median(seconds)) / (N0 + N)
        rates = np.array([top_rate(r, p == -1, sigma) for r, p in zip(radii, predict, strict=True)])
        resample = np.random.default_rng(1).integers(0, len(rates), IMAGES)  # the logs' images, to 500
        fixed = seconds[resample]
        used = adaptive_samples(rates[resample], sigma, radius)
        adaptive = used * per_sample
        rows.append((sigma, radius, per_sample, fixed, adaptive, used))
    k_header = " | ".join(f"wall, {k} GPU{'s' if k > 1 else ''}" for k in GPUS)
    lines = [
        f"| sigma | method | samples per image (mean) | GPU-hours | {k_header} |",
        "|---|---|---|---|" + "---|" * len(GPUS),
    ]
    for sigma, radius, _per_sample, fixed, adaptive, used in rows:
        for name, costs, samples in (
            ("fixed n = 100,000", fixed, N0 + N),
            (f"adaptive, radius {radius:g}", adaptive, float(np.mean(used))),
        ):
            walls = [makespan(costs, k, args.start_s, args.task_s) for k in GPUS]
            cells = " | ".join(_duration(w) for w in walls)
            lines.append(f"| {sigma:g} | {name} | {samples:,.0f} | {costs.sum() / 3600:,.1f} | {cells} |")
    print(
        f"per-sample cost from the logs' median time per image / {N0 + N:,}: "
        + ", ".join(f"sigma {s:g}: {1e3 * c:.2f} ms" for s, _, c, *_ in rows)
    )
    print("\n".join(lines) if args.markdown else "\n".join(line.replace("|", " ") for line in lines))
    return 0


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{math.ceil(seconds)} s"


if __name__ == "__main__":
    raise SystemExit(main())
