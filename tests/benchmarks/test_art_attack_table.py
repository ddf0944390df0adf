"""The table of ART attacks in docs/art-surface.md is what benchmarks/art_attack_table.py prints: a few of
its rows (one per kind of verdict) are run again here and must read as the page says."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: One row per verdict: runs on g through loss_gradient, through class_gradient, through predict only
#: (the query-only chain included), refused by us (no activations), refused by ART (AutoPGD's check).
ROWS = ("FastGradientMethod", "DeepFool", "HopSkipJump", "FeatureAdversariesNumpy", "AutoConjugateGradient")


@pytest.fixture(scope="module")
def table():
    spec = importlib.util.spec_from_file_location(
        "benchmark_art_attack_table", ROOT / "benchmarks/art_attack_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def documented_rows() -> dict[str, list[str]]:
    rows = {}
    for line in (ROOT / "docs/art-surface.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("gradient", "score", "decision"):
            rows[cells[1]] = cells[2:]
    return rows


def verdict(cell: str) -> str:
    """The cell without the 'PREDICT changed' count (a sign of life that depends on float details)."""
    return cell.split("; PREDICT changed")[0]


def test_the_documented_table_covers_every_family_and_the_rows_rerun_alike(table) -> None:
    documented = documented_rows()
    assert set(table._attacks()) == set(documented), set(table._attacks()) ^ set(documented)
    estimators, x, y = table.build_estimators()
    for name in ROWS:
        rows = [table.run_attack(name, kind, estimators, x, y) for kind in table.KINDS]
        assert [verdict(table._cell(r)) for r in rows] == [verdict(c) for c in documented[name]], name
