"""Every section of the configuration, each in one place: its keys (checker, meaning, value in every
preset) and the checks that involve several keys. Adding a key to a section means adding one line to its
block below; the presets, validation, ``config --keys`` and the docs' table all follow from it.

Everything a config says is in the data's own [0, 1] units: sigma, epsilon and radii alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..registry import ATTACKS, DEFENCE_KINDS
from .checks import (
    ConfigError,
    boolean,
    choice,
    choices,
    integer,
    integer_list,
    module_attribute,
    number,
    number_list,
    optional_int,
    optional_norm_stats,
    table,
    text,
)
from .keys import Key, Section

__all__ = [
    "DDPM_SCHEDULE",
    "DDPM_TIMESTEPS",
    "ISOLATION_MODES",
    "SECTIONS",
    "WHOLE_MODEL_SUFFIXES",
    "check_budgets",
    "eps_limit",
    "training_method",
    "user_model_configured",
]


def _architectures() -> tuple[str, ...]:
    from ..zoo import ARCHITECTURES  # the zoo imports torch: only when a configuration is validated

    return tuple(ARCHITECTURES)


def _defence_names() -> tuple[str, ...]:
    return tuple(DEFENCE_KINDS)


def _attack_names() -> tuple[str, ...]:
    return tuple(ATTACKS)


# -- run ---------------------------------------------------------------------------------------------------
RUN = Section(
    "run",
    {
        "seed": Key(integer(0), "seed of every random choice of the run (training, noise, attacks)", 0),
        "chunk_size": Key(
            integer(1), "test points per checkpointed unit of work (resume granularity)", 50, mnist5k=100
        ),
        "device": Key(choice(("cpu", "cuda", "auto")), "where models run: cpu, cuda or auto", "cpu"),
        # training: small batches of a LeNet, where a second thread gains little and, on a shared machine,
        # loses much (one SmoothAdv epoch measured 9.4 s on one thread, 47 s on two beside other jobs).
        "threads": Key(integer(0), "torch CPU threads (0 = torch's default)", 0, training=1),
    },
)


# -- dataset -----------------------------------------------------------------------------------------------
def _check_dataset(config: dict[str, Any]) -> None:
    dataset = config["dataset"]
    if dataset["name"] == "npz" and not Path(dataset["path"]).expanduser().is_file():
        raise ConfigError("dataset.path", "an existing .npz file when dataset.name = 'npz'", dataset["path"])


DATASET = Section(
    "dataset",
    {
        "name": Key(
            choice(DATASETS),
            "dataset name (the split is fixed in evaluations/data.py)",
            "digits",
            mnist5k="mnist5k",
        ),
        "path": Key(text, "path of the .npz file when name = 'npz'", ""),
        "root": Key(text, "download folder of torchvision datasets", "~/.cache/art-smoothing/data"),
    },
    _check_dataset,
)


# -- model -------------------------------------------------------------------------------------------------
#: Weights files that are whole models (no ``model.module``): ONNX and torch.export programs.
WHOLE_MODEL_SUFFIXES = (".onnx", ".pt2")


def user_model_configured(model: dict[str, Any]) -> bool:
    """Whether the ``[model]`` section names a user's model (code and weights, or a whole-model file)."""
    return bool(model["module"] or model["weights"])


def _check_model(config: dict[str, Any]) -> None:
    model = config["model"]
    whole = Path(model["weights"]).suffix.lower() in WHOLE_MODEL_SUFFIXES
    if whole and model["module"]:
        raise ConfigError(
            "model.module", "empty when model.weights is a whole model (.onnx or .pt2)", model["module"]
        )
    if not whole and bool(model["module"]) != bool(model["weights"]):
        key = "model.weights" if model["module"] else "model.module"
        raise ConfigError(key, "set together with the other of model.module / model.weights", "")
    if model["weights"] and not Path(model["weights"]).expanduser().is_file():
        raise ConfigError("model.weights", "a path to an existing weights file", model["weights"])
    for stat in ("mean", "std"):
        if (model[stat] is None) != (model["std" if stat == "mean" else "mean"] is None):
            raise ConfigError(f"model.{stat}", "set together with the other of model.mean / model.std", None)
    if model["std"] is not None and min(model["std"]) <= 0:
        raise ConfigError("model.std", "positive numbers", model["std"])


MODEL = Section(
    "model",
    {
        "architecture": Key(
            choice(_architectures),
            "zoo architecture of the models the harness trains",
            "small_cnn",
            mnist5k="lenet",
        ),
        "epochs": Key(integer(1), "training epochs of every harness-trained model", 30, mnist5k=20),
        "batch_size": Key(integer(1), "training batch size", 64, mnist5k=128),
        "learning_rate": Key(number(0, 1, open_low=True), "Adam learning rate", 0.003, mnist5k=0.002),
        "module": Key(
            module_attribute,
            "a user's model: 'package.module:attribute' or 'file.py:attribute' (a class, a factory or an "
            "nn.Module); empty for zoo models. Importing it RUNS its code",
            "",
        ),
        "weights": Key(
            text,
            "the user's weights file (.pt/.pth state_dict, or .safetensors), or a whole model without "
            "model.module: .onnx (no code runs) or a torch.export .pt2 (its loader can run code)",
            "",
        ),
        "kwargs": Key(table, "keyword arguments passed to the user's class or factory", {}),
        "mean": Key(optional_norm_stats, "input normalisation mean the user's model expects (or null)", None),
        "std": Key(optional_norm_stats, "input normalisation std the user's model expects (or null)", None),
        "nb_classes": Key(
            optional_int(2), "number of classes the user's model outputs (null: the dataset's)", None
        ),
    },
    _check_model,
)


# -- defences ----------------------------------------------------------------------------------------------
def _check_defences(config: dict[str, Any]) -> None:
    if user_model_configured(config["model"]):
        trained = [d for d in config["defences"]["enabled"] if DEFENCE_KINDS[d].trains_classifier]
        if trained:
            raise ConfigError(
                "defences.enabled",
                "only defences that take a given model when a user's model is set",
                config["defences"]["enabled"],
                hint=f"{', '.join(trained)} train their own classifier; remove them",
            )


DEFENCES = Section(
    "defences",
    {
        "enabled": Key(
            choices(_defence_names, allow_empty=False),
            "defences to evaluate",
            [
                "undefended",
                "randomized_smoothing",
                "denoised_smoothing",
                "diffusion_smoothing",
                "adversarial_training_linf",
                "adversarial_training_l2",
                "feature_squeezing",
            ],
            training=["randomized_smoothing"],
        ),
    },
    _check_defences,
)


# -- smoothing ---------------------------------------------------------------------------------------------
def _training_methods() -> tuple[str, ...]:
    from art_smoothing_plugin.training import TRAINING_METHODS  # imports torch: only when validated

    return tuple(TRAINING_METHODS)


def _check_training(key: str, value: Any) -> list[str]:
    """One training method's name, or a non-empty list of them (to compare); returned as a list without
    repeats, in the order given."""
    names = _training_methods()
    expected = f"a training method name or a non-empty list of them, from {', '.join(map(repr, names))}"
    listed = [value] if isinstance(value, str) else value
    if not isinstance(listed, (list, tuple)) or not listed:
        raise ConfigError(key, expected, value)
    for item in listed:
        if not isinstance(item, str) or item not in names:
            raise ConfigError(key, expected, value, hint=f"unknown training method {item!r}")
    return list(dict.fromkeys(listed))


def _library_expectation(error: Exception) -> str:
    """The expected form in a library error "NAME must be FORM, got VALUE" (else the whole message)."""
    message = str(error)
    if " must be " in message:
        return message.split(" must be ", 1)[1].rsplit(", got", 1)[0]
    return message


def _check_training_params(key: str, value: Any) -> dict[str, dict[str, Any]]:
    """A table ``method -> {hyper-parameter: value}``: the hyper-parameters of
    :mod:`art_smoothing_plugin.training`'s methods that differ from the papers' defaults. Each value is
    checked by the method's own checks, alone (so the error names its key) and then together."""
    from art_smoothing_plugin.training import TRAINING_METHODS, make_training_method

    names = tuple(TRAINING_METHODS)
    expected = f"a table of training method -> table of hyper-parameters, methods from {', '.join(names)}"
    if not isinstance(value, Mapping):
        raise ConfigError(key, expected, value)
    result: dict[str, dict[str, Any]] = {}
    for method, params in value.items():
        if method not in names:
            raise ConfigError(key, expected, value, hint=f"unknown training method {method!r}")
        accepted = list(TRAINING_METHODS[method]().params())
        where = f"{key}.{method}"
        form = f"a table of {method}'s hyper-parameters ({', '.join(accepted) or 'it has none'})"
        if not isinstance(params, Mapping):
            raise ConfigError(where, form, params)
        for name, setting in params.items():
            if name not in accepted:
                raise ConfigError(where, form, dict(params), hint=f"unknown hyper-parameter {name!r}")
            if isinstance(setting, bool):
                raise ConfigError(f"{where}.{name}", "a number", setting)
            try:
                make_training_method(method, **{name: setting})
            except (TypeError, ValueError) as error:
                raise ConfigError(f"{where}.{name}", _library_expectation(error), setting) from None
        try:
            make_training_method(method, **params)
        except (TypeError, ValueError) as error:
            raise ConfigError(
                where, "hyper-parameters that fit together", dict(params), hint=str(error)
            ) from None
        result[method] = dict(params)
    return result


def training_method(config: dict[str, Any], name: str) -> Any:
    """The :class:`~art_smoothing_plugin.training.TrainingMethod` ``name`` with the run's
    ``smoothing.training_params`` (the papers' defaults for what they do not set)."""
    from art_smoothing_plugin.training import make_training_method

    return make_training_method(name, **config["smoothing"]["training_params"].get(name, {}))


def _check_smoothing(config: dict[str, Any]) -> None:
    """A warm-up may not be longer than the training (model.epochs) of a method the run uses; a user's
    model is not trained, so it takes no training method but the default."""
    if user_model_configured(config["model"]) and config["smoothing"]["training"] != ["gaussian"]:
        raise ConfigError(
            "smoothing.training",
            "'gaussian' (the default) when a user's model is set: the harness trains no model then",
            config["smoothing"]["training"],
        )
    epochs = config["model"]["epochs"]
    for name in config["smoothing"]["training"]:
        warmup = getattr(training_method(config, name), "warmup", None)
        if warmup is not None and warmup > epochs:
            raise ConfigError(
                f"smoothing.training_params.{name}.warmup",
                f"at most model.epochs = {epochs} (a warm-up longer than the training it belongs to)",
                warmup,
                hint="lower it, or raise model.epochs",
            )


# The training preset compares the five methods of art_smoothing_plugin.training at the mnist5k preset's
# epoch budget; the adversarial methods' PGD steps are cut from the papers' 10 (SmoothAdv) and 2-8 (SmoothMix)
# to 4 so that each (method, sigma) trains in under 10 minutes on 2 cores (docs/training.md gives the times).
TRAINING_PRESET_METHODS = ["gaussian", "smoothadv", "macer", "consistency", "smoothmix"]

SMOOTHING = Section(
    "smoothing",
    {
        "sigmas": Key(
            number_list(0, open_low=True), "noise levels sigma of randomized smoothing", [0.25, 0.5, 1.0]
        ),
        "points": Key(integer(1), "test points certified per sigma", 100, mnist5k=500, training=100),
        "n0": Key(integer(1), "CERTIFY selection samples", 100),
        "n": Key(integer(1), "CERTIFY estimation samples", 1000, mnist5k=10_000, training=2000),
        "alpha": Key(
            number(0, 1, open_low=True, open_high=True), "error probability of each certificate", 0.001
        ),
        "predict_n": Key(integer(1), "PREDICT samples on clean and attacked inputs", 1000),
        "predict_alpha": Key(number(0, 1, open_low=True, open_high=True), "PREDICT's test level", 0.001),
        "batch_size": Key(integer(1), "noisy samples per forward pass", 1000, mnist5k=2000),
        "training": Key(
            _check_training,
            "training method of the smoothed models (art_smoothing_plugin.training), or a list of them to "
            "compare: one randomized_smoothing defence per (method, sigma)",
            "gaussian",
            training=TRAINING_PRESET_METHODS,
        ),
        "training_params": Key(
            _check_training_params,
            "hyper-parameters per training method that differ from the papers' defaults, e.g. "
            "{smoothadv = {epsilon = 0.5}} (docs/training.md lists them)",
            {},
            training={"smoothadv": {"num_steps": 4}, "smoothmix": {"num_steps": 4}},
        ),
    },
    _check_smoothing,
)


# -- denoised ----------------------------------------------------------------------------------------------
DENOISED = Section(
    "denoised",
    {
        "sigmas": Key(
            number_list(0, open_low=True), "noise levels of denoised smoothing", [0.5], mnist5k=[0.25, 0.5]
        ),
        "denoiser": Key(
            choice(("dncnn", "memnet", "none")), "denoiser architecture ('none': no denoiser)", "dncnn"
        ),
        "denoiser_epochs": Key(integer(1), "denoiser training epochs", 10, mnist5k=5),
        "denoiser_kwargs": Key(table, "keyword arguments of the denoiser's constructor", {}),
        "objective": Key(
            choice(("mse", "stab", "stab+mse")), "denoiser training objective (Salman et al.)", "mse"
        ),
        "points": Key(integer(1), "test points certified per sigma", 100),
        "n": Key(integer(1), "CERTIFY estimation samples", 1000, mnist5k=2000),
        "n0": Key(integer(1), "CERTIFY selection samples", 100),
        "attack_points": Key(integer(0), "test points attacked per sigma (0: none)", 100, mnist5k=0),
    },
)


# -- diffusion ---------------------------------------------------------------------------------------------
#: The noise schedule of the harness's DDPM (not configurable): the builder trains with it and the config
#: check maps every sigma to its timestep on it.
DDPM_SCHEDULE = "linear"
DDPM_TIMESTEPS = 1000


def _check_diffusion(config: dict[str, Any]) -> None:
    """Every sigma must map to a timestep the DDPM trains on (its fixed schedule; data in [0, 1] seen in
    [-1, 1], so the target noise level is 2 sigma): refused here, before the DDPM is trained."""
    if "diffusion_smoothing" not in config["defences"]["enabled"]:
        return
    from art_smoothing_plugin.denoisers.ddpm import make_alpha_bars
    from art_smoothing_plugin.denoisers.diffusion import select_timestep

    section = config["diffusion"]
    alpha_bars = make_alpha_bars(DDPM_SCHEDULE, DDPM_TIMESTEPS)
    for sigma in section["sigmas"]:
        try:
            timestep = select_timestep(alpha_bars, 2 * sigma)
        except ValueError as error:
            expected = "noise levels the DDPM's schedule reaches"
            raise ConfigError("diffusion.sigmas", expected, sigma) from error
        if timestep > section["max_train_timestep"]:
            raise ConfigError(
                "diffusion.max_train_timestep",
                f"at least {timestep}, the timestep whose noise level matches sigma = {sigma:g}",
                section["max_train_timestep"],
                hint="raise it or drop that sigma from diffusion.sigmas",
            )


# mnist5k: the DDPM of benchmarks/diffusion_mnist.py, 8 channels at 28/14/7 pixels, t <= 300, 10 epochs.
DIFFUSION = Section(
    "diffusion",
    {
        "sigmas": Key(
            number_list(0, open_low=True),
            "noise levels of diffusion denoised smoothing",
            [0.5],
            mnist5k=[0.25, 0.5],
        ),
        "ddpm_channels": Key(integer(1), "base channels of the DDPM's TinyUNet", 16, mnist5k=8),
        "ddpm_multipliers": Key(
            integer_list(1), "channel multiplier per resolution of the TinyUNet", [1, 2], mnist5k=[1, 2, 4]
        ),
        "ddpm_epochs": Key(integer(1), "DDPM training epochs", 40, mnist5k=10),
        "max_train_timestep": Key(
            integer(1), "largest timestep the DDPM trains on (the sigmas must map below it)", 300
        ),
        "denoising_steps": Key(integer(1), "1: the paper's one-shot denoising; k > 1: k DDIM-style steps", 1),
        "points": Key(integer(1), "test points certified per sigma", 100),
        "n": Key(integer(1), "CERTIFY estimation samples", 1000, mnist5k=2000),
        "n0": Key(integer(1), "CERTIFY selection samples", 100),
        "attack_points": Key(integer(0), "test points attacked per sigma (0: none)", 0),
    },
    _check_diffusion,
)


# -- adversarial_training ----------------------------------------------------------------------------------
def _check_adversarial_training(config: dict[str, Any]) -> None:
    training = config["adversarial_training"]
    if training["warmup_epochs"] >= training["epochs"]:
        raise ConfigError(
            "adversarial_training.warmup_epochs",
            f"an integer below adversarial_training.epochs = {training['epochs']}",
            training["warmup_epochs"],
        )


ADVERSARIAL_TRAINING = Section(
    "adversarial_training",
    {
        "linf_eps": Key(
            number(0, 1, open_low=True), "L-inf epsilon of Madry training, in [0, 1] units", 0.2, mnist5k=0.3
        ),
        "linf_eps_step": Key(number(0, 1, open_low=True), "L-inf PGD step size in training", 0.05),
        "l2_eps": Key(number(0, open_low=True), "L2 epsilon of Madry training", 1.0, mnist5k=2.0),
        "l2_eps_step": Key(number(0, open_low=True), "L2 PGD step size in training", 0.25, mnist5k=0.5),
        "steps": Key(integer(1), "PGD steps per training batch", 7, mnist5k=10),
        "epochs": Key(integer(1), "adversarial training epochs", 15, mnist5k=10),
        # mnist5k: from random weights at the full 0.3 the L-inf LeNet collapses to one class (9% accuracy);
        # half the epochs at a growing budget avoid that.
        "warmup_epochs": Key(
            integer(0),
            "epochs of linearly growing eps before the full budget (< epochs; 0: none)",
            0,
            mnist5k=5,
        ),
    },
    _check_adversarial_training,
)


# -- feature_squeezing -------------------------------------------------------------------------------------
FEATURE_SQUEEZING = Section(
    "feature_squeezing",
    {
        "squeezers": Key(
            choices(("bit_depth", "median"), allow_empty=False),
            "squeezers of the detector",
            ["bit_depth", "median"],
        ),
        "bit_depth": Key(integer(1), "bits kept by the bit-depth squeezer", 1),
        "median_window": Key(integer(2), "window of the median-smoothing squeezer", 2),
        "false_positive_rate": Key(number(0, 1, open_low=True, open_high=True), "detector's clean FPR", 0.05),
        "transform": Key(
            choice(("bit_depth", "median")), "squeezer used as the input transformation", "bit_depth"
        ),
    },
)


# -- attacks -----------------------------------------------------------------------------------------------
ATTACKS_SECTION = Section(
    "attacks",
    {
        # EOTPGD adds little on a smoothed classifier, whose gradient is already an expectation over m
        # draws; the mnist5k preset runs it, the quick preset spends its minutes elsewhere.
        "enabled": Key(
            choices(_attack_names),
            "attacks to run (each on the defences it applies to)",
            ["pgd", "pgdl2", "art_pgd", "smoothadv", "bpda", "detector_evading", "autoattack"],
            mnist5k=[
                "pgd",
                "pgdl2",
                "eotpgd",
                "art_pgd",
                "smoothadv",
                "bpda",
                "detector_evading",
                "autoattack",
            ],
            training=[],
        ),
        "points": Key(integer(1), "test points attacked per defence", 100),
        "linf_eps": Key(
            number_list(0, 1),
            "L-inf epsilon grid, in [0, 1] units (at most 1, the data range's width)",
            [0.1, 0.2],
            mnist5k=[0.1, 0.2, 0.3],
        ),
        "l2_eps": Key(
            number_list(0),
            "L2 epsilon grid, in [0, 1] units (at most sqrt(d), d the input's size: checked with the data)",
            [0.5, 1.0],
            mnist5k=[0.5, 1.0, 2.0],
        ),
        "steps": Key(integer(1), "PGD steps of every attack", 10),
        "relative_step": Key(number(0, 10, open_low=True), "step size as a multiple of eps / steps", 2.5),
        "noise_samples": Key(integer(1), "m: noise draws per attack step on smoothed classifiers", 16),
        "eot_iter": Key(integer(1), "EOTPGD gradient samples per step", 2),
        "detector_weight": Key(number(0), "weight of the detector term of the detector-evading attack", 10.0),
    },
)


def eps_limit(norm: str, dims: int, width: float = 1.0) -> float:
    """The largest budget that can be meant for data of ``dims`` values in a range of ``width``: L-inf
    ``width`` (a larger one allows nothing more), L2 ``sqrt(dims) * width`` (the diameter of the box). At
    that budget every input in the box is reachable (the gradient-masking checklist's eps sweep)."""
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be one of 'linf', 'l2'; got {norm!r}")
    return float(width) if norm == "linf" else math.sqrt(int(dims)) * float(width)


def check_budgets(config: dict[str, Any], input_shape: tuple[int, ...]) -> None:
    """Budgets that cannot be meant for this data (known once it is loaded), naming the key: an L2
    epsilon above sqrt(d) times the data range's width (1) allows no perturbation that sqrt(d) does not."""
    dims = math.prod(input_shape)
    for norm in ("linf", "l2"):
        key = f"attacks.{norm}_eps"
        limit = eps_limit(norm, dims)
        values = config["attacks"][f"{norm}_eps"]
        if any(eps > limit + 1e-12 for eps in values):
            where = (
                "the data range's width" if norm == "linf" else f"sqrt({dims}) times the data range's width"
            )
            raise ConfigError(
                key,
                f"numbers in [0, {limit:g}]: a larger {norm} budget than {limit:g} ({where}) cannot be meant",
                values,
            )


# -- autoattack --------------------------------------------------------------------------------------------
AUTOATTACK = Section(
    "autoattack",
    {
        "version": Key(
            choice(("auto", "standard", "rand")),
            "AutoAttack version: auto = standard on deterministic defences, rand on randomized ones",
            "auto",
        ),
        "norms": Key(choices(("linf", "l2"), allow_empty=False), "norms AutoAttack runs in", ["linf", "l2"]),
        # quick: a lighter AutoAttack (25 steps, 1,000 queries, 25 points) to keep the whole preset under 10
        # minutes on 2 cores: at the reference settings its AutoAttack alone took 12.7 minutes (2026-11-30).
        "steps": Key(
            integer(1), "iterations of APGD-CE, APGD-T, APGD-DLR and FAB-T (reference: 100)", 25, mnist5k=100
        ),
        "square_queries": Key(integer(1), "queries of Square (reference: 5,000)", 1000, mnist5k=5000),
        "eot_iter": Key(
            integer(1),
            "rand version: gradient samples per step, one fresh noise draw each (reference: 20)",
            20,
        ),
        "extra_restarts": Key(
            integer(0), "further APGD-CE restarts for the checklist's more-restarts check (0: none)", 1
        ),
        "squeezer_gradient": Key(
            choice(("bpda", "none")),
            "how its gradient attacks pass feature squeezing's squeezer: bpda, or none (masked, for a demo)",
            "bpda",
        ),
        "points": Key(
            integer(0), "at most this many of the points attacked per defence (0: all)", 25, mnist5k=50
        ),
        "sweep": Key(
            boolean, "also run at the budget where every input is reachable (the checklist's eps sweep)", True
        ),
        "threads": Key(
            integer(0), "torch CPU threads while it runs (0: run.threads); one is fastest on small models", 1
        ),
    },
)


# -- checklist ---------------------------------------------------------------------------------------------
CHECKLIST = Section(
    "checklist",
    {
        "level": Key(
            number(0, 1, open_low=True, open_high=True),
            "level of each exact test of the checklist and of AutoAttack against each single attack",
            0.01,
        ),
        "sweep_ceiling": Key(
            number(0, 1, open_high=True),
            "eps sweep: flagged when significantly more than this fraction of points survive the last budget",
            0.02,
        ),
    },
)


# -- certificate_check -------------------------------------------------------------------------------------
def _check_certificate_check(config: dict[str, Any]) -> None:
    """Nothing to check without a smoothed defence: the check is switched off."""
    smoothed = {"randomized_smoothing", "denoised_smoothing", "diffusion_smoothing"}
    if config["certificate_check"]["enabled"] and not smoothed & set(config["defences"]["enabled"]):
        config["certificate_check"]["enabled"] = False


CERTIFICATE_CHECK = Section(
    "certificate_check",
    {
        "enabled": Key(
            boolean, "attack certified points inside their certified radius", True, training=False
        ),
        "points": Key(integer(1), "most certified points attacked per smoothed defence", 100),
        "steps": Key(integer(1), "SmoothAdv steps of the check", 20),
        "confidence": Key(number(0.5, 1, open_high=True), "confidence of the binomial upper bound", 0.99),
        "radius_factor": Key(
            number(0, 1, open_low=True), "attack at this fraction of the certified radius (1 = at it)", 1.0
        ),
    },
    _check_certificate_check,
)


# -- report ------------------------------------------------------------------------------------------------
REPORT = Section(
    "report",
    {
        "radius_grid": Key(
            number_list(0), "radii of the certified-accuracy tables", [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
        ),
        "plots": Key(boolean, "write PNG plots", True),
    },
)


# -- study (evaluations/study.py: the 'study' command, not part of 'run') ------------------------------
STUDY = Section(
    "study",
    {
        "sigma": Key(
            number(0, open_low=True), "noise level of the studied model (Gaussian-trained at it)", 0.5
        ),
        # 50 points x (100 + 100,000) samples: about 5 million forward passes of the small CNN, a few
        # minutes on 2 CPU cores (the budget is 5); raise points for finer curves.
        "points": Key(integer(1), "test points certified", 50),
        "n0": Key(integer(1), "CERTIFY selection samples", 100),
        "n_values": Key(
            integer_list(1, ascending=True),
            "estimation sample sizes n (prefixes of one stream per point)",
            [100, 1000, 10_000, 100_000],
        ),
        "alphas": Key(
            number_list(0, 1, open_low=True, open_high=True),
            "levels alpha, each on the same counts",
            [0.001, 0.01, 0.1],
        ),
        "chunk_size": Key(
            integer(1), "test points per checkpointed unit of the study (resume granularity)", 10
        ),
    },
)


# -- isolation ---------------------------------------------------------------------------------------------
#: Where a user's model code runs (evaluations.submissions.sandbox describes each).
ISOLATION_MODES = ("none", "process", "sandbox")

ISOLATION = Section(
    "isolation",
    {
        "mode": Key(
            choice(ISOLATION_MODES),
            "where a user's model code or .pt2 file runs: 'none' in this process (code you trust), "
            "'sandbox' a bubblewrap worker (no network, only its own files, the limits below), 'process' a "
            "worker with the limits but no namespaces. Instructor mode always uses the sandbox (a process "
            "with --trust-submissions where there is none); ONNX models need none",
            "none",
        ),
        "memory_mb": Key(integer(256), "a worker's address-space limit, MiB", 4096),
        "cpu_seconds": Key(
            integer(1), "a worker's CPU-time limit over its whole evaluation, s", 3600, mnist5k=14400
        ),
        "processes": Key(integer(4), "processes and threads a sandboxed worker may have", 64),
        "disk_mb": Key(
            integer(1), "largest file a worker may write, and size of its working folder, MiB", 256
        ),
        "output_kb": Key(integer(1), "stdout and stderr kept from a worker; more stops it, KiB", 1024),
        "load_timeout": Key(number(0, open_low=True), "seconds a worker may take to load its model", 120.0),
        "call_timeout": Key(
            number(0, open_low=True),
            "seconds a worker may take per request (one batch, or its gradient)",
            60.0,
        ),
    },
)


#: Every section, in the order of the resolved configuration, of ``config --keys`` and of the checks.
SECTIONS: tuple[Section, ...] = (
    RUN,
    DATASET,
    MODEL,
    DEFENCES,
    SMOOTHING,
    DENOISED,
    DIFFUSION,
    ADVERSARIAL_TRAINING,
    FEATURE_SQUEEZING,
    ATTACKS_SECTION,
    AUTOATTACK,
    CHECKLIST,
    CERTIFICATE_CHECK,
    REPORT,
    STUDY,
    ISOLATION,
)
