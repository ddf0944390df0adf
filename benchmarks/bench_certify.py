"""Memory and speed of certification: ours against the bare base model and ART's PyTorchRandomizedSmoothing.

Prints, in one run, side by side:

1. Peak memory (peak RSS, ``ru_maxrss`` of a child process that does only that one thing) of certifying
   ONE input:
   * 3x224x224 at n = 100,000 with a tiny model (strided conv + global pool): ours must stay < 2 GiB.
     ART's certify builds all n noisy copies at once; its request, n * 3 * 224 * 224 * 4 bytes, is
     computed here and also tried in a child whose address space is capped (``RLIMIT_AS``), where NumPy
     refuses it with a MemoryError that states the size.
   * 3x32x32 at n = 20,000 (CIFAR size), where ART's allocation fits: both peaks are measured. ART's
     certify then fails on ``import statsmodels`` (not installed; ART does not declare it), after the
     memory was spent; the peak is read at that point.
2. Certification throughput (noisy samples classified per second) on CPU with 2 threads, batch 1000,
   for the CIFAR-size CNN (``evaluations.zoo.cifar_cnn``): the base model's own forward pass on a
   ready batch, our ``certify`` (n0 + n samples), our vote counting alone, and ART's ``predict`` (the
   same counting code as its ``certify``: inputs * sample_size samples). Each is warmed up once, then
   timed ``--repeats`` times, interleaved so that a change in machine load hits all alike; the table
   shows the median rate and the median over repeats of the ratio to the base model in that repeat.
   A last row times the noise alone (draw, scale, add), the sampler's own cost.

Run: ``python benchmarks/bench_certify.py`` (about 3-5 minutes on 2 idle cores; the n = 100,000
224x224 part dominates: 1.5e10 Gaussian draws) or ``--quick`` (smaller n everywhere: a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics as stats_lib
import subprocess
import sys
import time
from pathlib import Path

GIB = 1024**3
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ru_maxrss in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def tiny_224_model():
    """A model whose forward pass is cheap next to the noise: 8x8 conv with stride 8, global pool."""
    import torch

    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, kernel_size=8, stride=8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 10),
    ).eval()


def model_for(shape: tuple[int, ...]):
    from evaluations.zoo import build_model

    return tiny_224_model() if shape[1] >= 64 else build_model("cifar_cnn", shape, 10).eval()


# -- children: one measurement each, JSON on the last line of stdout ----------------------------------------
def child_ours(shape: tuple[int, ...], n: int, batch_size: int, threads: int, progress: bool) -> dict:
    import numpy as np
    import torch

    from art_smoothing_plugin import RandomizedSmoothingClassifier

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    estimator = RandomizedSmoothingClassifier(
        model_for(shape),
        None,
        shape,
        10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        scale=0.25,
        seed=0,
        verbose=progress,
    )
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    estimator.certify(x, n=10, batch_size=10, n0=1)  # warm-up: everything loaded before the baseline
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    result = estimator.certify_detailed(x, n=n, batch_size=batch_size, n0=100, alpha=0.001)
    seconds = time.perf_counter() - start
    return {
        "peak_rss": peak_rss_bytes(),
        "baseline_rss": baseline,
        "seconds": seconds,
        "samples": int(result.samples_used.sum()),
        "label": int(result.labels[0]),
        "radius": float(result.radii[0]),
    }


def child_art(shape: tuple[int, ...], n: int, batch_size: int, threads: int, cap_gib: float) -> dict:
    import numpy as np
    import torch
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    art = PyTorchRandomizedSmoothing(
        model_for(shape),
        torch.nn.CrossEntropyLoss(),
        shape,
        10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=100,  # ART's n0 is its sample_size
        scale=0.25,
    )
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    art.predict(x[:, ...], batch_size=batch_size)  # warm-up
    baseline = peak_rss_bytes()
    request = n * int(np.prod(shape)) * 4  # np.repeat of the float32 input, n times
    if cap_gib > 0:
        # Cap the address space a few GiB above what is mapped now, so that an impossible request fails
        # fast with NumPy's MemoryError instead of swapping or waking the OOM killer.
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + int(cap_gib * GIB)
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    outcome, message = "certified", ""
    start = time.perf_counter()
    try:
        art.certify(x, n=n, batch_size=batch_size)
    except MemoryError as error:
        outcome, message = "MemoryError", str(error)
    except ModuleNotFoundError as error:  # statsmodels, imported only after the counting
        outcome, message = "ModuleNotFoundError", str(error)
    seconds = time.perf_counter() - start
    return {
        "peak_rss": peak_rss_bytes(),
        "baseline_rss": baseline,
        "seconds": seconds,
        "request": request,
        "outcome": outcome,
        "message": message,
    }


def run_child(args: list[str]) -> dict:
    """Run this script as a child measurement; stderr (progress bars) passes through."""
    completed = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        return {"error": f"child exited with {completed.returncode}: {completed.stdout[-500:]}"}
    return json.loads(lines[-1])


# -- throughput, in this process ---------------------------------------------------------------------------
def throughput(n: int, repeats: int, batch_size: int, threads: int) -> dict[str, list[float]]:
    import numpy as np
    import torch
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    from tqdm.auto import tqdm

    from art_smoothing_plugin import RandomizedSmoothingClassifier

    torch.set_num_threads(threads)
    shape = (3, 32, 32)
    model = model_for(shape)
    rng = np.random.default_rng(0)
    x_one = rng.random((1, *shape), dtype=np.float32)
    ready_batch = torch.from_numpy(rng.random((batch_size, *shape), dtype=np.float32))
    ours = RandomizedSmoothingClassifier(
        model, None, shape, 10, clip_values=(0.0, 1.0), device_type="cpu", scale=0.25, seed=0
    )
    art = PyTorchRandomizedSmoothing(
        model,
        torch.nn.CrossEntropyLoss(),
        shape,
        10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
        sample_size=n,
        scale=0.25,
    )
    x_one_t = torch.from_numpy(x_one)
    forward_batches = max(1, n // batch_size)

    def base_forward() -> int:
        with torch.inference_mode():
            for _ in range(forward_batches):
                model(ready_batch).argmax(1)
        return forward_batches * batch_size

    def ours_certify() -> int:
        return int(ours.certify_detailed(x_one, n=n, batch_size=batch_size, n0=100).samples_used.sum())

    def ours_counting() -> int:
        ours.model.eval()
        ours.smoother.vote_counts(x_one_t, n, batch_size)
        return n

    def art_predict() -> int:
        art.predict(x_one, batch_size=batch_size)
        return n

    noise_buffer = torch.empty_like(ready_batch)
    generator = torch.Generator().manual_seed(0)

    def noise_only() -> int:
        # What the sampler adds to a forward pass: draw the noise, scale it, add the input.
        with torch.inference_mode():
            for _ in range(forward_batches):
                torch.randn(noise_buffer.shape, generator=generator, out=noise_buffer)
                noise_buffer.mul_(0.25).add_(x_one_t[0])
        return forward_batches * batch_size

    methods = {
        "base model forward": base_forward,
        "ours: certify (n0=100 + n)": ours_certify,
        "ours: vote counting": ours_counting,
        "ART: predict (its counting)": art_predict,
        "(noise only, no model)": noise_only,
    }
    for method in methods.values():  # warm-up
        method()
    rates: dict[str, list[float]] = {name: [] for name in methods}
    for _ in tqdm(range(repeats), desc="throughput repeats", leave=False):
        for name, method in methods.items():
            start = time.perf_counter()
            samples = method()
            rates[name].append(samples / (time.perf_counter() - start))
    return rates


# -- report ----------------------------------------------------------------------------------------------
def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small n, fewer repeats: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, quick 2)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--child", choices=["ours", "art"], help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--cap-gib", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        shape = tuple(args.shape)
        if args.child == "ours":
            figures = child_ours(shape, args.n, args.batch_size, args.threads, progress=True)
        else:
            figures = child_art(shape, args.n, args.batch_size, args.threads, args.cap_gib)
        print(json.dumps(figures))
        return 0

    import torch

    n_224 = 5_000 if args.quick else 100_000
    n_32 = 5_000 if args.quick else 20_000
    n_throughput = 2_000 if args.quick else 5_000
    repeats = args.repeats or (2 if args.quick else 5)
    report: dict = {
        "mode": "quick" if args.quick else "full",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_start": os.getloadavg(),
    }
    print(
        f"bench_certify ({report['mode']}): torch {torch.__version__}, {args.threads} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )

    if not args.skip_memory:
        common = ["--threads", str(args.threads)]
        print("\nPeak memory of certifying ONE input (each figure from its own child process)")
        ours_224 = run_child(
            [
                "--child",
                "ours",
                "--shape",
                "3",
                "224",
                "224",
                "--n",
                str(n_224),
                "--batch-size",
                "500",
                *common,
            ]
        )
        art_224 = run_child(
            [
                "--child",
                "art",
                "--shape",
                "3",
                "224",
                "224",
                "--n",
                str(n_224),
                "--batch-size",
                "500",
                "--cap-gib",
                "1",
                *common,
            ]
        )
        ours_32 = run_child(
            ["--child", "ours", "--shape", "3", "32", "32", "--n", str(n_32), "--batch-size", "1000", *common]
        )
        art_32 = run_child(
            ["--child", "art", "--shape", "3", "32", "32", "--n", str(n_32), "--batch-size", "1000", *common]
        )
        report["memory"] = {"ours_224": ours_224, "art_224": art_224, "ours_32": ours_32, "art_32": art_32}
        print(f"{'case':<36}{'ours: peak RSS':>16}   {'ART: peak RSS, or its request':<40}")
        for label, ours, art in (
            (f"3x224x224, n={n_224:,}, batch 500", ours_224, art_224),
            (f"3x32x32, n={n_32:,}, batch 1000", ours_32, art_32),
        ):
            ours_text = gib(ours["peak_rss"]) if "peak_rss" in ours else ours.get("error", "?")
            if "error" in art:
                art_text = art["error"][:60]
            elif art["outcome"] == "MemoryError":
                art_text = f"MemoryError, asks {gib(art['request'])}"
            else:
                art_text = f"{gib(art['peak_rss'])} (then {art['outcome']})"
            print(f"{label:<36}{ours_text:>16}   {art_text:<40}")
        if "peak_rss" in ours_224:
            verdict = "PASS" if ours_224["peak_rss"] < 2 * GIB else "FAIL"
            print(
                f"  ours, 224x224: {ours_224['seconds']:.0f} s for {ours_224['samples']:,} samples, "
                f"{gib(ours_224['baseline_rss'])} before certify; target < 2 GiB: {verdict}"
            )
        if art_224.get("message"):
            print(f"  ART, 224x224: {art_224['message'][:120]}")
        if art_32.get("message"):
            print(f"  ART, 32x32: {art_32['message'][:120]}")
        print(
            f"  ART's request at n=100,000, 3x224x224: 100,000 * 3 * 224 * 224 * 4 bytes = "
            f"{gib(100_000 * 3 * 224 * 224 * 4)} (plus float64 noise of twice that)"
        )

    if not args.skip_throughput:
        print(
            f"\nThroughput, CIFAR-size CNN (3x32x32), batch 1000, {args.threads} threads, n={n_throughput:,} "
            f"per input, median of {repeats} interleaved repeats"
        )
        rates = throughput(n_throughput, repeats, 1000, args.threads)
        report["throughput"] = rates
        base_rates = rates["base model forward"]
        # Paired ratio: each repeat runs every method back to back, so dividing within a repeat cancels
        # most of the drift in machine load; the median of those ratios is the figure reported.
        paired = {
            name: stats_lib.median(r / b for r, b in zip(values, base_rates, strict=True))
            for name, values in rates.items()
        }
        report["throughput_ratio_to_base"] = paired
        print(f"{'method':<32}{'samples/s (median)':>20}{'min':>10}{'max':>10}{'x base':>9}")
        for name, values in rates.items():
            print(
                f"{name:<32}{stats_lib.median(values):>20,.0f}{min(values):>10,.0f}{max(values):>10,.0f}"
                f"{paired[name]:>9.2f}"
            )
        ratio = paired["ours: certify (n0=100 + n)"]
        print(
            f"  ours/base = {ratio:.2f} (target >= 0.90: {'PASS' if ratio >= 0.9 else 'FAIL'}); "
            f"ART/base = {paired['ART: predict (its counting)']:.2f}"
        )

    report["load_average_end"] = os.getloadavg()
    print(
        f"\nload average at the end: {os.getloadavg()[0]:.1f} "
        f"(figures taken on a busy machine are provisional)"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
