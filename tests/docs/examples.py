"""The fenced Python examples of the README and the docs pages, as runnable code.

Every block fenced as ```` ```python ```` is meant to run, top to bottom, the blocks of one page sharing
one namespace (a later block may use what an earlier one made). A block that cannot run as written (it
needs a server, a checkpoint or data a reader supplies) says so on the line just before its fence::

    <!-- not run: needs a diffusers checkpoint -->
    ```python
    ...
    ```

The marker must give a reason. Code that is not Python (signatures, shell, output) is fenced with its
own language (``text``, ``bash``, ...) and is never run. docs/contributing.md states these rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The pages whose Python examples are run: the README and every page of the docs site.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

MISPLACED = "a 'not run' marker must directly precede a python block"
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>[^`\n]*)$")
NOT_RUN = re.compile(r"^ *<!-- *not run: *(?P<reason>.*?) *-->$")


@dataclass(frozen=True)
class Block:
    """One fenced Python block: where it is, its code, and why it is not run (``None``: it is run)."""

    page: Path
    line: int  # 1-based line of the first code line
    code: str
    skip_reason: str | None


def python_blocks(page: Path) -> list[Block]:
    """Every ```` ```python ```` block of ``page`` in order, with its ``not run`` marker if it has one.

    Raises ``ValueError`` for a ``not run`` marker without a reason or not followed by a Python block, and
    for an unclosed fence: a marker that silently skips nothing, or a block that silently vanishes, is a
    mistake in the page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    pending: tuple[int, str] | None = None  # (line, reason) of a not-run marker awaiting its block
    while index < len(lines):
        line = lines[index]
        marker = NOT_RUN.match(line)
        if marker:
            if not marker["reason"]:
                raise ValueError(f"{page}:{index + 1}: a 'not run' marker must say why")
            pending = (index + 1, marker["reason"])
            index += 1
            continue
        opening = FENCE.match(line)
        if not opening:
            if line.strip() and pending:
                raise ValueError(
                    f"{page}:{pending[0]}: a 'not run' marker must directly precede a python block"
                )
            index += 1
            continue
        fence, indent = opening["fence"], opening["indent"]
        language = opening["info"].strip().split(" ")[0].lower()
        end = index + 1
        while end < len(lines) and not re.match(rf"^ *{re.escape(fence[0])}{{{len(fence)},}} *$", lines[end]):
            end += 1
        if end == len(lines):
            raise ValueError(f"{page}:{index + 1}: unclosed code fence")
        if language == "python":
            code = "\n".join(
                text[len(indent) :] if text.startswith(indent) else text for text in lines[index + 1 : end]
            )
            blocks.append(Block(page, index + 2, code, pending[1] if pending else None))
        elif pending:
            raise ValueError(f"{page}:{pending[0]}: {MISPLACED}")
        pending = None
        index = end + 1
    if pending:
        raise ValueError(f"{page}:{pending[0]}: {MISPLACED}")
    return blocks


def page_script(blocks: list[Block]) -> list[tuple[Block, object]]:
    """The runnable blocks of one page, each compiled so that a traceback names the page and its line."""
    compiled = []
    for block in blocks:
        if block.skip_reason is None:
            source = "\n" * (block.line - 1) + block.code
            compiled.append((block, compile(source, str(block.page), "exec")))
    return compiled
