"""Read and write per-example logs in the format of Cohen et al.'s ``certify.py`` and ``predict.py``.

A certify log is a tab-separated table with the header ``idx label predict radius correct time``, one
row per test point; ``predict`` is -1 for an abstention (then ``radius`` is 0 and ``correct`` 0). A
predict log has the same columns without ``radius``. ``time`` is written by the authors either as
``H:MM:SS.ffffff`` (``str(datetime.timedelta)``) or as seconds; both are read, as float seconds.

The harness writes the same columns first and may append its own (defence, sigma, p_lower, ...), so
the authors' analysis scripts and ours read each other's files. Radii are written with full float
precision (``repr``): rounding a radius up, as 3 significant digits would, could count a point as
certified at a radius the evidence does not reach.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .storage import atomic_write_text

__all__ = ["CERTIFY_COLUMNS", "PREDICT_COLUMNS", "read_certify_log", "write_certify_log", "atomic_write_text"]

CERTIFY_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
PREDICT_COLUMNS = ("idx", "label", "predict", "correct", "time")
_INTEGER_COLUMNS = ("idx", "label", "predict", "correct")


def _parse_time(text: str) -> float:
    """Seconds from ``H:MM:SS.ffffff`` / ``MM:SS`` / ``D day(s), H:MM:SS`` or a plain number."""
    text = text.strip()
    days = 0.0
    if "day" in text:  # str(timedelta) of a day or more: "1 day, 2:03:04.5"
        day_part, _, text = text.partition(",")
        days = float(day_part.split()[0])
    seconds = 0.0
    for part in text.strip().split(":"):
        seconds = seconds * 60.0 + float(part)
    return days * 86400.0 + seconds


def _parse_column(name: str, values: list[str], path: Path) -> np.ndarray:
    try:
        if name in _INTEGER_COLUMNS:
            as_float = np.array([float(v) for v in values], dtype=np.float64)
            if np.any(as_float != np.round(as_float)):
                raise ValueError("not an integer")
            return as_float.astype(np.int64)
        if name == "radius":
            return np.array([float(v) for v in values], dtype=np.float64)
        if name == "time":
            return np.array([_parse_time(v) for v in values], dtype=np.float64)
    except ValueError as error:
        raise ValueError(
            f"{path}: column {name!r} holds a value that is not a valid {name} ({error})"
        ) from None
    # Columns the harness appends: numbers where every value parses, otherwise strings.
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return np.array(values, dtype=object)


def read_certify_log(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a Cohen-format certify or predict log into a dict of equal-length arrays.

    Keys: ``idx, label, predict, correct`` (int64), ``time`` (float seconds), ``radius`` (float64, only
    in certify logs), any extra columns (float64 where numeric, else object), and ``"kind"``:
    ``"certify"`` or ``"predict"`` (no radius column). Tab-separated; falls back to any whitespace;
    blank lines and ``#`` comment lines are skipped. Raises ValueError naming the file for a missing
    required column, a ragged row or an unparseable value.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"log path {str(path)!r} does not exist or is not a file")
    lines = [
        line.rstrip("\r\n")
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise ValueError(f"{path}: empty log (expected a header line {' '.join(CERTIFY_COLUMNS)!r})")

    def split(line: str) -> list[str]:
        return [cell.strip() for cell in line.split("\t")] if "\t" in lines[0] else line.split()

    header = split(lines[0])
    missing = [c for c in PREDICT_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: not a Cohen-format log; header {header!r} lacks {missing} (expected tab-separated "
            f"{', '.join(CERTIFY_COLUMNS)}, radius absent in predict logs)"
        )
    if len(set(header)) != len(header):
        raise ValueError(f"{path}: duplicate column names in header {header!r}")
    cells: list[list[str]] = []
    for number, line in enumerate(lines[1:], start=2):
        row = split(line)
        if len(row) != len(header):
            raise ValueError(f"{path}: line {number} has {len(row)} fields, the header has {len(header)}")
        cells.append(row)
    columns = list(zip(*cells, strict=True)) if cells else [() for _ in header]
    log: dict[str, Any] = {
        name: _parse_column(name, list(values), path) for name, values in zip(header, columns, strict=True)
    }
    log["kind"] = "certify" if "radius" in log else "predict"
    return log


def _format_cell(name: str, value: Any) -> str:
    if name in _INTEGER_COLUMNS:
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest string that reads back to the same float: no rounding up
    return str(value)


def write_certify_log(path: str | os.PathLike[str], rows: Mapping[str, ArrayLike]) -> Path:
    """Write a Cohen-format log atomically (see :func:`atomic_write_text`) and return its path.

    ``rows`` maps column names to equal-length arrays. ``idx, label, predict, correct, time`` are
    required; with ``radius`` it is a certify log (header: the six :data:`CERTIFY_COLUMNS`, tab-separated),
    without, a predict log. Other columns follow in the mapping's order. ``time`` is written in
    seconds. Values must not contain tabs or newlines.
    """
    required = CERTIFY_COLUMNS if "radius" in rows else PREDICT_COLUMNS
    missing = [c for c in required if c not in rows]
    if missing:
        raise ValueError(
            f"rows must have columns {', '.join(PREDICT_COLUMNS)} (and radius for a certify log); "
            f"missing {missing}"
        )
    header = list(required) + [c for c in rows if c not in required and c != "kind"]
    columns = {name: np.asarray(rows[name]) for name in header}
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every column of rows must have the same length, got {lengths}")
    if "radius" in columns:
        radii = columns["radius"].astype(np.float64)
        if np.any(np.isnan(radii)) or np.any(radii < 0):
            raise ValueError("rows['radius'] must be non-negative numbers (0 for an abstention)")
    lines = ["\t".join(header)]
    for i in range(next(iter(lengths.values()))):
        cells = [_format_cell(name, columns[name][i]) for name in header]
        if any("\t" in cell or "\n" in cell for cell in cells):
            raise ValueError(f"row {i} has a value containing a tab or newline: {cells!r}")
        lines.append("\t".join(cells))
    return atomic_write_text(path, "\n".join(lines) + "\n")
