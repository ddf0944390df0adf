"""The three ways a model can be handed in, and opening one under the isolation it needs.

======================  =====================================  ===========================================
format                  files                                  where it runs
======================  =====================================  ===========================================
``onnx``                ``model.onnx`` (+ its external data)   the evaluator's process; no submitted code
                                                               runs (:mod:`.onnx_format`)
``torch_export``        ``model.pt2``                          a worker: ``torch.export.load`` can run
                                                               code from the file (:mod:`.loading`)
``python``              ``model.py`` + ``.pt``/``.safetensors`` a worker: importing the module runs it
======================  =====================================  ===========================================

The format follows from ``model.weights``: ``.onnx`` and ``.pt2`` files are whole models (no
``model.module``); anything else is a state_dict for the ``model.module`` code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .file_format import model_format
from .loading import LoadError, build_user_module, import_attribute, load_exported_program, load_weights_into
from .onnx_format import OnnxError, check_agreement, load_onnx
from .remote import SubmissionFailure, start_worker
from .sandbox import Limits

__all__ = ["FORMATS", "OpenedModel", "folder_digest", "model_format", "open_model"]

#: What each format is, for reports.
FORMATS = {
    "onnx": "ONNX (onnxruntime for outputs, a torch evaluation of the same graph for gradients; "
    "no submitted code runs)",
    "torch_export": "torch.export program (.pt2; its loader can run code from the file)",
    "python": "Python code and a state_dict (importing the code runs it)",
}


@dataclass
class OpenedModel:
    """A user's model ready to answer: ``module`` on [0, 1] inputs (not yet normalised), with what it
    is and how it runs."""

    module: nn.Module
    format: str
    isolation: str
    description: str

    def close(self) -> None:
        """Stop its worker, if it has one."""
        close = getattr(self.module, "close", None)
        if callable(close):
            close()


def folder_digest(folder: Path) -> str:
    """SHA-256 over every file of a submission's folder (names and contents, in order): the cache key of
    its results changes when any of its files does."""
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file() and not p.is_symlink()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _relative(path: Path, folder: Path, key: str, spec: str) -> str:
    """``path`` relative to ``folder``; a file outside it (another submission's) is refused."""
    resolved, root = path.resolve(), folder.resolve()
    if root not in resolved.parents:
        raise LoadError(key, f"a file inside the submission's folder {str(root)!r}", spec)
    return str(resolved.relative_to(root))


def _own_model_folder(fmt: str, target: str, weights: Path, isolation: str) -> Path:
    """The folder a user's own model (not a submission) runs from in a worker: the one holding its code
    file, or its ``.pt2`` file. The worker sees that folder only, so the weights must lie in it too."""
    if fmt == "torch_export":
        return weights.resolve().parent
    if not target.endswith(".py"):
        raise LoadError(
            "model.module",
            f"a file path ('path/to/model.py:Class') when isolation.mode is {isolation!r} (the worker "
            "sees only the folder holding that file)",
            target,
        )
    return Path(target).expanduser().resolve().parent


def open_model(
    model_config: dict[str, Any],
    input_shape: Sequence[int],
    probe: np.ndarray,
    *,
    folder: Path | None,
    isolation: str,
    limits: Limits,
    threads: int,
    outputs: int,
    protected: Sequence[Path] = (),
) -> OpenedModel:
    """Open the model ``model_config`` describes.

    :param probe: inputs on which an ONNX model's two evaluations must agree.
    :param folder: the submission's folder (paths are relative to it); ``None`` for a user's own model.
    :param isolation: ``none`` (in this process), ``process`` or ``sandbox`` for code and ``.pt2``
        files; ONNX models always load here, since they run no code.
    :param outputs: the number of outputs every answer must have.
    :param protected: paths a sandboxed submission must not see.
    :raises LoadError: one line naming the key, the file and the problem.
    """
    spec, weights = model_config["module"], Path(model_config["weights"]).expanduser()
    if folder is not None and not weights.is_absolute():
        weights = folder / weights
    fmt = model_format(spec, str(weights))
    if folder is not None:  # a submission reads only its own files (a link to another's is refused)
        relative_weights = _relative(weights, folder, "model.weights", str(weights))
    if fmt == "onnx":
        try:
            model = load_onnx(weights, input_shape, threads=threads)
            check_agreement(model, probe)
        except OnnxError as error:
            raise LoadError("model.weights", "an ONNX classifier", hint=str(error), show_got=False) from None
        return OpenedModel(model, fmt, "none needed", "in the evaluator's process (ONNX: no code runs)")
    if isolation == "none":
        if fmt == "torch_export":
            model = load_exported_program(weights)
        else:
            model = build_user_module(
                import_attribute(spec, "model.module", folder), spec, model_config["kwargs"]
            )
            load_weights_into(model, weights, spec)
        return OpenedModel(model, fmt, "none", "in the evaluator's process (code the user trusts)")
    target, _, attribute = spec.rpartition(":")
    worker_folder = folder
    if folder is None:  # a user's own model in a worker: the worker sees the folder its files are in
        worker_folder = _own_model_folder(fmt, target, weights, isolation)
        relative_weights = _relative(weights, worker_folder, "model.weights", str(weights))
    module_spec = spec
    if target.endswith(".py"):
        code = Path(target).expanduser()
        if not code.is_absolute():  # a submission's path is relative to its folder, the user's to here
            code = code.resolve() if folder is None else folder / code
        module_spec = f"{_relative(code, worker_folder, 'model.module', spec)}:{attribute}"
    worker_spec = {
        "format": fmt,
        "module": module_spec,
        "weights": relative_weights,
        "kwargs": model_config["kwargs"],
    }
    try:
        module = start_worker(
            worker_folder,
            worker_spec,
            isolation=isolation,
            limits=limits,
            threads=threads,
            outputs=outputs,
            protected=protected,
        )
    except SubmissionFailure as error:
        key, hint = ("model.weights" if fmt == "torch_export" else "model.module"), str(error)
        for candidate in ("model.module", "model.weights", "model.kwargs"):  # the worker's own key, if any
            prefix = f"config key '{candidate}': "
            if hint.startswith(prefix):
                key, hint = candidate, hint[len(prefix) :]
        if fmt == "torch_export":  # the file is the model: name it as the evaluator sees it
            hint = f"{weights}: {hint}"
        raise LoadError(
            key, f"a model that loads in its worker ({isolation})", hint=hint, show_got=False
        ) from None
    return OpenedModel(module, fmt, isolation, module.isolation)
