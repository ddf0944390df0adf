"""CI runs what the README says: .ci/run calls the README's test command verbatim, and also checks the
import contracts and builds the documentation site strictly."""

from __future__ import annotations

from .examples import ROOT


def _readme_test_command() -> str:
    lines = [line for line in (ROOT / "README.md").read_text().splitlines() if "# the tests" in line]
    assert len(lines) == 1, "the README gives one test command, commented '# the tests'"
    return lines[0].split("#", 1)[0].strip()


def test_ci_runs_the_readme_test_command_and_the_architecture_and_docs_checks():
    steps = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert _readme_test_command() in steps
    assert "lint-imports" in steps
    assert any("mkdocs build --strict" in step for step in steps)


def test_the_setup_probes_the_ci_tools_so_a_fresh_clone_installs_them():
    setup = (ROOT / ".ci" / "setup").read_text()
    for module in ("importlinter", "mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        assert module in setup
