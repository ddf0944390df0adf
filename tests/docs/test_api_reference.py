"""The API reference (docs/reference/, rendered by mkdocstrings) covers every public module, and every
public class and function of the library has a docstring to render (mkdocstrings leaves out objects
without one)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re

import pytest

import art_smoothing_plugin
import evaluations

from .examples import ROOT

#: Harness modules the reference leaves to the guide: the command line (docs/evaluation-harness.md).
NOT_IN_REFERENCE = {"evaluations.__main__", "evaluations.cli"}


def _public_modules(package) -> list[str]:
    names = [package.__name__]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(set(names) - NOT_IN_REFERENCE)


def _documented() -> set[str]:
    pages = (ROOT / "docs" / "reference").glob("*.md")
    return {m for page in pages for m in re.findall(r"^::: ([\w.]+)$", page.read_text(), flags=re.M)}


@pytest.mark.parametrize("package", [art_smoothing_plugin, evaluations], ids=lambda p: p.__name__)
def test_every_public_module_has_its_reference_entry(package):
    missing = [name for name in _public_modules(package) if name not in _documented()]
    assert not missing, f"add '::: <module>' for these to a page of docs/reference/: {missing}"


def test_every_public_class_and_function_of_the_library_has_a_docstring():
    undocumented = []
    for name in _public_modules(art_smoothing_plugin):
        module = importlib.import_module(name)
        for attribute, value in vars(module).items():
            if attribute.startswith("_") or getattr(value, "__module__", None) != name:
                continue
            if not (inspect.isclass(value) or inspect.isfunction(value)):
                continue
            doc = value.__dict__.get("__doc__") if inspect.isclass(value) else value.__doc__
            if not doc or doc.startswith(f"{value.__name__}("):  # none, or a dataclass's generated one
                undocumented.append(f"{name}.{attribute}")
    assert not undocumented
