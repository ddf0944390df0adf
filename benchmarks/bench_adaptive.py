"""Adaptive versus fixed-n certification on MNIST-5k: decision agreement and forward passes saved.

For each sigma (0.25, 0.5) a LeNet is trained with Gaussian noise on the MNIST-5k train split
(RandomizedSmoothingClassifier.fit; cached on disk). On the first ``--points`` test points:

* fixed-n CERTIFY counts (n0 = 100 selection samples, n = 100,000 estimation samples) are computed once
  and cached on disk (``--cache``; resumable point-chunk by point-chunk, atomic writes, tqdm progress);
* adaptive certification at target radii (r = 0.25, 0.5 at sigma = 0.25; r = 0.5, 1.0 at sigma = 0.5),
  capped at the same n (max_samples = n0 + n), decides "certified at r" or not;

and the script prints the share of points where the two decisions agree (target >= 99%), the mean
forward passes per input of each (n0 included; target >= 10x fewer), the samples per second of our
sampler and of the bare base model, and writes everything to ``--out`` as JSON plus a PNG histogram.

    python benchmarks/bench_adaptive.py                 # full run (fixed-n counts take long; resumable)
    python benchmarks/bench_adaptive.py --sigmas 0.25   # one sigma
    python benchmarks/bench_adaptive.py --quick         # smoke run: 20 points, n = 10,000, 2 epochs
    python benchmarks/bench_adaptive.py --cached-only   # compare on the points whose counts are cached
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_smoothing_plugin import RandomizedSmoothingClassifier, Smoother  # noqa: E402
from art_smoothing_plugin import statistics as stats_  # noqa: E402
from art_smoothing_plugin.adaptive import certify_adaptive  # noqa: E402
from art_smoothing_plugin.performance import autotune_batch_size  # noqa: E402
from evaluations.data import load_dataset  # noqa: E402
from evaluations.storage import atomic_write_bytes as atomic_write  # noqa: E402
from evaluations.zoo import build_model  # noqa: E402

RADII = {0.25: (0.25, 0.5), 0.5: (0.5, 1.0)}
NUM_CLASSES = 10


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(path, buffer.getvalue())


def train_or_load(sigma: float, data, epochs: int, cache: Path, seed: int = 0) -> tuple[torch.nn.Module, str]:
    """A LeNet trained with Gaussian noise at ``sigma`` (cached); returns the model and a digest of its
    weights, which keys the count caches (a retrained model invalidates them)."""
    path = cache / f"lenet_mnist5k_sigma{sigma}_epochs{epochs}_seed{seed}.pt"
    model = build_model("lenet", data.input_shape, data.nb_classes, seed=seed)
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        estimator = RandomizedSmoothingClassifier(
            model,
            input_shape=data.input_shape,
            nb_classes=data.nb_classes,
            optimizer=optimizer,
            clip_values=(0.0, 1.0),
            scale=sigma,
            device_type="cpu",
            seed=seed,
        )
        estimator.fit(data.x_train, data.y_train, batch_size=128, nb_epochs=epochs, verbose=True)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        atomic_write(path, buffer.getvalue())
    model.eval()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return model, digest


def fixed_counts(
    smoother: Smoother,
    x: torch.Tensor,
    n0: int,
    n: int,
    path: Path,
    chunk: int,
    seed: int,
    compute: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Selection and estimation vote counts of fixed-n CERTIFY for each point, cached in ``path``.

    Points are processed in chunks, each with its own seed (so a resumed run gives the same counts as
    an uninterrupted one), and the cache is rewritten atomically after every chunk."""
    num = len(x)
    selection = np.zeros((num, NUM_CLASSES), np.int64)
    estimation = np.zeros((num, NUM_CLASSES), np.int64)
    done = np.zeros(num, bool)
    if path.exists():
        with np.load(path) as cached:
            have = min(num, len(cached["done"]))
            selection[:have], estimation[:have] = cached["selection"][:have], cached["estimation"][:have]
            done[:have] = cached["done"][:have]
    todo = [start for start in range(0, num, chunk) if not done[start : start + chunk].all()]
    if compute and todo:
        bar = tqdm(total=len(todo) * chunk * (n0 + n), unit="sample", unit_scale=True, desc=path.stem)
        for start in todo:
            stop = min(start + chunk, num)
            smoother.reseed(int(np.random.SeedSequence([seed, start]).generate_state(1)[0]))
            selection[start:stop] = smoother.vote_counts(x[start:stop], n0).numpy()
            bar.update((stop - start) * n0)
            estimation[start:stop] = smoother.vote_counts(x[start:stop], n).numpy()
            bar.update((stop - start) * n)
            done[start:stop] = True
            save_npz(path, selection=selection, estimation=estimation, done=done)
        bar.close()
    return selection, estimation, done


def throughput(model: torch.nn.Module, smoother: Smoother, x: torch.Tensor, batch: int, n: int) -> dict:
    """Samples per second of the bare forward pass (pre-made batch, argmax) and of our vote counting."""
    bare_input = x[:1].repeat(batch, 1, 1, 1)
    with torch.inference_mode():
        model(bare_input).argmax(1)
        start, done = time.perf_counter(), 0
        while done < n:
            model(bare_input).argmax(1)
            done += batch
        bare = done / (time.perf_counter() - start)
    smoother.vote_counts(x[:1], batch)
    start = time.perf_counter()
    smoother.vote_counts(x[:1], n)
    ours = n / (time.perf_counter() - start)
    return {"batch_size": batch, "bare_forward_samples_per_s": bare, "ours_samples_per_s": ours}


def plot_samples(results: list[dict], path: Path, cap: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    bins = np.logspace(np.log10(50), np.log10(cap * 1.2), 40)
    for axis, row in zip(axes[0], results, strict=True):
        used = np.asarray(row["samples_used_per_point"])
        axis.hist(used, bins=bins, color="tab:blue")
        axis.axvline(cap, color="tab:red", linestyle="--", label=f"fixed n0+n = {cap:,}")
        axis.axvline(used.mean(), color="black", linestyle=":", label=f"adaptive mean = {used.mean():,.0f}")
        axis.set_xscale("log")
        axis.set_title(
            f"sigma={row['sigma']}, r={row['radius']}, {row['points']} points: "
            f"agree {100 * row['agreement']:.1f}%",
            fontsize=10,
        )
        axis.set_xlabel("forward passes per input (n0 included)")
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel("test points")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5], choices=sorted(RADII))
    parser.add_argument("--points", type=int, default=200, help="first N MNIST-5k test points")
    parser.add_argument(
        "--n", type=int, default=100_000, help="fixed-n estimation samples (and adaptive cap)"
    )
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=5, help="points per cached chunk of fixed-n counts")
    parser.add_argument("--batch-size", default="auto", help="samples per forward pass, or 'auto'")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (1 is fastest on a shared CPU)"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path("~/.cache/art-smoothing/bench_adaptive").expanduser()
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--cached-only", action="store_true", help="use only fixed-n counts already cached")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 points, n=10,000, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.points, args.n, args.epochs = min(args.points, 20), 10_000, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)

    data = load_dataset("mnist5k")
    x_all = torch.from_numpy(data.x_test[: args.points])
    y_all = data.y_test[: args.points]
    rows: list[dict] = []
    speeds: dict[str, dict] = {}
    for sigma in args.sigmas:
        model, digest = train_or_load(sigma, data, args.epochs, args.cache)

        def labels(z: torch.Tensor, model: torch.nn.Module = model) -> torch.Tensor:
            return model(z).argmax(1)

        if args.batch_size == "auto":
            batch = autotune_batch_size(labels, x_all[:1], sigma=sigma, max_batch=8192)
        else:
            batch = int(args.batch_size)
        smoother = Smoother(labels, NUM_CLASSES, sigma, batch_size=batch, seed=0)
        speeds[str(sigma)] = throughput(model, smoother, x_all, batch, n=20_000)
        cache_file = args.cache / f"fixed_sigma{sigma}_n{args.n}_n0{args.n0}_{digest}.npz"
        selection, estimation, done = fixed_counts(
            smoother, x_all, args.n0, args.n, cache_file, args.chunk, seed=1, compute=not args.cached_only
        )
        index = np.flatnonzero(done)
        if len(index) == 0:
            print(f"sigma={sigma}: no fixed-n counts cached yet in {cache_file}")
            continue
        candidates = selection[index].argmax(1)
        counts_top = estimation[index, candidates]
        p_lower_fixed = np.atleast_1d(stats_.clopper_pearson_lower(counts_top, args.n, args.alpha))
        for radius in RADII[sigma]:
            threshold = float(stats_.required_top_probability(radius, sigma))
            fixed_certified = p_lower_fixed > threshold
            adaptive_smoother = Smoother(
                labels, NUM_CLASSES, sigma, batch_size=batch, seed=int(1e6 * radius) + 7
            )
            start = time.perf_counter()
            result = certify_adaptive(
                adaptive_smoother,
                x_all[index],
                mode="radius",
                radius=radius,
                max_samples=args.n0 + args.n,
                alpha=args.alpha,
                n0=args.n0,
                progress=True,
            )
            seconds = time.perf_counter() - start
            adaptive_certified = result.extras["certified"]
            both = fixed_certified & adaptive_certified
            row = {
                "sigma": sigma,
                "radius": radius,
                "points": int(len(index)),
                "agreement": float(np.mean(fixed_certified == adaptive_certified)),
                "disagreements": int(np.sum(fixed_certified != adaptive_certified)),
                "fixed_only": int(np.sum(fixed_certified & ~adaptive_certified)),
                "adaptive_only": int(np.sum(~fixed_certified & adaptive_certified)),
                "label_mismatch_when_both_certify": int(np.sum(candidates[both] != result.labels[both])),
                "fixed_certified_accuracy": float(np.mean(fixed_certified & (candidates == y_all[index]))),
                "adaptive_certified_accuracy": float(
                    np.mean(adaptive_certified & (result.labels == y_all[index]))
                ),
                "fixed_mean_samples": float(args.n0 + args.n),
                "adaptive_mean_samples": float(result.samples_used.mean()),
                "adaptive_median_samples": float(np.median(result.samples_used)),
                "adaptive_at_cap": int(np.sum(result.samples_used == args.n0 + args.n)),
                "savings_factor": float((args.n0 + args.n) / result.samples_used.mean()),
                "adaptive_seconds": seconds,
                "samples_used_per_point": result.samples_used.tolist(),
            }
            rows.append(row)

    summary = {"args": {k: str(v) for k, v in vars(args).items()}, "throughput": speeds, "rows": rows}
    tag = "quick" if args.quick else f"n{args.n}"
    (args.out / f"bench_adaptive_{tag}.json").write_text(json.dumps(summary, indent=1))
    print()
    for sigma, speed in speeds.items():
        print(
            f"sigma={sigma}: batch {speed['batch_size']}: ours {speed['ours_samples_per_s']:,.0f} samples/s, "
            f"bare forward {speed['bare_forward_samples_per_s']:,.0f} samples/s "
            f"({speed['ours_samples_per_s'] / speed['bare_forward_samples_per_s']:.2f}x)"
        )
    header = (
        f"{'sigma':>5} {'r':>5} {'points':>6} {'agree':>7} {'fixed-only':>10} {'adapt-only':>10} "
        f"{'fixed mean':>10} {'adapt mean':>10} {'median':>7} {'at cap':>6} {'saving':>7} "
        f"{'cert.acc fixed/adapt':>20}"
    )
    print(header)
    for row in rows:
        print(
            f"{row['sigma']:>5} {row['radius']:>5} {row['points']:>6} {100 * row['agreement']:>6.1f}% "
            f"{row['fixed_only']:>10} {row['adaptive_only']:>10} {row['fixed_mean_samples']:>10,.0f} "
            f"{row['adaptive_mean_samples']:>10,.0f} {row['adaptive_median_samples']:>7,.0f} "
            f"{row['adaptive_at_cap']:>6} {row['savings_factor']:>6.1f}x "
            f"{100 * row['fixed_certified_accuracy']:>9.1f}/{100 * row['adaptive_certified_accuracy']:.1f}"
        )
    if rows:
        plot_samples(rows, args.out / f"bench_adaptive_{tag}.png", args.n0 + args.n)
        print(f"\nwrote {args.out / f'bench_adaptive_{tag}.json'} and .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
