"""Memory and speed of certification: ours against the bare base model and ART's PyTorchRandomizedSmoothing.

Prints, in one run, side by side:

1. Peak memory (peak RSS, ``ru_maxrss`` of a child process that does only that one thing) of certifying
   ONE input:
   * 3x224x224 at n = 100,000 with a tiny model (strided conv + global pool): ours must stay < 2 GiB.
     ART's certify builds all n noisy copies at once; its request, n * 3 * 224 * 224 * 4 bytes, is
     computed here and also tried in a child whose address space is capped (``RLIMIT_AS``), where NumPy
     refuses it with a MemoryError that states the size.
   * 3x32x32 (CIFAR size) at n = 20,000 and n = 100,000, where ART's allocation fits: both peaks are
     measured, with the seconds each took (ART's certify needs statsmodels: ``pip install .[benchmark]``;
     without it ART fails on that import after the memory was spent, and the peak is read there).
2. Certification throughput (noisy samples classified per second) on CPU with 2 threads, batch 1000,
   for the CIFAR-size CNN (``evaluations.zoo.cifar_cnn``): the base model's own forward pass on a
   ready batch, our ``certify`` (n0 + n samples), our vote counting alone, and ART's ``predict`` (the
   same counting code as its ``certify``: inputs * sample_size samples). Each is warmed up once, then
   timed ``--repeats`` times; in each repeat every method runs between two runs of the base model and
   its ratio is taken to their mean, which cancels the drift of a shared host's speed (it moves by 2x
   within seconds here); the table shows the median rate and the median of those bracketed ratios.
   Two last rows time the noise alone (draw, scale, add): with torch.randn on one stream and with the
   sampler's own fill; from them, the ceiling any sampler can reach: 1 / (1 + base/noise).
   ``--tuned-malloc`` reruns everything with glibc keeping freed memory: by default each batch-1000
   forward pass page-faults its activations back in, which slows the base model and hides the noise.

3. Mean samples per input of fixed n = 100,000 and of adaptive certification on MNIST-5k: the adaptive
   side of ``bench_adaptive.py`` rerun on its cached fixed-n counts (``--skip-adaptive`` to leave out).

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
from collections.abc import Callable
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


NOISE_ONE_STREAM = "(noise only: torch.randn)"
NOISE_SAMPLER = "(noise only: our sampler's fill)"
#: glibc returns every tensor larger than its mmap threshold (at most 32 MiB) to the kernel when it is
#: freed, so each forward pass of a batch-1000 CNN page-faults its activations back in (half of its time
#: here). These settings keep freed memory in the process; ``--tuned-malloc`` runs with them.
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(4 * GIB), "MALLOC_TRIM_THRESHOLD_": str(4 * GIB)}


def noise_ceiling(noise_ratios: list[float]) -> float:
    """The highest ours/base any sampler can reach when drawing its noise costs what ``noise_ratios``
    measured (noise rate / base rate, per bracketed repeat): a batch then takes the forward plus the draw,
    1 / (1 + base/noise) of the forward's rate. Median over repeats."""
    return stats_lib.median(1.0 / (1.0 + 1.0 / ratio) for ratio in noise_ratios)


# -- throughput, in this process ---------------------------------------------------------------------------
def throughput(
    n: int, repeats: int, batch_size: int, threads: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    import numpy as np
    import torch
    from art.estimators.certification.randomized_smoothing import PyTorchRandomizedSmoothing
    from tqdm.auto import tqdm

    from art_smoothing_plugin import RandomizedSmoothingClassifier
    from art_smoothing_plugin.sampling import ESTIMATION, KeyedFiller, NoiseKey

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
    calls = [0]

    def noise_only() -> int:
        # What any sampler adds to a forward pass: draw the noise (torch's CPU generator, one stream),
        # scale it, add the input.
        with torch.inference_mode():
            for _ in range(forward_batches):
                torch.randn(noise_buffer.shape, generator=generator, out=noise_buffer)
                noise_buffer.mul_(0.25).add_(x_one_t[0])
        return forward_batches * batch_size

    def sampler_noise_only() -> int:
        # The same with the sampler's own fill (the keyed lanes, in threads), fused x + sigma * z: one
        # input's forward_batches * batch_size samples, a batch at a time, as count_votes draws them.
        calls[0] += 1
        total = forward_batches * batch_size
        fill = KeyedFiller(
            NoiseKey(0, calls[0]), ESTIMATION, total, shape, torch.device("cpu"), torch.float32
        )
        with torch.inference_mode():
            for start in range(0, total, batch_size):
                fill.fill(noise_buffer, [(0, start, batch_size)])
                torch.add(x_one_t[0], noise_buffer, alpha=0.25, out=noise_buffer)
        return forward_batches * batch_size

    methods = {
        "base model forward": base_forward,
        "ours: certify (n0=100 + n)": ours_certify,
        "ours: vote counting": ours_counting,
        "ART: predict (its counting)": art_predict,
        NOISE_ONE_STREAM: noise_only,
        NOISE_SAMPLER: sampler_noise_only,
    }

    def timed(method: Callable[[], int]) -> float:
        start = time.perf_counter()
        samples = method()
        return samples / (time.perf_counter() - start)

    for method in methods.values():  # warm-up
        method()
    base_name = "base model forward"
    rates: dict[str, list[float]] = {name: [] for name in methods}
    ratios: dict[str, list[float]] = {name: [] for name in methods if name != base_name}
    for _ in tqdm(range(repeats), desc="throughput repeats", leave=False):
        # Every method runs between two runs of the base model, and its ratio is taken to the mean of
        # the two: on a shared host whose speed drifts by 2x within seconds, this bracketing cancels the
        # drift far better than comparing with one base run per repeat.
        before = timed(base_forward)
        rates[base_name].append(before)
        for name, method in methods.items():
            if name == base_name:
                continue
            rate = timed(method)
            after = timed(base_forward)
            rates[name].append(rate)
            rates[base_name].append(after)
            ratios[name].append(rate / ((before + after) / 2))
            before = after
    return rates, ratios


# -- report ----------------------------------------------------------------------------------------------
def mean_interval(values: list[float]) -> tuple[float, float, float] | None:
    """Mean of ``values`` and its two-sided 95% Student-t interval (None for fewer than two values)."""
    if len(values) < 2:
        return None
    from scipy.stats import t

    mean = stats_lib.fmean(values)
    half = t.ppf(0.975, len(values) - 1) * stats_lib.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def adaptive_summary(quick: bool) -> list[dict]:
    """Adaptive against fixed-n certification on MNIST-5k, from bench_adaptive.py's cached fixed-n counts
    (computing them costs about an hour; this reruns only the adaptive side, a few minutes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_adaptive

    argv = ["--quick"] if quick else ["--cached-only", "--threads", "1"]
    out = Path(__file__).resolve().parent / "out"
    bench_adaptive.main(argv)
    path = out / ("bench_adaptive_quick.json" if quick else "bench_adaptive_n100000.json")
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    if not rows:
        print("  no fixed-n counts cached: run python benchmarks/bench_adaptive.py first")
    return [{k: v for k, v in row.items() if k != "samples_used_per_point"} for row in rows]


def gib(value: float) -> str:
    return f"{value / GIB:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small n, fewer repeats: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 20, quick 2)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument(
        "--skip-adaptive", action="store_true", help="skip the fixed-vs-adaptive samples comparison"
    )
    parser.add_argument(
        "--tuned-malloc",
        action="store_true",
        help="rerun with glibc keeping freed memory (no page faults per forward pass; see TUNED_MALLOC)",
    )
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

    if args.tuned_malloc and any(os.environ.get(key) != value for key, value in TUNED_MALLOC.items()):
        # glibc reads these once, at start-up: restart this script with them set.
        environment = {**os.environ, **TUNED_MALLOC}
        arguments = sys.argv[1:] if argv is None else list(argv)
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *arguments], environment)

    import torch

    # The settings that change these figures without changing the code (see the docs' benchmark section).
    settings = [*TUNED_MALLOC, "OMP_WAIT_POLICY"]
    environment = ", ".join(f"{key}={os.environ[key]}" for key in settings if key in os.environ)
    n_224 = 5_000 if args.quick else 100_000
    n_32 = (5_000, 10_000) if args.quick else (20_000, 100_000)
    n_throughput = 2_000 if args.quick else 4_000
    repeats = args.repeats or (2 if args.quick else 20)
    report: dict = {
        "mode": "quick" if args.quick else "full",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_start": os.getloadavg(),
        "environment": environment or "glibc and libgomp defaults",
    }
    print(
        f"bench_certify ({report['mode']}): torch {torch.__version__}, {args.threads} threads, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, environment: {report['environment']}"
    )

    if not args.skip_memory:
        common = ["--threads", str(args.threads)]
        # (label, shape, n, batch, address-space cap for ART in GiB: 0 = none)
        cases = [((3, 224, 224), n_224, 500, 1.0)] + [((3, 32, 32), n, 1000, 0.0) for n in n_32]
        print("\nPeak memory of certifying ONE input (each figure from its own child process)")
        report["memory"] = []
        rows = []
        for shape, n, batch, cap in cases:
            base = ["--shape", *map(str, shape), "--n", str(n), "--batch-size", str(batch), *common]
            ours = run_child(["--child", "ours", *base])
            art = run_child(["--child", "art", *base, "--cap-gib", str(cap)])
            label = f"{'x'.join(map(str, shape))}, n={n:,}, batch {batch}"
            report["memory"].append({"case": label, "ours": ours, "art": art})
            rows.append((label, ours, art))
        print(f"{'case':<34}{'ours: peak RSS':>15}{'s':>6}   {'ART: peak RSS, or its request':<42}{'s':>6}")
        for label, ours, art in rows:
            ours_text = gib(ours["peak_rss"]) if "peak_rss" in ours else ours.get("error", "?")[:40]
            if "error" in art:
                art_text = art["error"][:40]
            elif art["outcome"] == "MemoryError":
                art_text = f"MemoryError, asks {gib(art['request'])}"
            elif art["outcome"] == "certified":
                art_text = gib(art["peak_rss"])
            else:
                art_text = f"{gib(art['peak_rss'])} (then {art['outcome']})"
            print(
                f"{label:<34}{ours_text:>15}{ours.get('seconds', float('nan')):>6.0f}   {art_text:<42}"
                f"{art.get('seconds', float('nan')):>6.0f}"
            )
        ours_224 = rows[0][1]
        if "peak_rss" in ours_224:
            verdict = "PASS" if ours_224["peak_rss"] < 2 * GIB else "FAIL"
            print(
                f"  ours, 224x224: {ours_224['samples']:,} samples, {gib(ours_224['baseline_rss'])} before "
                f"certify; target < 2 GiB: {verdict}"
            )
        for label, _, art in rows:
            if art.get("message"):
                print(f"  ART, {label}: {art['message'][:110]}")
        print(
            f"  ART's request at n=100,000, 3x224x224: 100,000 * 3 * 224 * 224 * 4 bytes = "
            f"{gib(100_000 * 3 * 224 * 224 * 4)} (plus float64 noise of twice that)"
        )

    if not args.skip_throughput:
        print(
            f"\nThroughput, CIFAR-size CNN (3x32x32), batch 1000, {args.threads} threads, n={n_throughput:,} "
            f"per input, median of {repeats} interleaved repeats"
        )
        rates, ratios = throughput(n_throughput, repeats, 1000, args.threads)
        report["throughput"] = rates
        report["throughput_bracketed_ratios"] = ratios
        # The figure reported is the median over repeats of each method's ratio to the base runs that
        # bracket it (see throughput()); the raw rates are shown for scale.
        paired = {name: stats_lib.median(values) for name, values in ratios.items()}
        paired["base model forward"] = 1.0
        report["throughput_ratio_to_base"] = paired
        print(
            f"{'method':<32}{'samples/s (median)':>20}{'min':>10}{'max':>10}{'x base':>9}"
            f"{'  mean x base, 95% CI':>24}"
        )
        intervals = {name: mean_interval(values) for name, values in ratios.items()}
        report["throughput_ratio_mean_ci95"] = intervals
        for name, values in rates.items():
            interval = intervals.get(name)
            interval_text = f"{interval[0]:.2f} [{interval[1]:.2f}, {interval[2]:.2f}]" if interval else ""
            print(
                f"{name:<32}{stats_lib.median(values):>20,.0f}{min(values):>10,.0f}{max(values):>10,.0f}"
                f"{paired[name]:>9.2f}{interval_text:>24}"
            )
        ratio = paired["ours: certify (n0=100 + n)"]
        print(
            f"  ours/base = {ratio:.2f} (median of {repeats} bracketed ratios; target >= 0.90: "
            f"{'PASS' if ratio >= 0.9 else 'FAIL'}); ART/base = {paired['ART: predict (its counting)']:.2f}"
        )
        ceilings = {name: noise_ceiling(ratios[name]) for name in (NOISE_ONE_STREAM, NOISE_SAMPLER)}
        report["throughput_noise_ceiling"] = ceilings
        print(
            "  ceiling set by the noise draw alone, 1 / (1 + base/noise): "
            f"{ceilings[NOISE_ONE_STREAM]:.2f} with torch.randn on one stream, "
            f"{ceilings[NOISE_SAMPLER]:.2f} with our sampler's fill"
        )

    if not args.skip_adaptive:
        print("\nMean samples per input, fixed n = 100,000 against adaptive (benchmarks/bench_adaptive.py)")
        report["adaptive"] = adaptive_summary(args.quick)

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
