"""``run --dry-run``: validate a configuration, then print what the run would do and how long it would take,
without training or attacking anything.

The estimate counts forward (and forward+backward) passes of the base architecture per stage and
multiplies by this machine's measured throughput of that architecture (a few timed batches). Denoised
smoothing passes also go through the denoiser, which is timed too. It is a planning figure (within a
factor of about two), not a promise: ART and torchattacks add overhead, and a shared CPU is slower.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .attacks import build_attacks
from .data import load_dataset
from .defences import attack_points
from .models import DEFAULT_CACHE_DIR, ModelStore
from .pipeline import resolve_device
from .registry import DEFENCE_KINDS
from .reproducibility import config_hash
from .zoo import build_model

__all__ = ["dry_run", "plan_work"]


class _WithTimestep(torch.nn.Module):
    """A noise-prediction model called like a denoiser (fixed timestep), for timing only."""

    def __init__(self, model: torch.nn.Module, steps: torch.Tensor) -> None:
        super().__init__()
        self.model, self.steps = model, steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.steps[: len(x)])


def _throughput(model: torch.nn.Module, shape: tuple[int, ...], batch: int = 1000) -> tuple[float, float]:
    """Seconds per sample of a forward pass and of a forward+backward pass (median of 3)."""
    x = torch.rand((batch, *shape))
    model.eval()
    forward, backward = [], []
    for _ in range(3):
        start = time.perf_counter()
        with torch.inference_mode():
            model(x)
        forward.append(time.perf_counter() - start)
        z = x.clone().requires_grad_(True)
        start = time.perf_counter()
        model(z).sum().backward()
        backward.append(time.perf_counter() - start)
    return float(np.median(forward)) / batch, float(np.median(backward)) / batch


def plan_work(config: dict[str, Any], train_size: int, test_size: int) -> list[dict[str, Any]]:
    """One row per (stage, defence): units of work and forward / forward+backward passes of the base model."""
    attacks = build_attacks(config)
    chunk = config["run"]["chunk_size"]
    m = config["attacks"]["noise_samples"]
    steps = config["attacks"]["steps"]
    rows = []
    for kind_name in config["defences"]["enabled"]:
        kind = DEFENCE_KINDS[kind_name]
        for name, _sigma in kind.instance_names(config):
            smoothed = kind.smoothed
            section = config[kind.section] if smoothed else {}
            attacked = attack_points(config, kind_name)
            attacked = min(attacked, test_size)
            copies = m if smoothed else 1
            predict = config["smoothing"]["predict_n"] if smoothed else 1
            rows.append(
                {
                    "stage": "clean",
                    "defence": name,
                    "units": -(-attacked // chunk),
                    "forward": attacked * predict,
                    "backward": 0,
                }
            )
            if smoothed:
                points = min(section["points"], test_size)
                rows.append(
                    {
                        "stage": "certify",
                        "defence": name,
                        "units": -(-points // chunk),
                        "forward": points * (section["n0"] + section["n"]),
                        "backward": 0,
                    }
                )
                if config["certificate_check"]["enabled"] and attacked > 0:
                    checked = min(points, config["certificate_check"]["points"])
                    rows.append(
                        {
                            "stage": "certificate_check",
                            "defence": name,
                            "units": -(-checked // chunk),
                            "forward": checked * predict,
                            "backward": checked * config["certificate_check"]["steps"] * copies,
                        }
                    )
            units = forward = backward = 0
            for attack in attacks:
                applies = smoothed or attack.name not in ("eotpgd", "smoothadv")
                if kind_name != "feature_squeezing" and attack.name in ("bpda", "detector_evading"):
                    applies = False
                if not applies or attacked == 0:
                    continue
                for norm in attack.norms:
                    grid = [e for e in config["attacks"][f"{norm}_eps"] if e > 0]
                    iterations = steps * (config["attacks"]["eot_iter"] if attack.name == "eotpgd" else 1)
                    units += len(grid) * -(-attacked // chunk)
                    backward += len(grid) * attacked * iterations * copies
                    forward += len(grid) * attacked * predict
            rows.append(
                {
                    "stage": "attacks",
                    "defence": name,
                    "units": units,
                    "forward": forward,
                    "backward": backward,
                }
            )
    return rows


def dry_run(config: dict[str, Any], cache_dir: str | Path | None = None) -> str:
    """Validate ``config`` as a real run would (data, user model), then describe the plan and estimate."""
    device = resolve_device(config["run"]["device"])
    threads = config["run"]["threads"]
    if threads:
        torch.set_num_threads(threads)
    section = config["dataset"]
    dataset = load_dataset(section["name"], path=section["path"] or None, root=section["root"])
    store = ModelStore(config, dataset, cache_dir or DEFAULT_CACHE_DIR, device, progress=False)
    lines = [
        f"dry run of preset {config['preset']!r} on {dataset.name} ({len(dataset.x_train)} train / "
        f"{len(dataset.x_test)} test); configuration valid."
    ]
    if store.user_model:
        model, key = store.load_user()
        lines.append(f"user model {config['model']['module']} loads and fits its weights (key {key}).")
        training_rows = []
    else:
        model = build_model(config["model"]["architecture"], dataset.input_shape, store.nb_classes)
        training_rows = _training_plan(config, store)
    forward, backward = _throughput(model, dataset.input_shape)
    denoiser_forward = 0.0
    if "denoised_smoothing" in config["defences"]["enabled"] and config["denoised"]["denoiser"] != "none":
        from art_smoothing_plugin.denoisers import DENOISER_ARCHITECTURES

        denoiser = DENOISER_ARCHITECTURES[config["denoised"]["denoiser"]](
            channels=dataset.input_shape[0], **config["denoised"]["denoiser_kwargs"]
        )
        denoiser_forward, _ = _throughput(denoiser, dataset.input_shape)
    ddpm_forward = ddpm_train_seconds = 0.0
    if "diffusion_smoothing" in config["defences"]["enabled"]:
        from art_smoothing_plugin.denoisers.ddpm import TinyUNet

        diffusion = config["diffusion"]
        multipliers = tuple(diffusion["ddpm_multipliers"])
        unet = TinyUNet(dataset.input_shape[0], diffusion["ddpm_channels"], multipliers)
        steps = torch.zeros(1000, dtype=torch.long)
        ddpm_forward, ddpm_backward = _throughput(_WithTimestep(unet, steps), dataset.input_shape)
        ddpm_forward *= diffusion["denoising_steps"]
        folder = store.cache_dir / "ddpm"
        if not (folder.is_dir() and any(folder.glob("ddpm-*.pt"))):
            ddpm_train_seconds = diffusion["ddpm_epochs"] * len(dataset.x_train) * ddpm_backward
    lines.append(
        f"measured here: {1e6 * forward:.1f} µs per forward sample, "
        f"{1e6 * backward:.1f} µs per forward+backward"
        + (f", denoiser {1e6 * denoiser_forward:.1f} µs per forward sample" if denoiser_forward else "")
        + "."
    )
    total = 0.0
    lines += [
        "",
        "| stage | model / defence | units | forward passes | backward passes | estimate (s) |",
        "|---|---|---|---|---|---|",
    ]
    for row in training_rows:
        seconds = row["backward"] * backward * (1.0 if row["status"] == "to train" else 0.0)
        total += seconds
        lines.append(
            f"| train | {row['name']} ({row['status']}) | 1 | | {row['backward']:,} | {seconds:.0f} |"
        )
    if ddpm_train_seconds:
        total += ddpm_train_seconds
        lines.append(f"| train | ddpm (to train) | 1 | | | {ddpm_train_seconds:.0f} |")
    for row in plan_work(config, len(dataset.x_train), len(dataset.x_test)):
        extra = denoiser_forward if row["defence"].startswith("denoised") else 0.0
        extra = ddpm_forward if row["defence"].startswith("diffusion") else extra
        seconds = row["forward"] * (forward + extra) + row["backward"] * (backward + 2 * extra)
        total += seconds
        lines.append(
            f"| {row['stage']} | {row['defence']} | {row['units']} | {row['forward']:,} | "
            f"{row['backward']:,} | {seconds:.0f} |"
        )
    lines += ["", f"estimated total: {total / 60:.1f} minutes on this machine (planning figure, about ±2x)."]
    return "\n".join(lines)


def _training_plan(config: dict[str, Any], store: ModelStore) -> list[dict[str, Any]]:
    rows = []
    train = len(store.dataset.x_train)
    enabled = config["defences"]["enabled"]
    recipes: list[tuple[str, dict[str, Any], int]] = []
    if {"undefended", "feature_squeezing", "denoised_smoothing", "diffusion_smoothing"} & set(enabled):
        recipes.append(("clean", {}, 1))
    if "randomized_smoothing" in enabled:
        recipes += [("gaussian", {"sigma": s}, 1) for s in config["smoothing"]["sigmas"]]
    section = config["adversarial_training"]
    for norm in ("linf", "l2"):
        if f"adversarial_training_{norm}" in enabled:
            params = {
                "norm": norm,
                "eps": section[f"{norm}_eps"],
                "eps_step": section[f"{norm}_eps_step"],
                "steps": section["steps"],
            }
            recipes.append(("madry", params, section["steps"] + 1))
    for recipe, params, passes in recipes:
        spec = store.training_spec(recipe, **params)
        cached = any(store.cache_dir.glob(f"*-{config_hash(spec)}.pt"))
        label = recipe + "".join(f"-{k}{v}" for k, v in sorted(params.items()) if k in ("sigma", "norm"))
        rows.append(
            {
                "name": label,
                "status": "cached" if cached else "to train",
                "backward": spec["epochs"] * train * passes,
            }
        )
    return rows
