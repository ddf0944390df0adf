"""Atomic files and the checkpoint store that makes a run resumable.

Every file the harness writes goes to a temporary file in the same folder first and is then moved into
place with :func:`os.replace`, which is atomic on POSIX and Windows: a reader (or a resumed run) sees the
old file or the new one, never half of one. An interrupted run therefore loses at most the unit of work
it was computing.

:class:`WorkStore` keeps the result of each unit of work (one chunk of test points of one stage) as an
``.npz`` file named by a hash of everything that produced it. A rerun with the same configuration finds
the file and reuses it; a changed configuration hashes differently and recomputes. Each fetch is logged
(``computed`` or ``reused``) in memory and in ``events.jsonl``, which is how tests and users see what a
resumed run did.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .reproducibility import config_hash

__all__ = [
    "WorkStore",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_writer",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(handle, 0o644)  # mkstemp creates 0600; results are meant to be read by others
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def atomic_writer(path: str | os.PathLike[str], write: Callable[[Path], Any]) -> Path:
    """Let ``write(temporary_path)`` create a file (e.g. ``savefig``, ``torch.save``), then move it to
    ``path`` atomically. The temporary name keeps ``path``'s suffix, so format detection still works."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


class WorkStore:
    """Checkpoints of units of work under ``root``, keyed by a hash of what produced them.

    :param root: folder of the checkpoint files (``<out>/checkpoints``).
    :param events_path: JSON-lines log of every fetch (``None``: in memory only).
    """

    def __init__(self, root: str | os.PathLike[str], events_path: str | os.PathLike[str] | None = None):
        self.root = Path(root)
        self.events_path = Path(events_path) if events_path is not None else None
        self.events: list[dict[str, Any]] = []

    def path(self, stage: str, unit: str, key: Mapping[str, Any]) -> Path:
        safe = "".join(c if c.isalnum() or c in "._-=" else "_" for c in unit)
        return self.root / stage / f"{safe}-{config_hash(dict(key))}.npz"

    def fetch(
        self,
        stage: str,
        unit: str,
        key: Mapping[str, Any],
        compute: Callable[[], Mapping[str, np.ndarray]],
    ) -> dict[str, np.ndarray]:
        """The arrays of this unit: from its checkpoint if one exists, else ``compute()``d, written
        atomically and returned. Records a ``computed`` or ``reused`` event."""
        arrays = self.load(stage, unit, key)
        if arrays is not None:
            return arrays
        start = time.perf_counter()
        computed = compute()
        return self.save(stage, unit, key, computed, time.perf_counter() - start)

    def load(self, stage: str, unit: str, key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        """The arrays of this unit's checkpoint (recording a ``reused`` event), or ``None`` when there is
        none (or it cannot be read, e.g. written by another version: the unit is then recomputed)."""
        path = self.path(stage, unit, key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
        except (OSError, ValueError):
            return None
        self._record(stage, unit, "reused", 0.0, path)
        return arrays

    def save(
        self, stage: str, unit: str, key: Mapping[str, Any], computed: Mapping[str, Any], seconds: float
    ) -> dict[str, np.ndarray]:
        """Write a computed unit's checkpoint atomically (recording a ``computed`` event); returns its
        arrays as a later :meth:`load` gives them."""
        path = self.path(stage, unit, key)
        arrays = {name: np.asarray(value) for name, value in computed.items()}
        arrays["_seconds"] = np.asarray(seconds)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(path, buffer.getvalue())
        self._record(stage, unit, "computed", seconds, path)
        return arrays

    def _record(self, stage: str, unit: str, status: str, seconds: float, path: Path) -> None:
        event = {
            "stage": stage,
            "unit": unit,
            "status": status,
            "seconds": round(seconds, 4),
            "file": path.name,
        }
        self.events.append(event)
        if self.events_path is not None:
            self.events_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.events_path, "a", encoding="utf-8") as log:
                log.write(json.dumps({"time": time.time(), **event}) + "\n")

    def count(self, status: str, stage: str | None = None) -> int:
        """How many fetches of this run had ``status`` (optionally within one stage)."""
        return sum(1 for e in self.events if e["status"] == status and (stage is None or e["stage"] == stage))
