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
from .config import check_budgets
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


def _throughput(
    model: torch.nn.Module, shape: tuple[int, ...], batch: int = 1000, window: float = 0.4
) -> tuple[float, float]:
    """Seconds per sample of a forward pass and of a forward+backward pass, each averaged over passes
    repeated for at least ``window`` seconds after one untimed warm-up (the first call pays for
    allocations). A window, not a few passes: on a shared CPU a few milliseconds can land in a quiet
    moment and make the estimate several times too small (measured: 2.3 against 48 µs per sample)."""
    x = torch.rand((batch, *shape))
    model.eval()
    with torch.inference_mode():
        model(x)

    def per_sample(step) -> float:
        passes, start = 0, time.perf_counter()
        while True:
            step()
            passes += 1
            elapsed = time.perf_counter() - start
            if elapsed >= window:
                return elapsed / (passes * batch)

    def forward() -> None:
        with torch.inference_mode():
            model(x)

    def backward() -> None:
        z = x.clone().requires_grad_(True)
        model(z).sum().backward()

    return per_sample(forward), per_sample(backward)


def plan_work(config: dict[str, Any], train_size: int, test_size: int) -> list[dict[str, Any]]:
    """One row per (stage, defence): units of work, forward and forward+backward passes of the base model,
    the batch sizes they run at (``forward_batch``, ``backward_batch``), which set their cost per sample
    (a small CNN costs several times more per sample in batches of 50 than of 1,000), and the calls of a
    detector on one chunk (``detector_calls``: ART predictions of every squeezed view, timed as a whole)."""
    attacks = build_attacks(config)
    chunk = config["run"]["chunk_size"]
    m = config["attacks"]["noise_samples"]
    steps = config["attacks"]["steps"]
    sampling_batch = config["smoothing"]["batch_size"]
    squeezers = len(config["feature_squeezing"]["squeezers"])
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
            answer_batch = sampling_batch if smoothed else min(chunk, max(1, attacked))
            attack_batch = min(chunk, max(1, attacked)) * copies
            detector = kind_name == "feature_squeezing"
            rows.append(
                {
                    "stage": "clean",
                    "defence": name,
                    "units": -(-attacked // chunk),
                    "forward": attacked * predict,
                    "backward": 0,
                    "forward_batch": answer_batch,
                    "backward_batch": attack_batch,
                    "detector_calls": -(-attacked // chunk) if detector else 0,
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
                        "forward_batch": sampling_batch,
                        "backward_batch": attack_batch,
                        "detector_calls": 0,
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
                            "forward_batch": sampling_batch,
                            "backward_batch": attack_batch,
                            "detector_calls": 0,
                        }
                    )
            units = forward = backward = calls = 0
            for attack in attacks:
                if attack.name == "autoattack":
                    if attacked > 0:
                        rows.append(_autoattack_row(config, name, smoothed, attacked, predict, answer_batch))
                    continue
                applies = smoothed or attack.name not in ("eotpgd", "smoothadv")
                if kind_name != "feature_squeezing" and attack.name in ("bpda", "detector_evading"):
                    applies = False
                if not applies or attacked == 0:
                    continue
                # passes per step: EOT's gradient samples; the detector-evading attack differentiates
                # every squeezed view twice (its loss and the detector's score) and asks the detector
                # (ART's predict on every view) whether each step succeeded
                per_step = config["attacks"]["eot_iter"] if attack.name == "eotpgd" else 1
                per_step *= 2 * (1 + squeezers) if attack.name == "detector_evading" else 1
                for norm in attack.norms:
                    grid = [e for e in config["attacks"][f"{norm}_eps"] if e > 0]
                    chunks = len(grid) * -(-attacked // chunk)
                    units += chunks
                    backward += len(grid) * attacked * steps * per_step * copies
                    forward += len(grid) * attacked * predict
                    if detector:  # the verdict on every attacked chunk, and every step's check
                        calls += chunks * (1 + (steps if attack.name == "detector_evading" else 0))
            rows.append(
                {
                    "stage": "attacks",
                    "defence": name,
                    "units": units,
                    "forward": forward,
                    "backward": backward,
                    "forward_batch": answer_batch,
                    "backward_batch": attack_batch,
                    "detector_calls": calls,
                }
            )
    return rows


def _autoattack_row(
    config: dict[str, Any], name: str, smoothed: bool, attacked: int, predict: int, answer_batch: int
) -> dict[str, Any]:
    """AutoAttack's row: one unit per (norm, eps), every one on the same points; the verdicts on its
    inputs and on its parts' are forward passes like every attack's, its own iterations are priced by
    :func:`evaluations.attacks.autoattack.probe_seconds` (``"autoattack"`` says what to probe)."""
    section = config["autoattack"]
    version = section["version"] if section["version"] != "auto" else ("rand" if smoothed else "standard")
    points = min(attacked, section["points"] or attacked)
    parts = (1 if version == "rand" else 3) + (1 if section["extra_restarts"] else 0)
    budgets = {norm: [e for e in config["attacks"][f"{norm}_eps"] if e > 0] for norm in section["norms"]}
    units = sum(len(b) + (1 if section["sweep"] else 0) for b in budgets.values())
    return {
        "stage": "attacks",
        "defence": f"{name}: autoattack ({version}, {points} points)",
        "units": units,
        "forward": units * points * predict * (1 + parts),
        "backward": 0,
        "forward_batch": answer_batch,
        "backward_batch": 1,
        "detector_calls": units if name == "feature_squeezing" else 0,
        "autoattack": {"version": version, "points": points, "budgets": budgets, "sweep": section["sweep"]},
    }


class _AutoAttackPrices:
    """Seconds of AutoAttack's units, probed here once per (version, norm, model) on random inputs of the
    run's shape (:func:`~evaluations.attacks.autoattack.probe_seconds`: the cascade's upper bound, every
    point surviving every component). A sweep unit, where nearly every point falls to the first
    component, is priced at that component alone."""

    def __init__(self, config: dict[str, Any], model: torch.nn.Module, shape: tuple[int, ...]) -> None:
        from .attacks.autoattack import AutoAttackSettings

        self.settings = AutoAttackSettings.from_section(config["autoattack"])
        self.model, self.shape = model, shape
        self.denoiser: torch.nn.Module | None = None
        self.measured: dict[tuple[str, str, bool, int], dict[str, float]] = {}

    def __call__(self, row: dict[str, Any]) -> float:
        plan = row["autoattack"]
        denoised = row["defence"].startswith("denoised")
        total = 0.0
        for norm, budgets in plan["budgets"].items():
            seconds = self._probe(plan["version"], norm, denoised, plan["points"])
            total += len(budgets) * sum(seconds.values())
            total += seconds["apgd-ce"] if plan["sweep"] else 0.0
        return total

    def _probe(self, version: str, norm: str, denoised: bool, points: int) -> dict[str, float]:
        from art_smoothing_plugin import SmoothedSoftClassifier
        from art_smoothing_plugin.sampling import make_generator

        from .attacks.autoattack import probe_seconds

        key = (version, norm, denoised, points)
        if key not in self.measured:
            base = self.model
            if denoised and self.denoiser is not None:
                base = torch.nn.Sequential(self.denoiser, self.model)
            module = base
            if version == "rand":
                module = SmoothedSoftClassifier(
                    base, 0.5, 1, generator=make_generator(0, torch.device("cpu"))
                )
            x = torch.rand((points, *self.shape))
            self.measured[key] = probe_seconds(
                module.eval(), x, norm=norm, version=version, settings=self.settings
            )
        return self.measured[key]


class _Costs:
    """Seconds per sample of a model's forward and forward+backward passes, measured here at each batch
    size a stage uses (small batches cost far more per sample), each size measured once."""

    def __init__(self, model: torch.nn.Module, shape: tuple[int, ...]) -> None:
        self.model, self.shape, self.measured = model, shape, {}

    def __call__(self, batch: int) -> tuple[float, float]:
        batch = max(1, int(batch))
        if batch not in self.measured:
            self.measured[batch] = _throughput(self.model, self.shape, batch=batch)
        return self.measured[batch]


def _fixed_seconds() -> float:
    """What a run spends besides its models' passes, measured here: importing the libraries it needs that
    this process has not imported yet (the run imports them too), and drawing its three figures."""
    import importlib
    import io
    import sys

    start = time.perf_counter()
    for name in ("art.estimators.classification", "torchattacks", "matplotlib.figure"):
        if name not in sys.modules:
            importlib.import_module(name)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for _ in range(3):  # the report's certified accuracy, robust accuracy and certificate check plots
        figure = Figure(figsize=(9, 4.8))
        axes = figure.add_subplot(1, 1, 1)
        for k in range(8):
            axes.plot(np.linspace(0, 1, 240), np.linspace(1, 0, 240) ** (k + 1), label=str(k))
        axes.legend()
        FigureCanvasAgg(figure)
        figure.savefig(io.BytesIO(), format="png", dpi=120, bbox_inches="tight")
    return time.perf_counter() - start


def dry_run(config: dict[str, Any], cache_dir: str | Path | None = None) -> str:
    """Validate ``config`` as a real run would (data, user model), then describe the plan and estimate.

    The estimate adds up, per stage, the base model's forward and forward+backward passes at the batch
    sizes that stage uses, each at this machine's measured cost per sample at that batch size; the
    denoisers' and the DDPM's passes and training; and the fixed costs measured here (validation, library
    imports, figures). ART's and torchattacks' own bookkeeping is not counted: the figure is a planning
    one, stated as about ±2x (docs/evaluation-harness.md gives measured ratios)."""
    started = time.perf_counter()
    device = resolve_device(config["run"]["device"])
    threads = config["run"]["threads"]
    if threads:
        torch.set_num_threads(threads)
    section = config["dataset"]
    dataset = load_dataset(section["name"], path=section["path"] or None, root=section["root"])
    check_budgets(config, dataset.input_shape)
    store = ModelStore(config, dataset, cache_dir or DEFAULT_CACHE_DIR, device, progress=False)
    lines = [
        f"dry run of preset {config['preset']!r} on {dataset.name} ({len(dataset.x_train)} train / "
        f"{len(dataset.x_test)} test); configuration valid."
    ]
    if store.user_model:
        model, classifier_key = store.load_user()
        lines.append(
            f"user model {config['model']['module'] or config['model']['weights']} loads and fits its "
            f"weights (key {classifier_key})."
        )
        training_rows = []
    else:
        model = build_model(config["model"]["architecture"], dataset.input_shape, store.nb_classes)
        training_rows = _training_plan(config, store)
        classifier_key = config_hash(store.training_spec("clean"))
    validation = time.perf_counter() - started
    costs = _Costs(model, dataset.input_shape)
    forward, backward = costs(1000)
    denoiser_forward = 0.0
    denoiser = None
    if "denoised_smoothing" in config["defences"]["enabled"] and config["denoised"]["denoiser"] != "none":
        from art_smoothing_plugin.denoisers import DENOISER_ARCHITECTURES

        denoiser = DENOISER_ARCHITECTURES[config["denoised"]["denoiser"]](
            channels=dataset.input_shape[0], **config["denoised"]["denoiser_kwargs"]
        )
        denoiser_forward, denoiser_backward = _throughput(denoiser, dataset.input_shape)
        training_rows += _denoiser_training(config, store, classifier_key, denoiser_backward + backward)
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
        f"{1e6 * backward:.1f} µs per forward+backward (batches of 1,000)"
        + (f", denoiser {1e6 * denoiser_forward:.1f} µs per forward sample" if denoiser_forward else "")
        + "."
    )
    detector_call = 0.0
    if "feature_squeezing" in config["defences"]["enabled"]:
        detector_call = _detector_call_seconds(config, model, dataset, store.nb_classes)
    fixed = validation + _fixed_seconds()
    total = fixed
    lines += [
        "",
        "| stage | model / defence | units | forward passes | backward passes | estimate (s) |",
        "|---|---|---|---|---|---|",
        f"| setup | validation, imports, figures | | | | {fixed:.0f} |",
    ]
    for row in training_rows:
        priced = row["backward"] * costs(row.get("batch", 1000))[1]
        seconds = row.get("seconds", priced) if row["status"] == "to train" else 0.0
        total += seconds
        lines.append(
            f"| train | {row['name']} ({row['status']}) | 1 | | {row['backward']:,} | {seconds:.0f} |"
        )
    if ddpm_train_seconds:
        total += ddpm_train_seconds
        lines.append(f"| train | ddpm (to train) | 1 | | | {ddpm_train_seconds:.0f} |")
    autoattack_prices = _AutoAttackPrices(config, model, dataset.input_shape)
    autoattack_prices.denoiser = denoiser
    for row in plan_work(config, len(dataset.x_train), len(dataset.x_test)):
        extra = denoiser_forward if row["defence"].startswith("denoised") else 0.0
        extra = ddpm_forward if row["defence"].startswith("diffusion") else extra
        forward_cost = costs(row["forward_batch"])[0] if row["forward"] else 0.0
        backward_cost = costs(row["backward_batch"])[1] if row["backward"] else 0.0
        seconds = row["forward"] * (forward_cost + extra) + row["backward"] * (backward_cost + 2 * extra)
        seconds += row["detector_calls"] * detector_call
        seconds += autoattack_prices(row) if "autoattack" in row else 0.0
        total += seconds
        lines.append(
            f"| {row['stage']} | {row['defence']} | {row['units']} | {row['forward']:,} | "
            f"{row['backward']:,} | {seconds:.0f} |"
        )
    lines += ["", f"estimated total: {total / 60:.1f} minutes on this machine (planning figure, about ±2x)."]
    store.release_user()
    return "\n".join(lines)


def _detector_call_seconds(
    config: dict[str, Any], model: torch.nn.Module, dataset: Any, nb_classes: int
) -> float:
    """Seconds of one feature-squeezing detector score on a chunk of test inputs (ART's predict of the
    input and of every squeezed view, the squeezers in NumPy), measured here: median of 3 after a
    warm-up."""
    from art.estimators.classification import PyTorchClassifier

    from .defences.feature_squeezing import FeatureSqueezingDetector, squeezers

    settings = config["feature_squeezing"]
    options = {"bit_depth": settings["bit_depth"], "median_window": settings["median_window"]}
    classifier = PyTorchClassifier(
        model,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=dataset.input_shape,
        nb_classes=nb_classes,
        clip_values=(0.0, 1.0),
    )
    detector = FeatureSqueezingDetector(classifier, squeezers(settings["squeezers"], **options))
    x = dataset.x_test[: config["run"]["chunk_size"]]
    detector.score(x)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        detector.score(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _denoiser_training(
    config: dict[str, Any], store: ModelStore, classifier_key: str, seconds_per_sample: float
) -> list[dict[str, Any]]:
    """One training row per denoiser that is not cached yet (denoised smoothing trains one per sigma, on
    a user's model too)."""
    from .defences.smoothing import denoiser_spec

    rows = []
    section = config["denoised"]
    for sigma in section["sigmas"]:
        spec = denoiser_spec(config, store.dataset.name, sigma, classifier_key)
        cached = any(store.cache_dir.glob(f"*-{config_hash(spec)}.pt"))
        passes = spec["epochs"] * len(store.dataset.x_train)
        rows.append(
            {
                "name": f"denoiser-{section['denoiser']}-sigma{sigma:g}",
                "status": "cached" if cached else "to train",
                "backward": passes,
                "seconds": passes * seconds_per_sample,
            }
        )
    return rows


def _training_plan(config: dict[str, Any], store: ModelStore) -> list[dict[str, Any]]:
    rows = []
    train = len(store.dataset.x_train)
    enabled = config["defences"]["enabled"]
    recipes: list[tuple[str, dict[str, Any], int]] = []
    if {"undefended", "feature_squeezing", "denoised_smoothing", "diffusion_smoothing"} & set(enabled):
        recipes.append(("clean", {}, 1))
    if "randomized_smoothing" in enabled:
        for _name, sigma, method in DEFENCE_KINDS["randomized_smoothing"].instances(config):
            recipe, params = store.smoothing_recipe(method, sigma)
            recipes.append((recipe, params, _training_passes(config, method)))
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
        # MACER's forward passes take every draw of a batch at once; the others about batch_size samples
        batch = spec["batch_size"] * (passes if recipe == "macer" else 1)
        rows.append(
            {
                "name": label,
                "status": "cached" if cached else "to train",
                "backward": spec["epochs"] * train * passes,
                "batch": batch,
            }
        )
    return rows


def _training_passes(config: dict[str, Any], method: str) -> int:
    """Forward+backward passes of the base model per training input per epoch of a training method of
    :mod:`art_smoothing_plugin.training` with the run's hyper-parameters: Gaussian augmentation 1;
    Consistency its m draws; MACER its k draws; SmoothAdv m (T + 1) (T attack steps on the m draws, then
    the loss on them); SmoothMix m (T + 2) (T steps, then the clean side's and the mixed point's loss)."""
    from .config.sections import training_method

    chosen = training_method(config, method)
    draws = chosen.noise_draws
    if method == "smoothadv":
        return draws * (chosen.num_steps + 1) if chosen.epsilon > 0 else draws
    if method == "smoothmix":
        return draws * (chosen.num_steps + 2)
    return draws
