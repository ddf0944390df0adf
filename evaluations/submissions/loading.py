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
import io
import pickle
import pickletools
import sys
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

__all__ = [
    "PICKLE_HINT",
    "LoadError",
    "build_user_module",
    "describe_error",
    "import_attribute",
    "load_exported_program",
    "load_weights_into",
    "pickle_contents",
    "pickle_hint",
    "read_state_dict",
]

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


class LoadError(ValueError):
    """A model that does not load: the message names the key, the expected form and what was found (the
    same form as the harness's ``ConfigError``, which it becomes there; a class of its own because the
    worker, alone in the sandbox, cannot import the harness's configuration package)."""

    def __init__(self, key: str, expected: str, got: Any = None, hint: str = "", *, show_got: bool = True):
        self.key, self.expected, self.got, self.hint, self.show_got = key, expected, got, hint, show_got
        message = f"config key {key!r}: expected {expected}"
        if show_got:
            message += f"; got {got!r}"
        if hint:
            message += f". {hint}"
        super().__init__(message)


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line (just ``Type`` when the message is empty)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


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
        raise LoadError(key, expected, spec, hint=f"importing it raised {describe_error(error)}") from None
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
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files written with pickle; the refusal below says
            # what to do about them, so the warning would only add noise to the output.
            warnings.filterwarnings("ignore", message=".*pickle protocol.*", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise LoadError(key, expected, str(path), hint=pickle_hint(path)) from None
    except RuntimeError as error:
        text = str(error).lower()
        hint = pickle_hint(path) if "weights_only" in text or "unpickl" in text else str(error)
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
