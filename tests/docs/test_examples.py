"""The docs cannot drift from the API: every fenced Python example of the README and the docs pages runs,
on the shipped data (scikit-learn's digits), one page at a time; and the rules of the extractor
(tests/docs/examples.py, stated in docs/contributing.md) hold."""

from __future__ import annotations

import textwrap

import pytest
import torch

from .examples import PAGES, ROOT, page_script, python_blocks

RUNNABLE = [page for page in PAGES if any(b.skip_reason is None for b in python_blocks(page))]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(ROOT)) for p in RUNNABLE])
def test_the_python_examples_of_the_page_run(page, tmp_path, monkeypatch):
    """The page's blocks run top to bottom in one namespace, in an empty working directory (files an
    example writes stay there, and so does any model an example caches). A failure names the page and
    its line in the traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ART_SMOOTHING_CACHE", str(tmp_path / "cache"))
    monkeypatch.syspath_prepend(str(ROOT))
    threads = torch.get_num_threads()
    namespace: dict = {"__name__": "__docs_example__"}
    try:
        for _block, code in page_script(python_blocks(page)):
            exec(code, namespace)  # noqa: S102 - the project's own documentation
    finally:
        torch.set_num_threads(threads)


def test_every_page_is_scanned_and_examples_are_found():
    names = {str(page.relative_to(ROOT)) for page in PAGES}
    assert {"README.md", "docs/randomized-smoothing.md", "docs/contributing.md"} <= names
    blocks = [b for page in PAGES for b in python_blocks(page)]
    assert sum(b.skip_reason is None for b in blocks) >= 9  # the examples are run, not skipped
    assert all(b.skip_reason for b in blocks if b.skip_reason is not None)


def _page(tmp_path, text):
    page = tmp_path / "page.md"
    page.write_text(textwrap.dedent(text))
    return page


def test_extractor_reads_blocks_markers_and_lines(tmp_path):
    page = _page(
        tmp_path,
        """\
        # Title

        ```python
        x = 1
        ```

        <!-- not run: needs a server -->
        ```python
        serve()
        ```

        ```text
        not python
        ```

        - a list item with code:

          ```python
          y = x + 1
          ```
        """,
    )
    blocks = python_blocks(page)
    assert [(b.line, b.code, b.skip_reason) for b in blocks] == [
        (4, "x = 1", None),
        (9, "serve()", "needs a server"),
        (19, "y = x + 1", None),
    ]
    namespace: dict = {}
    for _block, code in page_script(blocks):
        exec(code, namespace)  # noqa: S102
    assert namespace["y"] == 2


def test_a_failing_example_names_its_page_and_line(tmp_path):
    page = _page(tmp_path, "text\n\n```python\nok = 1\nraise RuntimeError('drifted')\n```\n")
    ((_, code),) = page_script(python_blocks(page))
    with pytest.raises(RuntimeError, match="drifted") as error:
        exec(code, {})  # noqa: S102
    frame = error.traceback[-1]
    assert (frame.path, frame.lineno + 1) == (page, 5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("<!-- not run:  -->\n```python\nx = 1\n```\n", "must say why"),
        ("<!-- not run: no reason to -->\ntext\n```python\nx = 1\n```\n", "directly precede"),
        ("<!-- not run: shell -->\n```bash\nls\n```\n", "directly precede"),
        ("```python\nx = 1\n", "unclosed"),
    ],
)
def test_markers_that_skip_nothing_and_unclosed_fences_are_refused(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        python_blocks(_page(tmp_path, text))
