"""Instructor mode on a machine without the sandbox: code submissions are refused with a row saying why
(ONNX ones still run), unless --trust-submissions, which runs them in a plain worker process and marks
their rows TRUSTED."""

from __future__ import annotations

import json

import pytest

from evaluations import leaderboard
from evaluations.cli import main
from evaluations.leaderboard import run_leaderboard
from evaluations.submissions.sandbox import SandboxSupport

from .conftest import write_onnx_submission, write_python_submission
from .test_hostile import OVERRIDES

NO_SANDBOX = SandboxSupport(False, "bubblewrap is not installed (simulated)")


@pytest.fixture
def homework(tmp_path, monkeypatch):
    monkeypatch.setattr(leaderboard, "sandbox_support", lambda: NO_SANDBOX)
    root = tmp_path / "homework"
    write_onnx_submission(root / "alice", seed=1)
    write_python_submission(root / "bob", seed=2)
    return root


def _rows(out):
    table = json.loads((out / "leaderboard.json").read_text())
    return {row[1]: dict(zip(table["header"], row, strict=True)) for row in table["rows"]}


def test_without_the_sandbox_code_is_refused_and_onnx_still_runs(homework, tmp_path):
    out = tmp_path / "board"
    reports = run_leaderboard(
        homework, out, overrides=OVERRIDES, cache_dir=tmp_path / "cache", progress=False, log=lambda m: None
    )
    assert isinstance(reports["alice"], dict)
    assert reports["bob"].startswith("refused: its Python code would run without the sandbox")
    assert (
        "bubblewrap is not installed (simulated)" in reports["bob"]
        and "--trust-submissions" in reports["bob"]
    )
    rows = _rows(out)
    assert rows["alice"]["rank"] == 1 and rows["bob"]["rank"] is None
    assert not (out / "bob").exists()


def test_trusted_submissions_run_in_a_plain_process_and_are_marked(homework, tmp_path):
    out = tmp_path / "board"
    reports = run_leaderboard(
        homework,
        out,
        overrides=OVERRIDES,
        cache_dir=tmp_path / "cache",
        progress=False,
        log=lambda m: None,
        trust_submissions=True,
    )
    assert isinstance(reports["bob"], dict)
    rows = _rows(out)
    assert rows["bob"]["isolation"].startswith("TRUSTED") and rows["bob"]["status"] == "ok"
    assert not rows["alice"]["isolation"].startswith("TRUSTED")
    assert "TRUSTED" in (out / "leaderboard.md").read_text()
    assert "**Isolation:** process (TRUSTED" in (out / "bob" / "report.md").read_text()


def test_the_trust_flag_belongs_to_instructor_mode(capsys):
    assert main(["run", "--trust-submissions", "--dry-run"]) == 2
    assert "argument '--trust-submissions': expected --submissions with it" in capsys.readouterr().err
