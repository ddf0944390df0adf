"""docs/architecture.md describes the layers exactly as the import contracts in pyproject.toml state them
(lint-imports checks the code against the contracts in CI; this checks the page against the contracts)."""

from __future__ import annotations

import re

import pytest
import tomllib

from .examples import ROOT


def _contract_layers(container: str) -> list[set[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers" and c["containers"] == [container]]
    assert contract["exhaustive"] is True
    return [{name.strip() for name in layer.split("|")} for layer in contract["layers"]]


def _page_layers(container: str) -> list[set[str]]:
    page = (ROOT / "docs" / "architecture.md").read_text()
    section = page.split(f"## `{container}`", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| (.+?) \| .+ \|$", section, flags=re.M)
    assert [int(number) for number, _ in rows] == list(range(len(rows), 0, -1))  # top to bottom
    return [set(re.findall(r"`([\w.]+)`", modules)) for _, modules in rows]


@pytest.mark.parametrize("container", ["art_smoothing_plugin", "evaluations"])
def test_the_page_lists_the_contract_layers_in_order(container):
    assert _page_layers(container) == _contract_layers(container)


def test_the_page_states_the_other_contracts():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    kinds = {(c["type"], tuple(c.get("source_modules", c.get("ancestors", [])))) for c in config["contracts"]}
    assert ("forbidden", ("art_smoothing_plugin",)) in kinds
    assert ("acyclic_siblings", ("art_smoothing_plugin", "evaluations")) in kinds
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert "`art_smoothing_plugin` never imports `evaluations`" in page
    assert "No circles" in page
