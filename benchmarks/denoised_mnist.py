"""Denoised smoothing on MNIST-5k: certified accuracy of a classifier trained on clean data only, with
no denoiser, a black-box denoiser, a white-box Stab+MSE denoiser and an MSE denoiser, beside a
classifier trained on noise (Cohen et al.'s baseline). Reproduces the experiment of Salman et al. 2020
at CPU scale.

    python benchmarks/denoised_mnist.py                      # defaults: ~15 minutes on 2 cores
    python benchmarks/denoised_mnist.py --sigmas 0.25 --n-test 100 --n 500   # a quick look

What it does, for each sigma (models are cached on disk, keyed by their training settings):

1. trains a LeNet on the 4,000 clean training images (once), and two surrogates, a small CNN and an
   MLP, trained separately with other seeds (once);
2. trains a DnCNN with the MSE objective; fine-tunes a copy with the Stability objective through the
   LeNet (white-box Stab+MSE) and another through the surrogates only (black-box Stab+MSE: the LeNet
   is never differentiated, as if it could only be queried);
3. trains a LeNet with Gaussian noise at sigma (RandomizedSmoothingClassifier.fit);
4. certifies the first ``--n-test`` of the 1,000 held-out images with each chain (CERTIFY, n0, n,
   alpha; the same seed for every chain) and writes, under ``--out``: ``denoised_mnist.md`` (the
   certified-accuracy table with exact binomial tests on discordant pairs against no denoiser),
   ``denoised_mnist.png`` (the curves) and ``denoised_mnist.json`` (per-point results).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_smoothing_plugin.denoisers import DenoiserTrainer, DnCNN, load_denoiser, save_denoiser  # noqa: E402
from art_smoothing_plugin.estimators import (  # noqa: E402
    DenoisedSmoothingClassifier,
    RandomizedSmoothingClassifier,
)
from art_smoothing_plugin.statistics import max_certifiable_radius  # noqa: E402
from evaluations.data import load_dataset  # noqa: E402
from evaluations.metrics import discordant_pairs_test  # noqa: E402
from evaluations.models import train_cross_entropy  # noqa: E402
from evaluations.zoo import build_model  # noqa: E402

RADII = (0.0, 0.25, 0.5, 0.75, 1.0)
CHAINS = ("none", "black-box", "white-box", "mse", "noise-trained")
LABELS = {
    "none": "no denoiser",
    "black-box": "black-box (Stab+MSE via surrogates)",
    "white-box": "white-box (Stab+MSE)",
    "mse": "MSE denoiser",
    "noise-trained": "trained on noise (Cohen)",
}
COLOURS = {
    "none": "tab:gray",
    "black-box": "tab:orange",
    "white-box": "tab:blue",
    "mse": "tab:green",
    "noise-trained": "black",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--n-test", type=int, default=200, help="held-out images to certify (of 1,000)")
    parser.add_argument("--n", type=int, default=1000, help="estimation samples per image")
    parser.add_argument("--n0", type=int, default=100, help="selection samples per image")
    parser.add_argument("--alpha", type=float, default=0.001)
    parser.add_argument("--batch-size", type=int, default=250, help="noisy samples per forward pass")
    parser.add_argument("--classifier-epochs", type=int, default=10)
    parser.add_argument("--mse-epochs", type=int, default=10, help="MSE (pre-)training epochs of the DnCNN")
    parser.add_argument("--stab-epochs", type=int, default=5, help="Stability fine-tuning epochs")
    parser.add_argument("--dncnn-depth", type=int, default=5)
    parser.add_argument("--dncnn-width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/art-smoothing/denoised_mnist"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/denoised"))
    args = parser.parse_args(argv)
    if not 0 < args.n_test <= 1000:
        parser.error("--n-test must be between 1 and 1000")
    if any(s <= 0 for s in args.sigmas):
        parser.error("--sigmas must be positive")
    return args


# -- models, trained once and cached ---------------------------------------------------------------------
def cache_key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def mlp(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )


def train_clean(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, epochs: int, seed: int, desc: str):
    return train_cross_entropy(
        model, x, y, epochs=epochs, batch_size=64, learning_rate=1e-3, seed=seed, progress=True, desc=desc
    )


def cached_classifier(cache: Path, name: str, build, train, **settings) -> torch.nn.Module:
    path = cache / f"{name}-{cache_key(name=name, **settings)}.pt"
    model = build()
    if path.is_file():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        print(f"loaded {name} from {path}")
        return model.eval()
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def cached_denoiser(cache: Path, name: str, make, **settings) -> torch.nn.Module:
    path = cache / f"{name}-{cache_key(name=name, **settings)}.pt"
    if path.is_file():
        print(f"loaded {name} from {path}")
        return load_denoiser(path)
    denoiser = make()
    save_denoiser(denoiser, path)
    return denoiser.eval()


def build_models(args: argparse.Namespace, data) -> tuple[torch.nn.Module, dict, dict]:
    cache = args.cache.expanduser()
    x, y = data.x_train, data.y_train
    epochs, seed = args.classifier_epochs, args.seed
    clean = cached_classifier(
        cache,
        "lenet-clean",
        lambda: build_model("lenet", data.input_shape, 10, seed=seed),
        lambda m: train_clean(m, x, y, epochs, seed, "clean LeNet"),
        epochs=epochs,
        seed=seed,
    )
    surrogates = [
        cached_classifier(
            cache,
            "surrogate-small-cnn",
            lambda: build_model("small_cnn", data.input_shape, 10, seed=seed + 1),
            lambda m: train_clean(m, x, y, epochs, seed + 1, "surrogate small CNN"),
            epochs=epochs,
            seed=seed + 1,
        ),
        cached_classifier(
            cache,
            "surrogate-mlp",
            lambda: mlp(seed + 2),
            lambda m: train_clean(m, x, y, epochs, seed + 2, "surrogate MLP"),
            epochs=epochs,
            seed=seed + 2,
        ),
    ]
    denoisers: dict[float, dict[str, torch.nn.Module]] = {}
    noise_trained: dict[float, torch.nn.Module] = {}
    for sigma in args.sigmas:
        shape = {"depth": args.dncnn_depth, "width": args.dncnn_width, "sigma": sigma, "seed": seed}

        def train_mse(sigma=sigma):
            denoiser = DnCNN(depth=args.dncnn_depth, width=args.dncnn_width, seed=seed)
            DenoiserTrainer(denoiser, "mse", sigma=sigma, seed=seed).fit(
                x, nb_epochs=args.mse_epochs, batch_size=32
            )
            return denoiser

        mse = cached_denoiser(cache, "dncnn-mse", train_mse, epochs=args.mse_epochs, **shape)

        def fine_tune(mode: str, mse=mse, sigma=sigma):
            denoiser = copy.deepcopy(mse)
            guide = {"classifier": clean} if mode == "white-box" else {"surrogates": surrogates}
            lr = 1e-3 if mode == "white-box" else 1e-4
            DenoiserTrainer(denoiser, "stab", lr=lr, seed=seed + 1, **guide).fit(
                x, nb_epochs=args.stab_epochs, batch_size=32
            )
            return denoiser

        settings = dict(shape, mse_epochs=args.mse_epochs, epochs=args.stab_epochs, classifier=epochs)
        denoisers[sigma] = {
            "mse": mse,
            "white-box": cached_denoiser(
                cache, "dncnn-stab-white", lambda: fine_tune("white-box"), **settings
            ),
            "black-box": cached_denoiser(
                cache, "dncnn-stab-black", lambda: fine_tune("black-box"), **settings
            ),
        }

        def train_noisy(model, sigma=sigma):
            estimator = RandomizedSmoothingClassifier(
                model,
                input_shape=data.input_shape,
                nb_classes=10,
                optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
                clip_values=(0.0, 1.0),
                device_type="cpu",
                scale=sigma,
                seed=seed,
            )
            estimator.fit(x, y, batch_size=64, nb_epochs=epochs, verbose=True)

        noise_trained[sigma] = cached_classifier(
            cache,
            "lenet-noise",
            lambda: build_model("lenet", data.input_shape, 10, seed=seed),
            train_noisy,
            epochs=epochs,
            seed=seed,
            sigma=sigma,
        )
    return clean, denoisers, noise_trained


# -- certification and report ------------------------------------------------------------------------------
def certify_chain(estimator: DenoisedSmoothingClassifier, x: np.ndarray, args, desc: str) -> dict:
    labels, radii, p_lower = [], [], []
    chunk = 10
    for start in tqdm(range(0, len(x), chunk), desc=desc, unit=f"×{chunk} images"):
        result = estimator.certify_detailed(x[start : start + chunk], args.n, n0=args.n0, alpha=args.alpha)
        labels.append(result.labels)
        radii.append(result.radii)
        p_lower.append(result.p_lower)
    return {
        "labels": np.concatenate(labels),
        "radii": np.concatenate(radii),
        "p_lower": np.concatenate(p_lower),
    }


def certified(result: dict, y: np.ndarray, radius: float) -> np.ndarray:
    return (result["labels"] == y) & (result["radii"] >= radius)


def markdown_table(results: dict, y: np.ndarray, args) -> str:
    lines = [
        f"Certified accuracy (%) on the first {len(y)} MNIST-5k test images; n0={args.n0}, n={args.n}, "
        f"alpha={args.alpha}. p: exact one-sided binomial test on discordant pairs against no denoiser "
        "(points certified correctly at that radius by one chain and not the other).",
        "",
        "| σ | chain | "
        + " | ".join(f"r={r:g}" for r in RADII)
        + " | p vs none (r=0) | p vs none (r=0.25) |",
        "|---|---|" + "---|" * len(RADII) + "---|---|",
    ]
    for sigma in args.sigmas:
        cap = max_certifiable_radius(args.n, args.alpha, sigma)
        for chain in CHAINS:
            result = results[sigma, chain]
            cells = []
            for r in RADII:
                cells.append("—" if r > cap else f"{100 * certified(result, y, r).mean():.1f}")
            if chain == "none":
                tests = ["", ""]
            else:
                tests = []
                for r in (0.0, 0.25):
                    b, c, p = discordant_pairs_test(
                        certified(result, y, r), certified(results[sigma, "none"], y, r)
                    )
                    tests.append(f"{p:.1g} ({b}/{c})")
            lines.append(f"| {sigma:g} | {LABELS[chain]} | " + " | ".join(cells + tests) + " |")
    lines += [
        "",
        "— : beyond the largest radius n samples can certify, "
        + ", ".join(f"{max_certifiable_radius(args.n, args.alpha, s):.2f} at σ={s:g}" for s in args.sigmas)
        + ". (b/c): points certified only with the denoiser / only without.",
    ]
    return "\n".join(lines)


def plot(results: dict, y: np.ndarray, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(args.sigmas), figsize=(5.2 * len(args.sigmas), 4.2), squeeze=False)
    for axis, sigma in zip(axes[0], args.sigmas, strict=True):
        cap = max_certifiable_radius(args.n, args.alpha, sigma)
        grid = np.linspace(0.0, cap * 1.05, 300)
        for chain in CHAINS:
            result = results[sigma, chain]
            curve = [100 * certified(result, y, r).mean() for r in grid]
            axis.plot(grid, curve, label=LABELS[chain], color=COLOURS[chain], lw=1.8)
        axis.axvline(cap, color="0.6", ls=":", lw=1)
        axis.set_title(f"σ = {sigma:g}  (n = {args.n}, α = {args.alpha:g})")
        axis.set_xlabel("L2 radius")
        axis.set_ylabel("certified accuracy (%)")
        axis.set_ylim(0, 100)
        axis.grid(alpha=0.3)
    axes[0][0].legend(loc="lower left", fontsize=8)
    figure.suptitle(
        f"Denoised smoothing on MNIST-5k ({len(y)} test images)\nLeNet trained on clean data", fontsize=11
    )
    figure.tight_layout()
    figure.savefig(path, dpi=150)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    data = load_dataset("mnist5k")
    x_test, y_test = data.x_test[: args.n_test], data.y_test[: args.n_test]
    clean, denoisers, noise_trained = build_models(args, data)
    trained = time.time()
    results = {}
    for sigma in args.sigmas:
        chains = {
            "none": (clean, None),
            **{name: (clean, denoisers[sigma][name]) for name in ("black-box", "white-box", "mse")},
            "noise-trained": (noise_trained[sigma], None),
        }
        for chain, (classifier, denoiser) in chains.items():
            estimator = DenoisedSmoothingClassifier(
                classifier,
                denoiser,
                input_shape=data.input_shape,
                nb_classes=10,
                scale=sigma,
                seed=args.seed,
                batch_size=args.batch_size,
            )
            results[sigma, chain] = certify_chain(estimator, x_test, args, f"σ={sigma:g} {chain}")
    finished = time.time()
    table = markdown_table(results, y_test, args)
    timing = (
        f"Training (or loading) {trained - started:.0f} s, certification {finished - trained:.0f} s, "
        f"{args.threads} thread(s)."
    )
    print("\n" + table + "\n\n" + timing)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "denoised_mnist.md").write_text(table + "\n\n" + timing + "\n")
    plot(results, y_test, args, out / "denoised_mnist.png")
    records = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "y": y_test.tolist(),
        "results": {
            f"{sigma:g}/{chain}": {key: value.tolist() for key, value in results[sigma, chain].items()}
            for sigma, chain in results
        },
    }
    (out / "denoised_mnist.json").write_text(json.dumps(records))
    print(f"wrote {out / 'denoised_mnist.md'}, {out / 'denoised_mnist.png'}, {out / 'denoised_mnist.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
