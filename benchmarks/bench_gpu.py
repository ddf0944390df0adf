"""Certification on a CUDA GPU: throughput of CERTIFY by precision, layout and batch size, and how often a
reduced-precision base classifier's certificate differs from the fp32 one's.

For a LeNet (MNIST, 1x28x28) and the harness's CIFAR CNN (3x32x32), each trained briefly on the GPU with
Gaussian augmentation at sigma = 0.25 (the speed does not depend on the weights; the agreement does), it
certifies the same points with the same noise key in fp32, bf16 and fp16 (``torch.autocast``; the noise is
drawn and added in fp32), with and without channels-last, at a few batch sizes and at the batch size
``autotune_batch_size`` picks, and prints noisy samples per second (after one untimed warm-up call) and,
against fp32, the share of points whose certified label differs and the mean absolute radius difference.
The same noise in every precision, so any difference is the base classifier's arithmetic.

    python benchmarks/bench_gpu.py                 # about a minute on an H200
    python benchmarks/bench_gpu.py --json out.json # also write the figures

Needs a CUDA GPU; exits with a message without one. Not part of CI (CI machines have no GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from art_smoothing_plugin import Smoother  # noqa: E402
from art_smoothing_plugin.performance import accelerated_labels, autotune_batch_size  # noqa: E402
from art_smoothing_plugin.training import train  # noqa: E402
from evaluations.data import load_dataset  # noqa: E402
from evaluations.zoo import build_model  # noqa: E402

SIGMA = 0.25


def cifar_like(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Synthetic 3x32x32 images in [0, 1] of 10 classes (class-dependent colour blobs): CIFAR-10's shape,
    for timing; no download needed."""
    generator = np.random.default_rng(seed)
    labels = generator.integers(0, 10, size=count)
    base = generator.uniform(0, 1, size=(10, 3, 1, 1))
    x = base[labels] * np.ones((1, 1, 32, 32)) + 0.2 * generator.standard_normal((count, 3, 32, 32))
    return np.clip(x, 0, 1).astype(np.float32), labels


def trained(architecture: str, x: np.ndarray, y: np.ndarray, epochs: int) -> torch.nn.Module:
    model = build_model(architecture, tuple(x.shape[1:]), 10, seed=0).cuda()
    train(
        "gaussian",
        model,
        x,
        y,
        sigma=SIGMA,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-3),
        nb_epochs=epochs,
        batch_size=256,
        clip_values=(0.0, 1.0),
        seed=0,
        progress=False,
    )
    return model.eval()


def certify_timed(model, x: torch.Tensor, n: int, batch: int, precision, channels_last: bool):
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    else:
        model = model.to(memory_format=torch.contiguous_format)

    def labels(z: torch.Tensor) -> torch.Tensor:
        return model(z).argmax(1)

    fast = accelerated_labels(labels, precision=precision, channels_last=channels_last)
    smoother = Smoother(fast, 10, SIGMA, batch_size=batch, seed=0, device=x.device)
    with torch.inference_mode():
        smoother.certify(x[:1], 100, min(n, 2_000), 0.001)  # warm-up: kernels, allocator
        torch.cuda.synchronize()
        smoother.reseed(0)
        started = time.perf_counter()
        result = smoother.certify(x, 100, n, 0.001)
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return result, len(x) * (100 + n) / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_gpu: torch sees no CUDA GPU here; nothing to measure")
        return 1
    torch.manual_seed(0)
    name = torch.cuda.get_device_name(0)
    print(f"GPU: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}")
    mnist = load_dataset("mnist5k")
    x_cifar, y_cifar = cifar_like(4_000)
    setups = {
        "lenet (1x28x28)": (
            trained("lenet", mnist.x_train, mnist.y_train, epochs=3),
            torch.as_tensor(mnist.x_test[: args.points]).cuda(),
        ),
        "cifar_cnn (3x32x32)": (
            trained("cifar_cnn", x_cifar, y_cifar, epochs=3),
            torch.as_tensor(cifar_like(args.points, seed=1)[0]).cuda(),
        ),
    }
    rows = []
    for model_name, (model, x) in setups.items():

        def plain(z: torch.Tensor, model=model) -> torch.Tensor:
            return model(z).argmax(1)

        auto = {
            precision: autotune_batch_size(accelerated_labels(plain, precision=precision), x[:1], sigma=SIGMA)
            for precision in ("fp32", "bf16")
        }
        print(f"\n{model_name}: autotune_batch_size picks {auto['fp32']} (fp32), {auto['bf16']} (bf16)")
        reference = None
        for precision in ("fp32", "bf16", "fp16"):
            for channels_last in (False, True):
                for batch in sorted({1_000, 10_000, auto[precision if precision != "fp16" else "bf16"]}):
                    result, rate = certify_timed(model, x, args.n, batch, precision, channels_last)
                    if reference is None:
                        reference = result
                    differ = float(np.mean(result.labels != reference.labels))
                    radius = float(np.mean(np.abs(result.radii - reference.radii)))
                    rows.append(
                        dict(
                            model=model_name,
                            precision=precision,
                            channels_last=channels_last,
                            batch=batch,
                            samples_per_s=rate,
                            labels_differ=differ,
                            mean_abs_radius_diff=radius,
                        )
                    )
                    print(
                        f"  {precision:>4} {'channels-last' if channels_last else 'contiguous':>13} "
                        f"batch {batch:>6}: {rate / 1e6:6.2f} M samples/s; vs fp32: labels differ on "
                        f"{100 * differ:4.1f}% of points, mean |radius diff| {radius:.4f}"
                    )
    if args.json:
        args.json.write_text(json.dumps({"gpu": name, "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
