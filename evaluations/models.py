"""Models stage: classifiers the harness trains (cached on disk by a hash of their configuration) and
users' models (``module:attribute`` plus a weights file).

Harness-trained models are small CNNs from :mod:`evaluations.zoo`, trained with one of three recipes:
``clean``; ``gaussian`` (Gaussian noise augmentation at sigma, through
:meth:`RandomizedSmoothingClassifier.fit`); ``madry`` (PGD adversarial training through ART's trainer, in
:mod:`evaluations.adversarial_training`). Each is saved as a ``state_dict`` under
``<cache_dir>/<name>-<hash>.pt`` beside a ``.json`` that records its configuration; a later run with the
same configuration loads it instead of training. Loading always uses ``torch.load(weights_only=True)``.

A user's model is imported from ``package.module:attribute`` or ``path/to/file.py:attribute``. IMPORTING
IT RUNS ITS CODE: only point the harness at code you trust (or run it in a sandbox). Its weights file is
loaded without running any code (``torch.load(weights_only=True)`` or safetensors); a pickled whole model
is refused with a hint on converting it to a state_dict.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import json
import pickle
import pickletools
import sys
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import ConfigError
from .data import Dataset
from .reproducibility import config_hash, derive_seed
from .storage import atomic_write_json, atomic_writer
from .zoo import build_model

__all__ = [
    "DEFAULT_CACHE_DIR",
    "TRAINING_VERSION",
    "ModelStore",
    "Normalized",
    "batched_argmax",
    "import_object",
    "load_state_dict_file",
    "load_user_model",
    "train_cross_entropy",
    "user_weights_path",
]

#: Where trained models are cached unless ``--cache-dir`` says otherwise.
DEFAULT_CACHE_DIR = Path("~/.cache/art-smoothing/models")

#: Part of every cache key: bump it when a training recipe changes, so stale models are not reused.
TRAINING_VERSION = 1

PICKLE_HINT = (
    "The file holds pickled Python objects (for example a whole model saved with torch.save(model)), "
    "which would run code when loaded. Convert it ONCE, on a machine you trust, to a plain state_dict: "
    "model = torch.load('model.pt', weights_only=False); torch.save(model.state_dict(), 'weights.pt')"
)


#: The most of a refused file's pickle that is read to describe it (a hostile file may be huge, or a zip
#: that inflates without end); a description of the beginning is enough for the advice.
_PICKLE_READ_LIMIT = 16 << 20


def _pickle_bytes(path: Path) -> tuple[bytes, bool]:
    """The main pickle of a weights file (its first 16 MiB at most) and whether torch.save wrote it (its
    zip format)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not names:
                return b"", True
            with archive.open(names[0]) as member:
                return member.read(_PICKLE_READ_LIMIT), True
    with open(path, "rb") as stream:
        return stream.read(_PICKLE_READ_LIMIT), False


def pickle_contents(path: str | Path) -> tuple[str, list[str]]:
    """What a pickled weights file holds, read WITHOUT unpickling (opcodes only, no code runs): its top
    level (``"dict"``, ``"object <module.Class>"``, ``"other"`` or ``"unknown"``) and the Python globals
    it names (``module.name``), as far as the opcodes can be read."""
    texts = ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8")
    bookkeeping = ("PROTO", "FRAME", "MARK", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT")
    found: list[str] = []
    strings: list[str] = []
    top = "unknown"
    try:
        data, _ = _pickle_bytes(Path(path))
        for opcode, argument, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name in texts:
                strings.append(str(argument))
            name = None
            if opcode.name == "GLOBAL":
                name = str(argument).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            if name and name not in found:
                found.append(name)
            if top == "unknown" and opcode.name not in bookkeeping:
                if opcode.name in ("EMPTY_DICT", "DICT"):
                    top = "dict"
                elif name is not None:
                    top = "dict" if name in ("collections.OrderedDict", "builtins.dict") else f"object {name}"
                elif opcode.name not in texts:
                    top = "other"
    except Exception:  # unreadable, or cut at the read limit: keep what was read, guess nothing more
        pass
    return top, found


def pickle_hint(path: str | Path) -> str:
    """Advice that fits what a refused weights file holds: a whole model, a dict such as a training
    checkpoint, or a state_dict written with ``pickle`` instead of ``torch.save``."""
    path = Path(path)
    top, found = pickle_contents(path)
    _, from_torch = _pickle_bytes(path) if path.is_file() else (b"", True)
    torch_names = ("torch._utils.", "torch.", "collections.OrderedDict", "builtins.")
    foreign = [name for name in found if not name.startswith(torch_names)]
    named = f" (it names {', '.join(foreign[:4])})" if foreign else ""
    if top == "dict" and not foreign and not from_torch:
        return (
            "The file is a dict of tensors written with pickle, not torch.save; pickle stores tensors in a "
            "form that only running code can read. Re-save it ONCE, on a machine you trust: "
            f"torch.save(pickle.load(open('{path.name}', 'rb')), 'weights.pt'); and save weights with "
            "torch.save(model.state_dict(), 'weights.pt') from then on"
        )
    if top == "dict":
        advice = (
            f"The file holds a dict with Python objects besides tensors{named}, for example a training "
            "checkpoint with an epoch count, metrics or optimizer state; loading it would run code. Keep "
            "only the parameters, ONCE, on a machine you trust: checkpoint = torch.load("
            f"'{path.name}', weights_only=False); torch.save(checkpoint['state_dict'], 'weights.pt') "
            "(with the key that holds the model's parameters)"
        )
    elif top.startswith("object "):
        advice = (
            f"The file holds a pickled Python object ({top.removeprefix('object ')}), for example a whole "
            "model saved with torch.save(model); loading it would run code. Convert it ONCE, on a machine "
            f"you trust, to a plain state_dict: model = torch.load('{path.name}', weights_only=False); "
            "torch.save(model.state_dict(), 'weights.pt')"
        )
    else:
        advice = PICKLE_HINT
    if not from_torch:
        advice += (
            ". It was written with pickle, not torch.save: save the weights with "
            "torch.save(model.state_dict(), 'weights.pt')"
        )
    return advice


class Normalized(nn.Module):
    """``model((x - mean) / std)``: lets a model that expects normalised inputs take [0, 1] inputs, so
    noise, epsilon and radii stay in [0, 1] units everywhere."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def import_object(spec: str, key: str = "model.module", search_path: Path | None = None) -> Any:
    """Import ``package.module:attribute`` or ``path/to/file.py:attribute``. RUNS THE MODULE'S CODE.

    :param search_path: folder put first on ``sys.path`` while importing (a submission's folder).
    """
    target, _, attribute = spec.rpartition(":")
    expected = "'package.module:attribute' or 'path/to/file.py:attribute' that imports"
    added = False
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
        added = True
    try:
        if target.endswith(".py"):
            file = Path(target).expanduser()
            if not file.is_absolute() and search_path is not None:
                file = search_path / file
            if not file.is_file():
                raise ConfigError(key, expected, spec, hint=f"no file {str(file)!r}")
            name = f"_art_smoothing_user_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]}"
            module_spec = importlib.util.spec_from_file_location(name, file)
            if module_spec is None or module_spec.loader is None:
                raise ConfigError(key, expected, spec, hint=f"{str(file)!r} is not a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))
            module = importlib.import_module(target)
    except ConfigError:
        raise
    except Exception as error:  # any error while running the user's module
        raise ConfigError(
            key, expected, spec, hint=f"importing it raised {type(error).__name__}: {error}"
        ) from None
    finally:
        if added:
            sys.path.remove(str(search_path))
    if not hasattr(module, attribute):
        raise ConfigError(key, expected, spec, hint=f"module {target!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def load_state_dict_file(path: str | Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """Read a weights file WITHOUT running code: ``.safetensors`` through safetensors, anything else
    through ``torch.load(weights_only=True)``. Accepts a bare state_dict or one nested under
    ``state_dict`` / ``model_state_dict`` / ``model``."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(key, "a path to an existing weights file", str(path))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ConfigError(
                key,
                "a .pt/.pth state_dict (safetensors is not installed)",
                str(path),
                hint="pip install safetensors",
            ) from None
        try:
            return dict(load_file(str(path)))
        except Exception as error:
            raise ConfigError(key, "a valid .safetensors file", str(path), hint=str(error)) from None
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files written with pickle; the refusal below says
            # what to do about them, so the warning would only add noise to the output.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ConfigError(
            key, "a state_dict loadable with torch.load(weights_only=True)", str(path), hint=pickle_hint(path)
        ) from None
    except RuntimeError as error:
        hint = (
            pickle_hint(path)
            if "weights_only" in str(error).lower() or "unpickl" in str(error).lower()
            else str(error)
        )
        raise ConfigError(
            key, "a state_dict loadable with torch.load(weights_only=True)", str(path), hint=hint
        ) from None
    except Exception as error:  # truncated or not a torch file at all
        raise ConfigError(
            key, "a torch weights file (torch.save(model.state_dict(), path))", str(path), hint=str(error)
        ) from None
    if isinstance(payload, dict):
        for nested in ("state_dict", "model_state_dict", "model"):
            if isinstance(payload.get(nested), dict):
                payload = payload[nested]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise ConfigError(
            key, "a state_dict: a mapping of parameter names to tensors", type(payload).__name__
        )
    return payload


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(Path(path).expanduser(), "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def user_weights_path(model_config: dict[str, Any], search_path: Path | None = None) -> Path:
    """The user's weights file: ``model.weights``, relative to ``search_path`` (a submission's folder)."""
    weights = Path(model_config["weights"]).expanduser()
    if not weights.is_absolute() and search_path is not None:
        weights = search_path / weights
    return weights


def load_user_model(
    model_config: dict[str, Any], dataset: Dataset, search_path: Path | None = None
) -> tuple[nn.Module, str]:
    """Import, build, load and check a user's model; returns ``(module on [0, 1] inputs, key)``.

    Every failure is a :class:`ConfigError` naming ``model.module``, ``model.weights`` or
    ``model.nb_classes``. The checks: the attribute imports and gives an ``nn.Module`` (directly, or by
    calling it with ``model.kwargs``); the weights fit it exactly (``strict`` loading); a batch of test
    inputs gives finite logits of shape ``(N, nb_classes)``.
    """
    spec = model_config["module"]
    obj = import_object(spec, "model.module", search_path)
    if isinstance(obj, nn.Module):
        model = obj
    elif callable(obj):
        try:
            model = obj(**model_config["kwargs"])
        except Exception as error:
            raise ConfigError(
                "model.kwargs",
                f"keyword arguments accepted by {spec}",
                model_config["kwargs"],
                hint=str(error),
            ) from None
        if not isinstance(model, nn.Module):
            raise ConfigError("model.module", "an nn.Module, or a class/factory returning one", spec)
    else:
        raise ConfigError("model.module", "an nn.Module, or a class/factory returning one", spec)
    weights = user_weights_path(model_config, search_path)
    state = load_state_dict_file(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        raise ConfigError(
            "model.weights", f"weights that fit the model built by {spec}", str(weights), hint=detail
        ) from None
    nb_classes = model_config["nb_classes"] or dataset.nb_classes
    if nb_classes < dataset.nb_classes:
        raise ConfigError(
            "model.nb_classes",
            f"at least the dataset's {dataset.nb_classes} classes",
            model_config["nb_classes"],
        )
    channels = dataset.input_shape[0]
    if model_config["mean"] is not None:
        mean, std = model_config["mean"], model_config["std"]
        for stat, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise ConfigError(f"model.{stat}", f"one number or {channels} (one per channel)", values)
        model = Normalized(model, mean * (channels // len(mean)), std * (channels // len(std)))
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(torch.as_tensor(dataset.x_test[:4]))
    except Exception as error:
        raise ConfigError(
            "model.module",
            f"a model taking inputs of shape (N, {', '.join(map(str, dataset.input_shape))}) in [0, 1]",
            spec,
            hint=f"forward raised {type(error).__name__}: {error}",
        ) from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (4, nb_classes):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            "model.nb_classes",
            f"the number of logits the model outputs; set it to match (it outputs shape {shape} for 4 "
            "inputs)",
            nb_classes,
        )
    if not bool(torch.isfinite(logits).all()):
        raise ConfigError("model.weights", "weights giving finite logits on test inputs", str(weights))
    key = config_hash(
        {
            "module": spec,
            "weights_sha256": file_digest(weights),
            "kwargs": model_config["kwargs"],
            "mean": model_config["mean"],
            "std": model_config["std"],
            "nb_classes": nb_classes,
        }
    )
    return model, key


def batched_argmax(
    model: torch.nn.Module, x: np.ndarray, device: torch.device, batch: int = 1000
) -> np.ndarray:
    """Argmax labels of a logits model over ``x``, in batches, without gradients."""
    model.eval()
    labels = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            chunk = torch.as_tensor(x[start : start + batch], dtype=torch.float32, device=device)
            labels.append(model(chunk).argmax(dim=1).cpu().numpy())
    return np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)


# -- training recipes --------------------------------------------------------------------------------------
def train_cross_entropy(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    device: torch.device | str = "cpu",
    progress: bool = False,
    desc: str = "train clean",
) -> nn.Module:
    """Plain cross-entropy training on clean inputs (Adam, shuffled mini-batches from a generator seeded
    with ``seed``); returns ``model`` in eval mode. The harness's clean recipe, and the benchmarks' and
    tests' clean classifiers."""
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(x, device=device)
    y = torch.as_tensor(y, device=device)
    model.train()
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        order = torch.randperm(len(x), generator=generator).to(device)
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def _train_clean(
    model: nn.Module, dataset: Dataset, spec: dict, device: torch.device, progress: bool
) -> None:
    train_cross_entropy(
        model,
        dataset.x_train,
        dataset.y_train,
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        learning_rate=spec["learning_rate"],
        seed=spec["seed"],
        device=device,
        progress=progress,
    )


def _art_device(device: torch.device) -> str:
    return "gpu" if device.type == "cuda" else "cpu"


def _train_gaussian(
    model: nn.Module, dataset: Dataset, spec: dict, device: torch.device, progress: bool
) -> None:
    from art_smoothing_plugin import RandomizedSmoothingClassifier

    estimator = RandomizedSmoothingClassifier(
        model,
        optimizer=torch.optim.Adam(model.parameters(), lr=spec["learning_rate"]),
        input_shape=dataset.input_shape,
        nb_classes=spec["nb_classes"],
        clip_values=(0.0, 1.0),
        scale=spec["sigma"],
        seed=spec["seed"],
        device_type=_art_device(device),
    )
    estimator.fit(
        dataset.x_train,
        dataset.y_train,
        batch_size=spec["batch_size"],
        nb_epochs=spec["epochs"],
        verbose=progress,
    )


def _train_madry(
    model: nn.Module, dataset: Dataset, spec: dict, device: torch.device, progress: bool
) -> None:
    from art.estimators.classification import PyTorchClassifier

    from .adversarial_training import madry_adversarial_training

    classifier = PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        optimizer=torch.optim.Adam(model.parameters(), lr=spec["learning_rate"]),
        input_shape=dataset.input_shape,
        nb_classes=spec["nb_classes"],
        clip_values=(0.0, 1.0),
        device_type=_art_device(device),
    )
    madry_adversarial_training(
        classifier,
        dataset.x_train,
        dataset.y_train,
        norm="inf" if spec["norm"] == "linf" else 2,
        eps=spec["eps"],
        eps_step=spec["eps_step"],
        max_iter=spec["steps"],
        nb_epochs=spec["epochs"],
        warmup_epochs=spec.get("warmup_epochs", 0),
        batch_size=spec["batch_size"],
        seed=spec["seed"],
        verbose=progress,
    )
    model.eval()


RECIPES: dict[str, Callable[..., None]] = {
    "clean": _train_clean,
    "gaussian": _train_gaussian,
    "madry": _train_madry,
}


class ModelStore:
    """Provides the classifiers defences are built on, training and caching them as needed.

    With ``model.module`` set in the config, every request returns the user's model instead (defences
    that would train their own are refused by config validation).

    :ivar events: one dict per model request: ``{"name", "status": "trained"|"cached"|"user", "seconds",
        "path", "key"}``; the report lists them and tests assert on them.
    """

    def __init__(
        self,
        config: dict[str, Any],
        dataset: Dataset,
        cache_dir: str | Path = DEFAULT_CACHE_DIR,
        device: torch.device | str = "cpu",
        progress: bool = True,
        log: Callable[[str], None] = print,
        search_path: Path | None = None,
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.cache_dir = Path(cache_dir).expanduser()
        self.device = torch.device(device)
        self.progress = progress
        self.log = log
        self.search_path = search_path
        self.events: list[dict[str, Any]] = []
        self._memory: dict[str, tuple[nn.Module, str]] = {}
        self._user: tuple[nn.Module, str] | None = None

    @property
    def user_model(self) -> bool:
        return bool(self.config["model"]["module"])

    @property
    def nb_classes(self) -> int:
        return self.config["model"]["nb_classes"] or self.dataset.nb_classes

    def load_user(self) -> tuple[nn.Module, str]:
        """The user's model (imported, loaded and checked once)."""
        if self._user is None:
            model, key = load_user_model(self.config["model"], self.dataset, self.search_path)
            self._user = (model.to(self.device).eval(), key)
            weights = user_weights_path(self.config["model"], self.search_path)
            self.events.append(
                {
                    "name": "user",
                    "status": "user",
                    "seconds": 0.0,
                    "path": "",
                    "key": key,
                    "module": self.config["model"]["module"],
                    "weights": str(weights.resolve()),
                    "weights_sha256": file_digest(weights),
                }
            )
        return self._user

    def training_spec(self, recipe: str, **params: Any) -> dict[str, Any]:
        """The full configuration of a harness-trained model: its cache key is the hash of this."""
        model = self.config["model"]
        spec = {
            "version": TRAINING_VERSION,
            "recipe": recipe,
            "architecture": model["architecture"],
            "dataset": self.dataset.name,
            "train_size": len(self.dataset.x_train),
            "input_shape": list(self.dataset.input_shape),
            "nb_classes": self.nb_classes,
            "epochs": model["epochs"],
            "batch_size": model["batch_size"],
            "learning_rate": model["learning_rate"],
            "seed": derive_seed(
                self.config["run"]["seed"], "train", recipe, json.dumps(params, sort_keys=True)
            ),
            **params,
        }
        if recipe == "madry":
            spec["epochs"] = self.config["adversarial_training"]["epochs"]
            spec["warmup_epochs"] = self.config["adversarial_training"]["warmup_epochs"]
        return spec

    def classifier(self, recipe: str, **params: Any) -> tuple[nn.Module, str]:
        """A classifier trained with ``recipe`` (``clean``, ``gaussian`` with ``sigma``, ``madry`` with
        ``norm``, ``eps``, ``eps_step``, ``steps``), or the user's model; returns ``(module, key)``."""
        if self.user_model:
            return self.load_user()
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        spec = self.training_spec(recipe, **params)
        label = recipe + "".join(f"-{k}{v}" for k, v in sorted(params.items()) if k in ("sigma", "norm"))

        def build() -> nn.Module:
            return build_model(
                spec["architecture"], tuple(spec["input_shape"]), spec["nb_classes"], spec["seed"]
            )

        def train(model: nn.Module) -> dict[str, Any]:
            RECIPES[recipe](model, self.dataset, spec, self.device, self.progress)
            return {"clean_test_accuracy": self._accuracy(model)}

        return self.cached(label, spec, build, train)

    def _accuracy(self, model: nn.Module) -> float:
        labels = batched_argmax(model, self.dataset.x_test, self.device)
        return float(np.mean(labels == self.dataset.y_test))

    def cached(
        self,
        label: str,
        spec: dict[str, Any],
        build: Callable[[], nn.Module],
        train: Callable[[nn.Module], dict[str, Any] | None],
        save: Callable[[nn.Module, Path], Any] | None = None,
        load: Callable[[Path], nn.Module] | None = None,
    ) -> tuple[nn.Module, str]:
        """Load the model of ``spec`` from the cache, or ``build()`` and ``train()`` it and cache it.

        ``save``/``load`` replace the default state_dict format (e.g. for denoisers, which carry their
        sigma). Files are written atomically; loading never runs code (``weights_only=True``).
        """
        key = config_hash(spec)
        if key in self._memory:
            return self._memory[key]
        path = self.cache_dir / f"{label}-{key}.pt"
        model: nn.Module | None = None
        if path.is_file():
            try:
                if load is not None:
                    model = load(path)
                else:
                    model = build()
                    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
                self.events.append(
                    {"name": label, "status": "cached", "seconds": 0.0, "path": str(path), "key": key}
                )
            except Exception as error:  # a corrupt or stale file: retrain rather than fail
                self.log(f"cached model {path} unreadable ({error}); retraining")
                model = None
        if model is None:
            self.log(f"training {label} (cache key {key})")
            start = time.perf_counter()
            model = build().to(self.device)
            info = train(model) or {}
            seconds = time.perf_counter() - start
            model = model.cpu()
            if save is not None:
                atomic_writer(path, lambda temporary: save(model, temporary))
            else:
                state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
                atomic_writer(path, lambda temporary: torch.save(state, temporary))
            atomic_write_json(path.with_suffix(".json"), {"spec": spec, "seconds": seconds, **info})
            self.events.append(
                {"name": label, "status": "trained", "seconds": seconds, "path": str(path), "key": key}
            )
        model = model.to(self.device).eval()
        self._memory[key] = (model, key)
        return model, key
