"""Analyze Cohen-format logs: the same certified-accuracy tables and plots as the harness's report, from
anyone's ``certify.py`` / ``predict.py`` output (for example the authors' published logs).

Usage::

    python3 -m evaluations analyze LOG_OR_FOLDER [...] --out DIR [--radii 0 0.25 0.5 0.75 1 1.5]
    python3 -m evaluations.analyze LOG_OR_FOLDER [...] --out DIR

A folder stands for every file directly in it (sorted by name). Writes ``DIR/certified_accuracy.md``
(one row per log: rows, certified accuracy in % at each radius, ACR, abstentions),
``DIR/certified_accuracy.png`` (the curves of every certify log) and ``DIR/certified_accuracy.json``.

Certified accuracy at r is the fraction of all rows with ``correct == 1`` and ``radius >= r``; this is
the convention that reproduces the published tables exactly. Percentages are rounded half up from the
exact fraction (integer arithmetic), so no float artefact can move a table entry. A predict log has no
radius: its row gives the accuracy of PREDICT (abstentions wrong) under r = 0 and leaves the rest blank.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluations.cohen_logs import atomic_write_text, read_certify_log
from evaluations.metrics import ABSTAIN
from evaluations.plots import plot_certified_accuracy

__all__ = ["DEFAULT_RADIUS_GRID", "analyze_logs", "format_percent", "main"]

DEFAULT_RADIUS_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def format_percent(count: int, total: int) -> str:
    """``100 * count / total`` with one decimal, rounded half up exactly (``2/3`` -> ``"66.7"``)."""
    if total < 1 or not 0 <= count <= total:
        raise ValueError(f"need 0 <= count <= total and total >= 1, got count={count}, total={total}")
    tenths = (2 * 1000 * count + total) // (2 * total)  # round(1000 * count / total), halves up
    return f"{tenths // 10}.{tenths % 10}"


def _expand(paths: Sequence[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not inside:
                raise ValueError(f"log folder {str(path)!r} holds no files")
            files.extend(inside)
        elif path.is_file():
            files.append(path)
        else:
            raise ValueError(f"log path {str(path)!r} is neither a file nor a folder")
    if not files:
        raise ValueError("paths must name at least one log file or folder")
    return files


def _panel_and_label(name: str) -> tuple[str, str]:
    """Cohen's names read ``data_certify_<dataset>_<model>_noise_<train sigma>_<split>_sigma_<sigma>``: one
    chart per ``<dataset>_<model>``, the rest as the legend label. Other names share one chart."""
    head, marker, tail = name.partition("_noise_")
    if not marker:
        return "", name
    return head.removeprefix("data_certify_"), "noise_" + tail


def _row(path: Path, grid: np.ndarray) -> dict[str, Any]:
    log = read_certify_log(path)
    total = len(log["idx"])
    if total == 0:
        raise ValueError(f"{path}: the log has a header but no rows")
    correct = log["correct"] == 1
    row: dict[str, Any] = {
        "log": path.name,
        "path": str(path),
        "kind": log["kind"],
        "rows": total,
        "abstained": int(np.count_nonzero(log["predict"] == ABSTAIN)),
    }
    if log["kind"] == "certify":
        counts = [int(np.count_nonzero(correct & (log["radius"] >= r))) for r in grid]
        row["counts"] = counts
        row["certified_accuracy_pct"] = [format_percent(c, total) for c in counts]
        row["certified_accuracy"] = [c / total for c in counts]
        row["acr"] = float(np.sum(np.where(correct, log["radius"], 0.0)) / total)
        row["max_radius"] = float(log["radius"].max())
        # Curve on a fine grid up to the largest radius in the log, for the plot.
        fine = np.linspace(0.0, max(float(grid.max()), row["max_radius"]) * 1.02, 400)
        row["curve"] = {
            "radii": fine.tolist(),
            "accuracy": [float(np.count_nonzero(correct & (log["radius"] >= r))) / total for r in fine],
        }
    else:
        count = int(np.count_nonzero(correct))
        row["counts"] = [count]
        row["accuracy_pct"] = format_percent(count, total)
        row["accuracy"] = count / total
    return row


def _markdown(rows: list[dict[str, Any]], grid: np.ndarray) -> str:
    radii = [f"r={r:g}" for r in grid]
    header = ["log", "kind", "rows", *radii, "ACR", "abstained"]
    lines = [
        "Certified accuracy (%) at L2 radius r: rows with correct == 1 and radius >= r, over all rows. "
        "Predict logs (no radius): accuracy of PREDICT under r=0, abstentions counted wrong.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    for row in rows:
        if row["kind"] == "certify":
            cells = [*row["certified_accuracy_pct"], f"{row['acr']:.3f}"]
        else:
            cells = [row["accuracy_pct"], *([""] * (len(grid) - 1)), ""]
        abstained = f"{row['abstained']} ({format_percent(row['abstained'], row['rows'])}%)"
        lines.append(
            "| " + " | ".join([f"`{row['log']}`", row["kind"], str(row["rows"]), *cells, abstained]) + " |"
        )
    return "\n".join(lines) + "\n"


def analyze_logs(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    radius_grid: Sequence[float] = DEFAULT_RADIUS_GRID,
    *,
    title: str = "Certified accuracy from Cohen-format logs",
) -> dict[str, Any]:
    """Read every log (folders expand to their files), write the Markdown table, the PNG and a JSON copy
    into ``out_dir``, and return ``{"radius_grid", "rows", "markdown", "plot", "json"}``.

    Each row: ``log, path, kind ("certify"|"predict"), rows, abstained, counts`` and, for certify logs,
    ``certified_accuracy`` (fractions), ``certified_accuracy_pct`` (strings as printed), ``acr``,
    ``max_radius``, ``curve``; for predict logs, ``accuracy`` and ``accuracy_pct``. All files are written
    atomically; nothing is written when any log is unreadable."""
    grid = np.asarray(radius_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or np.any(np.isnan(grid)) or np.any(grid < 0):
        raise ValueError(f"radius_grid must be a non-empty list of radii >= 0, got {radius_grid!r}")
    rows = [_row(path, grid) for path in _expand(paths)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    markdown = atomic_write_text(out / "certified_accuracy.md", _markdown(rows, grid))
    curves = []
    for row in rows:
        if row["kind"] == "certify":
            panel, label = _panel_and_label(row["log"])
            curves.append(
                {
                    "label": label,
                    "radii": row["curve"]["radii"],
                    "accuracy": row["curve"]["accuracy"],
                    "style": "solid",
                    "group": label,
                    "panel": panel,
                }
            )
    plot = (
        plot_certified_accuracy(curves, out / "certified_accuracy.png", title, xlabel="L2 radius r")
        if curves
        else None
    )
    summary = {"radius_grid": grid.tolist(), "rows": rows}
    json_path = atomic_write_text(
        out / "certified_accuracy.json",
        json.dumps(
            {**summary, "rows": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}, indent=1
        ),
    )
    return {**summary, "markdown": str(markdown), "plot": str(plot) if plot else None, "json": str(json_path)}


def build_parser(prog: str = "python3 -m evaluations analyze") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Certified-accuracy tables and plots from Cohen-format certify/predict logs.",
    )
    parser.add_argument("logs", nargs="+", help="log files, or folders (every file in them)")
    parser.add_argument("--out", required=True, help="folder for certified_accuracy.{md,png,json}")
    parser.add_argument(
        "--radii",
        nargs="+",
        type=float,
        default=list(DEFAULT_RADIUS_GRID),
        help="radii of the table (default: %(default)s)",
    )
    parser.add_argument("--title", default="Certified accuracy from Cohen-format logs", help="plot title")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python3 -m evaluations analyze") -> int:
    """Entry point of ``python3 -m evaluations analyze``: prints the table, returns 0 (2 on bad input).

    :param prog: the program name shown in usage and help (the caller's, so every subcommand shows one).
    """
    args = build_parser(prog).parse_args(argv)
    try:
        result = analyze_logs(args.logs, args.out, args.radii, title=args.title)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(Path(result["markdown"]).read_text(encoding="utf-8"))
    print(f"wrote {result['markdown']}, {result['json']}" + (f", {result['plot']}" if result["plot"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
