"""Loading a model from Python code and a weights file, or from a ``torch.export`` program: the steps that
RUN A SUBMISSION'S CODE. The evaluator calls them in its own process only for a model the user trusts
(``isolation.mode = "none"``); for submissions they run inside the worker (:mod:`worker`), in the sandbox.

This module imports only the standard library and (inside the functions that need it) torch, so the
worker can load it as a sibling file inside the sandbox and import a submission before torch: a
submission that fails on import fails in milliseconds. Failures raise :class:`LoadError`, whose message
names the config key, the expected form and what was found (the harness turns it into a
``ConfigError``).

What each loader really does (read in torch 2.13's source):

* ``torch.load(path, weights_only=True)`` unpickles with an allow-list of tensor and container types and
  refuses any other global, so it runs no code from the file; safetensors files hold raw tensors only.
* ``torch.export.load`` is NOT code-free: it calls ``torch.load(..., weights_only=False)`` on any weight or
  constant the archive's JSON marks ``use_pickle`` and ``pickle.loads`` on "opaque" constants, falls back
  to ``weights_only=False`` for the example inputs, parses shape expressions with ``sympy.sympify`` (which
  evaluates Python), and resolves each graph node's target by ``getattr`` from the ``torch`` module
  (``torch.os.system`` resolves). A ``.pt2`` file is therefore treated like code: loaded only where code
  may run.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = [
    "PICKLE_HINT",
    "LoadError",
    "build_user_module",
    "import_attribute",
    "load_exported_program",
    "load_weights_into",
    "read_state_dict",
]

PICKLE_HINT = (
    "The file holds pickled Python objects (for example a whole model saved with torch.save(model)), "
    "which would run code when loaded. Convert it ONCE, on a machine you trust, to a plain state_dict: "
    "model = torch.load('model.pt', weights_only=False); torch.save(model.state_dict(), 'weights.pt')"
)


class LoadError(ValueError):
    """A model that does not load: the message names the key, the expected form and what was found (the
    same form as the harness's ``ConfigError``, which it becomes there)."""

    def __init__(self, key: str, expected: str, got: Any = None, hint: str = "", *, show_got: bool = True):
        self.key, self.expected, self.got, self.hint, self.show_got = key, expected, got, hint, show_got
        message = f"config key {key!r}: expected {expected}"
        if show_got:
            message += f"; got {got!r}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


def import_attribute(spec: str, key: str = "model.module", search_path: Path | None = None) -> Any:
    """Import ``package.module:attribute`` or ``path/to/file.py:attribute``. RUNS THE MODULE'S CODE.

    :param search_path: folder put first on ``sys.path`` while importing, and the base of a relative
        file path (a submission's folder).
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
                raise LoadError(key, expected, spec, hint=f"no file {str(file)!r}")
            name = f"_art_smoothing_user_{hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:12]}"
            module_spec = importlib.util.spec_from_file_location(name, file)
            if module_spec is None or module_spec.loader is None:
                raise LoadError(key, expected, spec, hint=f"{str(file)!r} is not a Python module")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
        else:
            if str(Path.cwd()) not in sys.path:
                sys.path.append(str(Path.cwd()))
            module = importlib.import_module(target)
    except LoadError:
        raise
    except Exception as error:  # any error while running the user's module
        raise LoadError(
            key, expected, spec, hint=f"importing it raised {type(error).__name__}: {error}"
        ) from None
    finally:
        if added:
            sys.path.remove(str(search_path))
    if not hasattr(module, attribute):
        raise LoadError(key, expected, spec, hint=f"module {target!r} has no attribute {attribute!r}")
    return getattr(module, attribute)


def build_user_module(obj: Any, spec: str, kwargs: dict[str, Any]) -> nn.Module:
    """The ``nn.Module`` an imported attribute stands for: itself, or what calling it with ``kwargs``
    returns (a class or a factory)."""
    from torch import nn

    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise LoadError("model.module", "an nn.Module, or a class/factory returning one", spec)
    try:
        model = obj(**kwargs)
    except Exception as error:
        raise LoadError(
            "model.kwargs",
            f"keyword arguments accepted by {spec}",
            kwargs,
            hint=f"{type(error).__name__}: {error}",
        ) from None
    if not isinstance(model, nn.Module):
        raise LoadError("model.module", "an nn.Module, or a class/factory returning one", spec)
    return model


def read_state_dict(path: str | Path, key: str = "model.weights") -> dict[str, torch.Tensor]:
    """Read a weights file WITHOUT running code: ``.safetensors`` through safetensors, anything else
    through ``torch.load(weights_only=True)``. Accepts a bare state_dict or one nested under
    ``state_dict`` / ``model_state_dict`` / ``model``."""
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise LoadError(key, "a path to an existing weights file", str(path))
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise LoadError(
                key,
                "a .pt/.pth state_dict (safetensors is not installed)",
                str(path),
                hint="pip install safetensors",
            ) from None
        try:
            return dict(load_file(str(path)))
        except Exception as error:
            raise LoadError(key, "a valid .safetensors file", str(path), hint=str(error)) from None
    expected = "a state_dict loadable with torch.load(weights_only=True)"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LoadError(key, expected, str(path), hint=PICKLE_HINT) from None
    except RuntimeError as error:
        text = str(error).lower()
        hint = PICKLE_HINT if "weights_only" in text or "unpickl" in text else str(error)
        raise LoadError(key, expected, str(path), hint=hint) from None
    except Exception as error:  # truncated or not a torch file at all
        raise LoadError(
            key, "a torch weights file (torch.save(model.state_dict(), path))", str(path), hint=str(error)
        ) from None
    if isinstance(payload, dict):
        for nested in ("state_dict", "model_state_dict", "model"):
            if isinstance(payload.get(nested), dict):
                payload = payload[nested]
                break
    if not isinstance(payload, dict) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise LoadError(key, "a state_dict: a mapping of parameter names to tensors", type(payload).__name__)
    return payload


def load_weights_into(model: nn.Module, path: Path, spec: str) -> nn.Module:
    """``model`` with the weights of ``path`` loaded strictly (every name and shape must match)."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:400]
        raise LoadError(
            "model.weights", f"weights that fit the model built by {spec}", str(path), hint=detail
        ) from None
    return model


def load_exported_program(path: str | Path) -> nn.Module:
    """The module of a ``torch.export`` program (``torch.export.save(program, "model.pt2")``).
    ``torch.export.load`` CAN RUN CODE from the file (see the module docstring): call it only where a
    submission's code may run."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LoadError("model.weights", "a path to an existing .pt2 file", str(path))
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        detail = " ".join(str(error).split())[:300]
        raise LoadError(
            "model.weights",
            "a torch.export program: torch.export.save(torch.export.export(model, (x,)), 'model.pt2')",
            str(path),
            hint=f"torch.export.load raised {type(error).__name__}: {detail}",
        ) from None
    return program.module()
