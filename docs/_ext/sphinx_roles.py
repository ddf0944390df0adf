"""A griffe extension for the API reference: the docstrings write cross-references as Sphinx roles
(``:class:`Smoother```, ``:func:`~art_smoothing_plugin.statistics.sequential_looks```), which Markdown
would show verbatim. Each role becomes inline code, linked to the object's entry when the reference
renders it (an optional autoref: no link, and no warning, when the object is not in the reference, such
as ART's or torch's classes)."""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|obj|exc|const):`(?P<target>[^`]+)`")


def _identifier(obj: griffe.Object, target: str) -> str:
    """The full path of ``target`` as seen from ``obj`` (itself when it cannot be resolved)."""
    head, _, rest = target.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except Exception:  # not a name of this scope: try the enclosing one
            scope = scope.parent
            continue
        return f"{resolved}.{rest}" if rest else resolved
    return target


def _replace(obj: griffe.Object, match: re.Match[str]) -> str:
    target = match["target"].strip()
    shown = target.lstrip("~")
    if target.startswith("~"):
        shown = shown.rsplit(".", 1)[-1]
    identifier = _identifier(obj, target.lstrip("~"))
    code = f"<code>{html.escape(shown)}</code>"
    return f'<autoref identifier="{html.escape(identifier)}" optional>{code}</autoref>'


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":`" in obj.docstring.value:
            obj.docstring.value = ROLE.sub(lambda m: _replace(obj, m), obj.docstring.value)
