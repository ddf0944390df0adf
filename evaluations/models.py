"""Models stage: classifiers the harness trains (cached on disk by a hash of their configuration) and
users' models (``module:attribute`` plus a weights file).

Harness-trained models are small CNNs from :mod:`evaluations.zoo`, trained with one of these recipes:
``clean``; ``gaussian`` (Gaussian noise augmentation at sigma, through
:meth:`RandomizedSmoothingClassifier.fit`); ``smoothadv``, ``macer``, ``consistency`` and ``smoothmix``
(the training methods of :mod:`art_smoothing_plugin.training` at sigma, with their hyper-parameters from
``smoothing.training_params``); ``madry`` (PGD adversarial training through ART's trainer, in
:mod:`evaluations.adversarial_training`). Each is saved as a ``state_dict`` under
``<cache_dir>/<name>-<hash>.pt`` beside a ``.json`` that records its configuration; a later run with the
same configuration loads it instead of training. Loading always uses ``torch.load(weights_only=True)``.

A user's model is an ONNX file (loaded without running any code), a ``torch.export`` program (``.pt2``,
whose loader can run code) or Python code (``package.module:attribute`` or ``path/to/file.py:attribute``)
with a weights file. Code and ``.pt2`` files run where ``isolation.mode`` says: in this process (``none``:
IMPORTING THE CODE RUNS IT with your permissions, for code you trust), or in a worker process behind the
plain-array protocol, sandboxed or not (:mod:`evaluations.submissions`); instructor mode always uses a
worker. Weights files are read without running code (``torch.load(weights_only=True)`` or safetensors);
a pickled whole model is refused with a hint on converting it to a state_dict.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .config import ConfigError
from .config.sections import training_method, user_model_configured
from .data import Dataset
from .reproducibility import config_hash, derive_seed
from .storage import atomic_write_json, atomic_writer
from .submissions.formats import OpenedModel, folder_digest, open_model
from .submissions.loading import LoadError, import_attribute, read_state_dict
from .submissions.remote import RemoteModule, SubmissionFailure, export_front
from .submissions.sandbox import Limits
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


def in_worker_behind(
    model: nn.Module,
    front: nn.Module,
    example: torch.Tensor,
    *,
    cache_dir: Path | None = None,
    identity: dict[str, Any] | None = None,
) -> nn.Module | None:
    """``model(front(x))`` answered wholly by a worker when ``model`` is a submission's model that runs
    in one (normalised or not); ``None`` for a model in this process, or a ``front`` that cannot be
    exported, which then stays in this process (:meth:`RemoteModule.behind`).

    Why: denoised smoothing of a submission otherwise runs the denoiser here and the submission's model
    in its worker, and every attack step waits on both in turn; with both in the worker the step costs
    what it costs in process, plus the exchange. The worker is the submission's, so it reads the
    denoiser's weights (the defence the course applies to every submission, trained on the public
    training split), read-only, and nothing else of the evaluator's.

    :param example: a batch of at least 2 inputs, shaped like the data.
    :param cache_dir: with ``identity`` (what determines ``front``'s weights and computation), the
        exported program is kept under ``cache_dir/fronts`` and reused: exporting takes 1-2 s.
    """
    remote = model.model if isinstance(model, Normalized) else model
    if not isinstance(remote, RemoteModule):
        return None
    normalisation = None
    if isinstance(model, Normalized):  # the same (x - mean) / std, after front
        normalisation = [model.mean.flatten().tolist(), model.std.flatten().tolist()]
        front = nn.Sequential(front, Normalized(nn.Identity(), *normalisation))
    if cache_dir is None or identity is None:
        return remote.behind(front, example)
    key = config_hash(
        {
            "front": identity,
            "normalisation": normalisation,
            "input_shape": list(example.shape[1:]),
            "torch": torch.__version__,
        }
    )
    program = Path(cache_dir) / "fronts" / f"front-{key}.pt2"
    if not program.is_file():

        def export(temporary: Path) -> None:
            if export_front(front, example, temporary) is None:
                raise _NotExportable

        try:
            atomic_writer(program, export)  # whole or absent, even with runs sharing the cache
        except _NotExportable:
            return None
    return remote.behind_program(program)


class _NotExportable(Exception):
    """``front`` could not be exported (:func:`in_worker_behind` then leaves it in this process)."""


def _config_error(error: LoadError) -> ConfigError:
    return ConfigError(error.key, error.expected, error.got, error.hint, show_got=error.show_got)


def import_object(spec: str, key: str = "model.module", search_path: Path | None = None) -> Any:
    """Import ``package.module:attribute`` or ``path/to/file.py:attribute``. RUNS THE MODULE'S CODE.

    :param search_path: folder put first on ``sys.path`` while importing (a submission's folder).
    """
    try:
        return import_attribute(spec, key, search_path)
    except LoadError as error:
        raise _config_error(error) from None


def load_state_dict_file(path: str | Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """Read a weights file WITHOUT running code: ``.safetensors`` through safetensors, anything else
    through ``torch.load(weights_only=True)``. Accepts a bare state_dict or one nested under
    ``state_dict`` / ``model_state_dict`` / ``model``; a refused file gets advice read from its pickle's
    opcodes (:func:`evaluations.submissions.loading.pickle_hint`), never by unpickling it."""
    try:
        return read_state_dict(path, key)
    except LoadError as error:
        raise _config_error(error) from None


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


@dataclass
class UserModel:
    """A user's model, loaded and checked: ``module`` on [0, 1] inputs (normalised inside when the
    config says so), the ``key`` of its results, and what it is and where it runs."""

    module: nn.Module
    key: str
    format: str
    isolation: str
    description: str
    opened: OpenedModel

    def close(self) -> None:
        """Stop its worker, if it has one."""
        self.opened.close()


def _agreement_inputs(dataset: Dataset) -> np.ndarray:
    """Test inputs, clean and with Gaussian noise as smoothing adds it, on which an ONNX model's two
    evaluations must agree."""
    clean = dataset.x_test[:8].astype(np.float32)
    noise = np.random.default_rng(0).normal(0.0, 0.5, size=clean.shape).astype(np.float32)
    return np.concatenate([clean, clean + noise])


def open_user_model(
    model_config: dict[str, Any],
    dataset: Dataset,
    search_path: Path | None = None,
    *,
    isolation: str = "none",
    limits: Limits | None = None,
    threads: int | None = None,
    protected: Sequence[Path] = (),
) -> UserModel:
    """Open, build, load and check a user's model in its format (:mod:`evaluations.submissions.formats`)
    under ``isolation`` (``none``: in this process; ``process`` / ``sandbox``: a worker).

    Every failure is a :class:`ConfigError` naming ``model.module``, ``model.weights`` or
    ``model.nb_classes``. The checks: the model loads (an attribute that imports and gives an
    ``nn.Module``, weights that fit it exactly; or an ONNX / ``torch.export`` file); a batch of test
    inputs gives finite logits of shape ``(N, nb_classes)``.
    """
    nb_classes = model_config["nb_classes"] or dataset.nb_classes
    if nb_classes < dataset.nb_classes:
        raise ConfigError(
            "model.nb_classes",
            f"at least the dataset's {dataset.nb_classes} classes",
            model_config["nb_classes"],
        )
    channels = dataset.input_shape[0]
    if model_config["mean"] is not None:
        for stat in ("mean", "std"):
            values = model_config[stat]
            if len(values) not in (1, channels):
                raise ConfigError(f"model.{stat}", f"one number or {channels} (one per channel)", values)
    try:
        opened = open_model(
            model_config,
            dataset.input_shape,
            _agreement_inputs(dataset),
            folder=search_path,
            isolation=isolation,
            limits=limits or Limits(),
            threads=threads or torch.get_num_threads(),
            outputs=nb_classes,
            protected=protected,
        )
    except LoadError as error:
        raise _config_error(error) from None
    model = opened.module
    if model_config["mean"] is not None:
        mean, std = model_config["mean"], model_config["std"]
        model = Normalized(model, mean * (channels // len(mean)), std * (channels // len(std)))
    model.eval()
    spec = model_config["module"] or model_config["weights"]
    weights = user_weights_path(model_config, search_path)
    try:
        with torch.inference_mode():
            logits = model(torch.as_tensor(dataset.x_test[:4]))
    except SubmissionFailure as error:
        opened.close()
        raise ConfigError(
            "model.module", "a model that answers in its worker", spec, hint=str(error)
        ) from None
    except Exception as error:
        opened.close()
        raise ConfigError(
            "model.module",
            f"a model taking inputs of shape (N, {', '.join(map(str, dataset.input_shape))}) in [0, 1]",
            spec,
            hint=f"forward raised {type(error).__name__}: {error}",
        ) from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (4, nb_classes):
        opened.close()
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(
            "model.nb_classes",
            f"the number of logits the model outputs; set it to match (it outputs shape {shape} for 4 "
            "inputs)",
            nb_classes,
        )
    if not bool(torch.isfinite(logits).all()):
        opened.close()
        raise ConfigError("model.weights", "weights giving finite logits on test inputs", str(weights))
    identity = {
        "module": model_config["module"],
        "weights_sha256": file_digest(weights),
        "kwargs": model_config["kwargs"],
        "mean": model_config["mean"],
        "std": model_config["std"],
        "nb_classes": nb_classes,
    }
    if opened.format != "python":
        identity["format"] = opened.format
    if opened.format != "onnx" and search_path is not None:
        identity["folder_sha256"] = folder_digest(search_path)  # the code beside the weights counts too
    return UserModel(
        model, config_hash(identity), opened.format, opened.isolation, opened.description, opened
    )


def load_user_model(
    model_config: dict[str, Any], dataset: Dataset, search_path: Path | None = None, **options: Any
) -> tuple[nn.Module, str]:
    """:func:`open_user_model`'s ``(module on [0, 1] inputs, key)``; ``options`` are its keywords."""
    user = open_user_model(model_config, dataset, search_path, **options)
    return user.module, user.key


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


def _train_job(
    build: Callable[[], nn.Module], train: Callable[[nn.Module], dict[str, Any] | None], device: torch.device
) -> tuple[nn.Module, dict[str, Any]]:
    """Build and train one model (wherever the job runs); returns it on the CPU with its training info."""
    model = build().to(device)
    info = train(model) or {}
    return model.cpu(), info


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


def _train_for_smoothing(
    model: nn.Module, dataset: Dataset, spec: dict, device: torch.device, progress: bool
) -> None:
    """SmoothAdv, MACER, Consistency or SmoothMix (``spec["recipe"]``) at ``spec["sigma"]`` with the
    hyper-parameters ``spec["hyper"]``, through :func:`art_smoothing_plugin.training.train`: Adam, the
    run's epochs, batch size and learning rate, noise in [0, 1] units, every adversarial or mixed point
    clipped to [0, 1]."""
    from art_smoothing_plugin.training import make_training_method, train

    train(
        make_training_method(spec["recipe"], **spec["hyper"]),
        model,
        dataset.x_train,
        dataset.y_train,
        sigma=spec["sigma"],
        optimizer=torch.optim.Adam(model.parameters(), lr=spec["learning_rate"]),
        nb_epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        clip_values=(0.0, 1.0),
        num_classes=spec["nb_classes"],
        seed=spec["seed"],
        progress=progress,
    )


#: The recipes by name. ``gaussian`` is Gaussian augmentation through the estimator's ``fit`` (as it has
#: always been, so its cached models keep their keys); the other training methods of
#: :mod:`art_smoothing_plugin.training` train through its ``train``.
RECIPES: dict[str, Callable[..., None]] = {
    "clean": _train_clean,
    "gaussian": _train_gaussian,
    "madry": _train_madry,
    **{name: _train_for_smoothing for name in ("smoothadv", "macer", "consistency", "smoothmix")},
}


class ModelStore:
    """Provides the classifiers defences are built on, training and caching them as needed.

    With a user's model in the config (``model.module``, or an ``.onnx`` / ``.pt2`` ``model.weights``),
    every request returns the user's model instead (defences that would train their own are refused by
    config validation). It runs where ``isolation`` says (default: the config's ``isolation.mode``).

    :param isolation: ``none``, ``process`` or ``sandbox`` for a user's code or ``.pt2`` file.
    :param protected: paths a sandboxed user's model must not see (other submissions, results, ...).
    :ivar events: one dict per model request: ``{"name", "status": "trained"|"cached"|"user", "seconds",
        "path", "key"}`` (a user's model adds its module, weights, digest, format and isolation); the
        report lists them and tests assert on them.
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
        isolation: str | None = None,
        protected: Sequence[Path] = (),
    ) -> None:
        self.config = config
        self.dataset = dataset
        self.cache_dir = Path(cache_dir).expanduser()
        self.device = torch.device(device)
        self.progress = progress
        self.log = log
        self.search_path = search_path
        self.isolation = isolation or config["isolation"]["mode"]
        self.protected = list(protected)
        self.events: list[dict[str, Any]] = []
        self._memory: dict[str, tuple[nn.Module, str]] = {}
        self._user: UserModel | None = None
        #: Runs a training job (a function of nothing returning ``(model, info)``) and returns what it
        #: returns: in this process by default; the pipeline's executor (a Ray task) when it has one.
        self.run_training: Callable[[Callable[[], Any]], Any] = lambda job: job()

    @property
    def user_model(self) -> bool:
        return user_model_configured(self.config["model"])

    @property
    def nb_classes(self) -> int:
        return self.config["model"]["nb_classes"] or self.dataset.nb_classes

    def load_user(self) -> tuple[nn.Module, str]:
        """The user's model (opened, loaded and checked once; again after :meth:`release_user`)."""
        if self._user is None:
            user = open_user_model(
                self.config["model"],
                self.dataset,
                self.search_path,
                isolation=self.isolation,
                limits=Limits.from_config(self.config["isolation"]),
                threads=torch.get_num_threads(),
                protected=self.protected,
            )
            user.module.to(self.device).eval()
            self._user = user
            if not any(event["status"] == "user" for event in self.events):
                weights = user_weights_path(self.config["model"], self.search_path)
                self.events.append(
                    {
                        "name": "user",
                        "status": "user",
                        "seconds": 0.0,
                        "path": "",
                        "key": user.key,
                        "module": self.config["model"]["module"],
                        "weights": str(weights.resolve()),
                        "weights_sha256": file_digest(weights),
                        "format": user.format,
                        "isolation": user.isolation,
                        "isolation_detail": user.description,
                    }
                )
        return self._user.module, self._user.key

    def release_user(self) -> None:
        """Stop the user's model's worker (if it has one); the next request opens it again."""
        if self._user is not None:
            self._user.close()
            self._user = None

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

    def smoothing_recipe(self, method: str, sigma: float) -> tuple[str, dict[str, Any]]:
        """``(recipe, params)`` of the base classifier of randomized smoothing at ``sigma`` trained with
        ``method`` (a name of :mod:`art_smoothing_plugin.training`): Gaussian augmentation is the
        ``gaussian`` recipe with ``sigma`` alone (its cache key as before there were methods); the others
        carry every hyper-parameter (the run's ``smoothing.training_params`` over the papers' defaults),
        so that a change of any of them is another model."""
        if method == "gaussian":
            return "gaussian", {"sigma": sigma}
        hyper = training_method(self.config, method).params()
        return method, {"sigma": sigma, "hyper": hyper}

    def smoothing_classifier(self, method: str, sigma: float) -> tuple[nn.Module, str]:
        """The base classifier of randomized smoothing at ``sigma`` trained with ``method`` (see
        :meth:`smoothing_recipe`), or the user's model; returns ``(module, key)``."""
        recipe, params = self.smoothing_recipe(method, sigma)
        return self.classifier(recipe, **params)

    def classifier(self, recipe: str, **params: Any) -> tuple[nn.Module, str]:
        """A classifier trained with ``recipe`` (``clean``, ``gaussian`` with ``sigma``, a training method
        with ``sigma`` and ``hyper``, ``madry`` with ``norm``, ``eps``, ``eps_step``, ``steps``), or the
        user's model; returns ``(module, key)``."""
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

    def training_seconds(self, key: str) -> float | None:
        """Wall-clock seconds the model of cache key ``key`` took to train: this run's, or those recorded
        beside the cached file when it was trained (None when unknown, e.g. a user's model)."""
        for event in self.events:
            if event["key"] != key or event["status"] not in ("trained", "cached"):
                continue
            if event["status"] == "trained":
                return float(event["seconds"])
            try:
                record = json.loads(Path(event["path"]).with_suffix(".json").read_text())
                return float(record["seconds"])
            except (OSError, ValueError, KeyError, TypeError):
                return None
        return None

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
            model, info = self.run_training(functools.partial(_train_job, build, train, self.device))
            seconds = time.perf_counter() - start
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
