"""Training for certified robustness on MNIST-5k: Gaussian augmentation (Cohen et al. 2019) against SmoothAdv,
MACER, Consistency and SmoothMix, the same LeNet and the same epoch budget for every method.

For each method, sigma and training seed it trains a LeNet on the MNIST-5k train split (4,000 images; Adam,
``--lr``, ``--batch-size``, ``--epochs``, through art_smoothing_plugin.training), certifies test points with
CERTIFY (n0 = 100, n = 10,000, alpha = 0.001), and prints the ACR (average certified radius: the radius where
certified and correct, 0 elsewhere, averaged over the points) of every (method, sigma, seed), its mean and
spread over the seeds, the certified accuracy at a few radii and the wall-clock time of each training.
Models and certificates are cached under ``--out`` by a hash of everything that makes them, so an interrupted
run resumes; every run is appended to ``attempts.jsonl`` there (all attempts are reported, not the best).

Two phases, on disjoint test points:

* tuning (the default): test points 500-999 only. Hyper-parameters start from the authors' MNIST settings
  (``PAPER_MNIST``) and are changed with ``--params``; look at the ACRs, choose.
* confirmation (``--confirm``): points 0-499, never used for tuning, and only after ``PREREGISTRATION``
  below has been filled in and committed (one method, its hyper-parameters, the epoch budget). It then
  trains that method and Gaussian augmentation with seeds 0, 1, 2 at sigma = 0.25, 0.5, 1.0 and reports:
  at sigma = 1.0 the pre-registered paired test (one-sided sign-flip permutation test of the mean per-point
  radius difference, per-point radii averaged over the three seeds, 100,000 seeded resamples; H0: equal
  mean radius) with the bar "ACR gain >= 5% and p < 0.01"; at 0.5 and 0.25 the relative ACR gain with a
  99% paired-bootstrap interval.

    python benchmarks/training_mnist.py --time-epoch              # one epoch of each method: cost estimate
    python benchmarks/training_mnist.py --quick                   # smoke run: 20 points, n = 500, 1 epoch
    python benchmarks/training_mnist.py --sigmas 1.0 --methods smoothadv gaussian \\
        --params '{"smoothadv": {"epsilon": 0.5}}'               # a tuning attempt (points 500-999)
    python benchmarks/training_mnist.py --confirm                 # the pre-registered test (points 0-499)
    python benchmarks/training_mnist.py --confirm --share 1/2 &   # ... on two cores: two shares side by
    python benchmarks/training_mnist.py --confirm --share 2/2     # side, then --confirm alone (all cached)
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_smoothing_plugin import RandomizedSmoothingClassifier  # noqa: E402
from art_smoothing_plugin.statistics import max_certifiable_radius  # noqa: E402
from art_smoothing_plugin.training import TRAINING_METHODS, make_training_method, train  # noqa: E402
from evaluations.data import load_dataset  # noqa: E402
from evaluations.storage import atomic_write_bytes as atomic_write  # noqa: E402
from evaluations.zoo import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = tuple(TRAINING_METHODS)  # gaussian, smoothadv, macer, consistency, smoothmix
SIGMAS = (0.25, 0.5, 1.0)
SEEDS = (0, 1, 2)
RADII = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5)
#: One colour per method, in every plot.
COLOURS = {
    "gaussian": "tab:gray",
    "smoothadv": "tab:blue",
    "macer": "tab:orange",
    "consistency": "tab:green",
    "smoothmix": "tab:red",
}
#: ... and a line style each, so that curves lying on one another stay visible.
LINESTYLES = {
    "gaussian": "-",
    "smoothadv": "--",
    "macer": "-.",
    "consistency": ":",
    "smoothmix": (0, (5, 1, 1, 1)),
}
TUNING_POINTS = (500, 1000)
CONFIRMATION_POINTS = (0, 500)

#: The authors' MNIST settings (Salman et al.'s as run by Jeong & Shin 2020; MACER's as run by Jeong & Shin
#: and Jeong et al. 2021; Consistency's own MNIST runs; SmoothMix's own), per sigma. Warm-ups are capped at
#: the epoch budget (the papers train 90 epochs).
PAPER_MNIST: dict[str, dict[float, dict]] = {
    "gaussian": {sigma: {} for sigma in SIGMAS},
    "smoothadv": {
        sigma: {"epsilon": 1.0, "num_steps": 10, "num_noise_vec": 4, "warmup": 10} for sigma in SIGMAS
    },
    "macer": {
        0.25: {"gaussian_samples": 16, "beta": 16.0, "gamma": 8.0, "lmbda": 16.0},
        0.5: {"gaussian_samples": 16, "beta": 16.0, "gamma": 8.0, "lmbda": 16.0},
        1.0: {"gaussian_samples": 16, "beta": 16.0, "gamma": 8.0, "lmbda": 6.0},
    },
    "consistency": {sigma: {"num_noise_vec": 2, "lmbda": 20.0, "eta": 0.5} for sigma in SIGMAS},
    "smoothmix": {
        sigma: {
            "num_noise_vec": 4,
            "num_steps": steps,
            "step_size": 1.0,
            "eta": 5.0,
            "mix_step": 0,
            "warmup": 10,
        }
        for sigma, steps in ((0.25, 2), (0.5, 4), (1.0, 8))
    },
}

#: Filled in (and committed) before the confirmatory run, never after: e.g.
#: {"method": "consistency", "params": {1.0: {...}, 0.5: {...}, 0.25: {...}}, "epochs": 20, "batch_size": 128,
#:  "lr": 0.001, "date": "YYYY-MM-DD"}. None: no test is pre-registered yet, and --confirm refuses to run.
PREREGISTRATION: dict | None = {
    # Chosen 2026-11-30 on tuning points 500-699 (sigma = 1.0, seed 0, n = 10,000; attempts.jsonl):
    # gaussian 1.248, consistency lambda = 10 1.413 (+13%), lambda = 20 (the paper's MNIST value) 1.319.
    # Consistency rather than SmoothMix or SmoothAdv because its confirmatory grid (9 trainings of ~15 s
    # beside Gaussian augmentation's) fits the compute at hand; lambda = 10 at every sigma (only sigma = 1.0
    # was tuned). Disclosed: the harness's `training` preset (100 points 0-99, n = 2,000, other settings)
    # had been looked at before this choice; those points are part of the confirmation points 0-499.
    "method": "consistency",
    "params": {
        1.0: {"num_noise_vec": 2, "lmbda": 10.0, "eta": 0.5},
        0.5: {"num_noise_vec": 2, "lmbda": 10.0, "eta": 0.5},
        0.25: {"num_noise_vec": 2, "lmbda": 10.0, "eta": 0.5},
    },
    "epochs": 20,
    "batch_size": 128,
    "lr": 0.001,
    "date": "2026-11-30",
}
#: The bar of the confirmatory test at sigma = 1.0.
BAR_GAIN, BAR_LEVEL = 0.05, 0.01


# -- statistics of the comparison ------------------------------------------------------------------------
def point_radii(labels: np.ndarray, radii: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-point certified radius counted by the ACR: the radius where certified and correct, else 0."""
    labels, radii, y = np.asarray(labels), np.asarray(radii, dtype=np.float64), np.asarray(y)
    return np.where((labels == y) & (labels >= 0), radii, 0.0)


def paired_sign_flip_test(
    first: np.ndarray, second: np.ndarray, resamples: int = 100_000, seed: int = 0
) -> tuple[float, float]:
    """One-sided paired permutation test of ``mean(first) > mean(second)``: ``(mean difference, p)``.

    Under H0 (equal mean radius, exchangeable pairs) each per-point difference is as likely to have either
    sign; ``p`` is the fraction of ``resamples`` random sign flips (and the observed one) whose mean
    difference is at least the observed, so ``P(p <= a) <= a`` under H0."""
    difference = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    if difference.ndim != 1 or len(difference) == 0:
        raise ValueError(f"first and second must be 1-D, of the same positive length; got {difference.shape}")
    observed = difference.mean()
    generator = np.random.default_rng(seed)
    exceed = 0
    for start in range(0, resamples, 10_000):
        count = min(10_000, resamples - start)
        signs = generator.choice((-1.0, 1.0), size=(count, len(difference)))
        exceed += int(np.sum((signs * difference).mean(axis=1) >= observed - 1e-12))
    return float(observed), (exceed + 1) / (resamples + 1)


def relative_gain_interval(
    first: np.ndarray, second: np.ndarray, level: float = 0.99, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """``mean(first) / mean(second) - 1`` and its paired-bootstrap percentile interval at ``level``."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if second.mean() <= 0:
        raise ValueError("the baseline's mean radius is 0: a relative gain is undefined")
    generator = np.random.default_rng(seed)
    index = generator.integers(0, len(first), size=(resamples, len(first)))
    gains = first[index].mean(axis=1) / np.maximum(second[index].mean(axis=1), 1e-12) - 1
    low, high = np.quantile(gains, [(1 - level) / 2, (1 + level) / 2])
    return float(first.mean() / second.mean() - 1), float(low), float(high)


# -- training and certification, cached ------------------------------------------------------------------
def key_of(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def trained_lenet(
    data, method: str, params: dict, sigma: float, seed: int, args
) -> tuple[torch.nn.Module, str, float]:
    """The LeNet trained with ``method`` at ``sigma`` and ``seed`` (cached): ``(model, key, seconds)``."""
    settings = dict(method=method, params=params, sigma=sigma, seed=seed, epochs=args.epochs)
    settings.update(batch_size=args.batch_size, lr=args.lr, train_points=args.train_points, arch="lenet")
    key = key_of(**settings)
    path, meta = args.out / "models" / f"{key}.pt", args.out / "models" / f"{key}.json"
    model = build_model("lenet", data.input_shape, data.nb_classes, seed=seed).to(args.device)
    if not path.exists():
        started = time.time()
        train(
            make_training_method(method, **params),
            model,
            data.x_train[: args.train_points],
            data.y_train[: args.train_points],
            sigma=sigma,
            optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
            nb_epochs=args.epochs,
            batch_size=args.batch_size,
            clip_values=(0.0, 1.0),
            seed=seed,
            progress=True,
        )
        seconds = time.time() - started
        buffer = io.BytesIO()
        torch.save({name: tensor.cpu() for name, tensor in model.state_dict().items()}, buffer)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, buffer.getvalue())
        record = {**settings, "train_seconds": seconds, "device": device_name(args.device)}
        atomic_write(meta, json.dumps(record).encode())
    model.load_state_dict(torch.load(path, map_location=args.device, weights_only=True))
    return model.eval(), key, json.loads(meta.read_text())["train_seconds"]


def device_name(device: torch.device) -> str:
    """What trained a model, for its record: "cpu" or the GPU's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def trained_on(key: str, args) -> str:
    """Where the cached model ``key`` was trained (records older than the --device option: "cpu")."""
    meta = args.out / "models" / f"{key}.json"
    return json.loads(meta.read_text()).get("device", "cpu") if meta.exists() else "cpu"


def certified(
    model: torch.nn.Module, key: str, sigma: float, x: np.ndarray, y: np.ndarray, first: int, args
) -> dict:
    """CERTIFY on the points (cached by the model's key, the points and the settings)."""
    settings = key_of(model=key, first=first, count=len(x), n=args.n, n0=args.n0, alpha=args.alpha, seed=1234)
    path = args.out / "certify" / f"{settings}.json"
    if path.exists():
        return json.loads(path.read_text())
    estimator = RandomizedSmoothingClassifier(
        model,
        input_shape=tuple(x.shape[1:]),
        nb_classes=10,
        scale=sigma,
        alpha=args.alpha,
        n0=args.n0,
        seed=1234,
        batch_size=args.certify_batch,
        device_type="gpu" if args.device.type == "cuda" else "cpu",
        verbose=True,
    )
    started = time.time()
    result = estimator.certify_detailed(x, args.n)
    record = {
        "labels": result.labels.tolist(),
        "radii": result.radii.tolist(),
        "point_radii": point_radii(result.labels, result.radii, y).tolist(),
        "seconds": time.time() - started,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record).encode())
    return record


def params_for(method: str, sigma: float, args) -> dict:
    params = dict(PAPER_MNIST[method][sigma])
    params.update(args.params.get(method, {}))
    if "warmup" in params:
        params["warmup"] = min(params["warmup"], args.epochs)
    return params


def log_attempt(path: Path, attempt: dict) -> bool:
    """Append ``attempt`` to the log unless the same run is there already (a rerun that found its model
    and certificates cached, e.g. the report after ``--share`` runs, is not a new attempt)."""
    line = json.dumps(attempt)
    if path.exists() and line in path.read_text().splitlines():
        return False
    with open(path, "a") as log:
        log.write(line + "\n")
    return True


def run_grid(data, methods, sigmas, seeds, first: int, count: int, args, phase: str) -> dict:
    """Train and certify every (sigma, method, seed); with ``args.share = (i, k)`` only the jobs whose
    position in that order is i - 1 modulo k (the k shares are disjoint and together the whole grid)."""
    x, y = data.x_test[first : first + count], data.y_test[first : first + count]
    results = {}
    share, shares = args.share
    jobs = [(sigma, method, seed) for sigma in sigmas for method in methods for seed in seeds]
    for sigma, method, seed in jobs[share - 1 :: shares]:
        params = params_for(method, sigma, args)
        model, key, seconds = trained_lenet(data, method, params, sigma, seed, args)
        record = certified(model, key, sigma, x, y, first, args)
        acr = float(np.mean(record["point_radii"]))
        trainer = trained_on(key, args)
        results[(method, sigma, seed)] = {
            **record,
            "params": params,
            "train_seconds": seconds,
            "acr": acr,
            "device": trainer,
        }
        attempt = dict(
            phase=phase,
            method=method,
            sigma=sigma,
            seed=seed,
            params=params,
            points=[first, first + count],
        )
        attempt.update(epochs=args.epochs, n=args.n, acr=acr, train_seconds=seconds, model=key)
        if trainer != "cpu":  # CPU runs are logged as before, so their dedupe keys stay the same
            attempt["device"] = trainer
        log_attempt(args.out / "attempts.jsonl", attempt)
        print(f"sigma={sigma} {method:>11} seed {seed}: ACR {acr:.3f}, training {seconds:.0f} s")
    return results


# -- reports -----------------------------------------------------------------------------------------------
def summary_table(results: dict, methods, sigmas, seeds, args, points: str) -> str:
    lines = [
        f"MNIST-5k test points {points}; LeNet, {args.epochs} epochs (Adam, lr {args.lr}, batch "
        f"{args.batch_size}) for every method; CERTIFY n0 = {args.n0}, n = {args.n}, alpha = {args.alpha}. "
        f"ACR: mean (sd) over seeds {', '.join(map(str, seeds))}; certified accuracy (%) averaged over the "
        "seeds; training wall-clock per run, on "
        + " and ".join(sorted({run.get("device", "cpu") for run in results.values()}) or ["cpu"])
        + ".",
        "",
        "| sigma | method | ACR | "
        + " | ".join(f"r={r:g}" for r in RADII)
        + " | training (s) | hyper-parameters |",
        "|---|---|---|" + "---|" * len(RADII) + "---|---|",
    ]
    for sigma in sigmas:
        for method in methods:
            runs = [results[(method, sigma, seed)] for seed in seeds if (method, sigma, seed) in results]
            if not runs:
                continue
            acrs = [run["acr"] for run in runs]
            accuracy = [
                100 * np.mean([np.mean(np.asarray(run["point_radii"]) >= max(r, 1e-12)) for run in runs])
                for r in RADII
            ]
            seconds = np.mean([run["train_seconds"] for run in runs])
            spread = f" ({np.std(acrs, ddof=1):.3f})" if len(acrs) > 1 else ""
            lines.append(
                f"| {sigma} | {method} | {np.mean(acrs):.3f}{spread} | "
                + " | ".join(f"{value:.1f}" for value in accuracy)
                + f" | {seconds:.0f} | {json.dumps(runs[0]['params'])} |"
            )
    return "\n".join(lines) + "\n"


def plot(results: dict, methods, sigmas, seeds, path: Path, subtitle: str, args) -> None:
    """Certified accuracy against radius (the seeds' mean), one panel per sigma, one colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(sigmas), figsize=(max(6.5, 5.2 * len(sigmas)), 4.2), squeeze=False)
    for axis, sigma in zip(axes[0], sigmas, strict=True):
        largest = max_certifiable_radius(args.n, args.alpha, sigma)
        grid = np.linspace(0, 1.05 * largest, 300)
        for method in methods:
            runs = [results[(method, sigma, s)] for s in seeds if (method, sigma, s) in results]
            if not runs:
                continue

            def accuracy(radius: float, runs=runs) -> float:
                return float(
                    np.mean([np.mean(np.asarray(run["point_radii"]) >= max(radius, 1e-12)) for run in runs])
                )

            acr = np.mean([run["acr"] for run in runs])
            style = dict(color=COLOURS[method], linestyle=LINESTYLES[method])
            axis.plot(grid, [accuracy(r) for r in grid], **style, label=f"{method} (ACR {acr:.3f})")
            marked = [r for r in RADII if r <= grid[-1]]  # the radii of the table, as measured points
            axis.plot(
                marked, [accuracy(r) for r in marked], color=COLOURS[method], marker="o", linestyle="none"
            )
        axis.axvline(largest, color="black", linewidth=0.8, linestyle=":", alpha=0.6)
        axis.set_title(f"sigma = {sigma}")
        axis.set_xlabel("L2 radius (pixels in [0, 1])")
        axis.set_ylabel("certified accuracy")
        axis.set_ylim(0, 1)
        axis.grid(alpha=0.3)
        axis.legend(loc="lower left", fontsize=8)
    figure.suptitle(f"MNIST-5k, LeNet: training for smoothing\n({subtitle})", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def confirmation_report(results: dict, method: str, seeds, args) -> str:
    def mean_radii(name: str, sigma: float) -> np.ndarray:
        return np.mean([results[(name, sigma, seed)]["point_radii"] for seed in seeds], axis=0)

    lines = [
        f"Confirmatory test (pre-registered {PREREGISTRATION.get('date', '?')}): {method} against Gaussian "
        f"augmentation, MNIST-5k test points {CONFIRMATION_POINTS[0]}-{CONFIRMATION_POINTS[1] - 1}, "
        f"per-point radii averaged over seeds {', '.join(map(str, seeds))}.",
        "",
        "| sigma | ACR gaussian | ACR " + method + " | gain | test | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for sigma in SIGMAS:
        ours, base = mean_radii(method, sigma), mean_radii("gaussian", sigma)
        gain, low, high = relative_gain_interval(ours, base)
        if sigma == 1.0:
            _, pvalue = paired_sign_flip_test(ours, base)
            passed = gain >= BAR_GAIN and pvalue < BAR_LEVEL
            test = f"sign-flip p = {pvalue:.2g}"
            verdict = f"{'meets' if passed else 'misses'} the bar (gain >= {BAR_GAIN:.0%}, p < {BAR_LEVEL})"
        else:
            test, verdict = f"99% interval [{100 * low:+.1f}%, {100 * high:+.1f}%]", "reported, not tested"
        lines.append(
            f"| {sigma} | {base.mean():.3f} | {ours.mean():.3f} | {100 * gain:+.1f}% | {test} | {verdict} |"
        )
    return "\n".join(lines) + "\n"


# -- cost ----------------------------------------------------------------------------------------------------
def time_epochs(data, args) -> int:
    """Time one training epoch of each method (at the authors' settings for the last of ``--sigmas``) on
    ``--time-points`` training images, and the certification throughput; print what a full run costs."""
    sigma = args.sigmas[-1]
    per_epoch = {}
    count = args.time_points

    def one_epoch(method: str, params: dict, images: int) -> None:
        model = build_model("lenet", data.input_shape, data.nb_classes, seed=0)
        train(
            make_training_method(method, **params),
            model,
            data.x_train[:images],
            data.y_train[:images],
            sigma=sigma,
            optimizer=torch.optim.Adam(model.parameters(), lr=args.lr),
            nb_epochs=1,
            batch_size=args.batch_size,
            clip_values=(0.0, 1.0),
            seed=0,
            progress=False,
        )

    one_epoch("gaussian", {}, args.batch_size)  # untimed: torch's one-off start-up costs
    for method in args.methods:
        params = params_for(method, sigma, args)
        if "warmup" in params:
            params["warmup"] = 1  # one epoch timed; the warm-up changes the radius, not the cost
        started = time.time()
        one_epoch(method, params, count)
        per_epoch[method] = (time.time() - started) * len(data.x_train) / count
        print(
            f"{method:>11} at sigma {sigma} {json.dumps(params)}: {per_epoch[method]:.1f} s per epoch "
            f"of {len(data.x_train):,}"
        )
    model = build_model("lenet", data.input_shape, data.nb_classes, seed=0).eval()
    estimator = RandomizedSmoothingClassifier(
        model,
        input_shape=data.input_shape,
        nb_classes=10,
        scale=sigma,
        batch_size=args.certify_batch,
        device_type="cpu",
    )
    started = time.time()
    estimator.certify_detailed(data.x_test[:2], 2_000)
    rate = 2 * (2_000 + args.n0) / (time.time() - started)
    models = len(SIGMAS) * len(SEEDS)
    certify_hours = models * 500 * (args.n0 + args.n) / rate / 3600
    minutes = 500 * (args.n0 + args.n) / rate / 60
    print(
        f"certification: {rate:,.0f} noisy samples/s; 500 points at n = {args.n}: {minutes:.0f} min per model"
    )
    print(f"\none full grid ({len(SIGMAS)} sigmas x {len(SEEDS)} seeds, {args.epochs} epochs), per method:")
    total = 0.0
    for method, seconds in per_epoch.items():
        hours = models * args.epochs * seconds / 3600
        total += hours + certify_hours
        print(f"  {method:>11}: training {hours:.1f} h + certification {certify_hours:.1f} h")
    print(f"  all {len(per_epoch)} methods: {total:.1f} h on this machine (torch threads: {args.threads})")
    return 0


def _share(text: str) -> tuple[int, int]:
    """``"I/K"`` with 1 <= I <= K."""
    try:
        share, shares = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 1/2, got {text!r}") from None
    if not 1 <= share <= shares:
        raise argparse.ArgumentTypeError(f"expected I/K with 1 <= I <= K, got {text!r}")
    return share, shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--epochs", type=int, default=20, help="the same epoch budget for every method")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--train-points", type=int, default=4000)
    parser.add_argument("--params", type=json.loads, default={}, help='JSON: {"method": {"name": value}}')
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--n0", type=int, default=100)
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--certify-batch", type=int, default=2_000)
    parser.add_argument("--points", type=int, default=500, help="tuning points, from test index 500")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (others share the CPU)")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where to train and certify (results differ from a CPU run's only by the noise drawn)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "training_mnist")
    parser.add_argument("--confirm", action="store_true", help="the pre-registered test on points 0-499")
    parser.add_argument(
        "--share",
        type=_share,
        default=(1, 1),
        metavar="I/K",
        help="run only the I-th of K disjoint shares of the grid (K processes side by side, one per core); "
        "a last run without --share finds every result cached and writes the report",
    )
    parser.add_argument(
        "--time-epoch", action="store_true", help="time one epoch of each method; print costs"
    )
    parser.add_argument("--time-points", type=int, default=1000, help="training images timed by --time-epoch")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 points, n = 500, 1 epoch, seed 0")
    args = parser.parse_args(argv)
    for method, params in args.params.items():
        if method not in METHODS:
            parser.error(f"--params: unknown training method {method!r}; choose one of {', '.join(METHODS)}")
        make_training_method(method, **params)  # names and ranges checked before any work
    if args.confirm and PREREGISTRATION is None:
        parser.error(
            "no confirmatory test is pre-registered: fill in PREREGISTRATION in this file (one method, its "
            "hyper-parameters per sigma, the epoch budget), commit it, then run --confirm"
        )
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU on this machine")
    args.device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist5k")
    if args.time_epoch:
        return time_epochs(data, args)
    if args.quick:
        args.points, args.n, args.epochs, args.seeds, args.train_points = 20, 500, 1, [0], 500
        args.out = args.out / "quick"
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    if args.confirm:
        method = PREREGISTRATION["method"]
        args.params = {}
        args.epochs, args.batch_size, args.lr = (
            PREREGISTRATION["epochs"],
            PREREGISTRATION["batch_size"],
            PREREGISTRATION["lr"],
        )
        PAPER_MNIST[method] = {float(s): p for s, p in PREREGISTRATION["params"].items()}
        first, count = CONFIRMATION_POINTS[0], CONFIRMATION_POINTS[1] - CONFIRMATION_POINTS[0]
        results = run_grid(data, ["gaussian", method], SIGMAS, SEEDS, first, count, args, "confirm")
        if args.share != (1, 1):
            print(f"share {args.share[0]}/{args.share[1]} done in {time.time() - started:.0f} s")
            return 0
        report = confirmation_report(results, method, SEEDS, args)
        report += "\n" + summary_table(results, ["gaussian", method], SIGMAS, SEEDS, args, "0-499")
        (args.out / "confirm.md").write_text(report)
        plot(
            results,
            ["gaussian", method],
            SIGMAS,
            SEEDS,
            args.out / "confirm.png",
            "points 0-499, pre-registered",
            args,
        )
        print(report)
        print(f"wrote {args.out / 'confirm.md'} in {time.time() - started:.0f} s")
        return 0

    first = TUNING_POINTS[0]
    count = min(args.points, TUNING_POINTS[1] - first)
    results = run_grid(data, args.methods, args.sigmas, args.seeds, first, count, args, "tune")
    if args.share != (1, 1):
        print(f"share {args.share[0]}/{args.share[1]} done in {time.time() - started:.0f} s")
        return 0
    table = summary_table(
        results, args.methods, args.sigmas, args.seeds, args, f"{first}-{first + count - 1} (tuning)"
    )
    (args.out / "tuning.md").write_text(table)
    plot(
        results,
        args.methods,
        args.sigmas,
        args.seeds,
        args.out / "tuning.png",
        f"tuning points, n = {args.n}",
        args,
    )
    print(table)
    print(f"wrote {args.out / 'tuning.md'} and tuning.png; every attempt in {args.out / 'attempts.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
