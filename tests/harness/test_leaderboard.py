"""Instructor mode: a folder of submissions gives one report per valid submission and one leaderboard
that lists the invalid ones with the reason, without stopping the others."""

from __future__ import annotations

import hashlib
import json
import textwrap

import pytest
import torch

from evaluations.leaderboard import discover_submissions, run_leaderboard

from .conftest import TINY_OVERRIDES

MODEL_CODE = textwrap.dedent(
    """
    from torch import nn

    class Model(nn.Sequential):
        def __init__(self, hidden=32):
            super().__init__(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    """
)


def _submission(root, name, hidden=32, weights=True, config=""):
    folder = root / name
    folder.mkdir()
    (folder / "model.py").write_text(MODEL_CODE)
    if weights:
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)
        )
        torch.save(model.state_dict(), folder / "weights.pt")
    if config:
        (folder / "submission.toml").write_text(config)
    return folder


def test_leaderboard_ranks_valid_submissions_and_lists_invalid_ones(tmp_path, model_cache):
    root = tmp_path / "submissions"
    root.mkdir()
    _submission(root, "alice", config="[smoothing]\nsigmas = [0.25]\n")  # ignored: the instructor's count
    _submission(root, "bob", hidden=16, config="[model]\nkwargs = {hidden = 32}\n")  # weights do not fit
    _submission(root, "carol", weights=False)  # no weights file at all
    _submission(root, "dave", hidden=8, config="[model]\nkwargs = {hidden = 8}\n")
    found = {s.name: s for s in discover_submissions(root)}
    assert set(found) == {"alice", "bob", "carol", "dave"}
    assert found["carol"].error and "model.weights" in found["carol"].error
    out = tmp_path / "board"
    overrides = [
        *TINY_OVERRIDES,  # smoothing.sigmas = [0.25, 0.5]: the instructor's, for everyone
        'attacks.enabled=["pgd", "smoothadv"]',
        'defences.enabled=["undefended", "randomized_smoothing", "feature_squeezing"]',
        "smoothing.points=6",
        "attacks.points=6",
    ]
    # The sandbox where the machine has one; where it has none (no bubblewrap, or a Python under /tmp,
    # which the sandbox's own /tmp hides) a plain worker, so that ranking is tested on every machine.
    reports = run_leaderboard(
        root,
        out,
        overrides=overrides,
        cache_dir=model_cache,
        progress=False,
        log=lambda m: None,
        trust_submissions=True,
    )
    assert isinstance(reports["alice"], dict) and isinstance(reports["dave"], dict)
    assert "config key 'model.weights'" in reports["bob"] and "size mismatch" in reports["bob"]
    alice = reports["alice"]
    # the instructor's sigmas, not alice's own [0.25]; a note in her report says so
    assert set(alice["defences"]) == {"undefended", "rs_sigma0.25", "rs_sigma0.5", "feature_squeezing"}
    assert set(reports["dave"]["defences"]) == set(alice["defences"])
    assert any("[smoothing] sigmas = [0.25] were ignored" in note for note in alice["notes"])
    alice_report = (out / "alice" / "report.md").read_text()
    assert "sigmas = [0.25] were ignored" in alice_report
    assert reports["dave"]["notes"] == []
    # the report names the student's model: module, weights file and its digest
    weights = root / "alice" / "weights.pt"
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert f"`{(root / 'alice' / 'model.py').resolve()}:Model`" in alice_report
    assert f"weights `{weights.resolve()}` (SHA-256 `{digest}`)" in alice_report
    assert (out / "alice" / "report.md").is_file() and not (out / "bob").exists()

    board = (out / "leaderboard.md").read_text()
    assert "[alice](alice/report.md)" in board and "invalid: config key 'model.weights'" in board
    assert "undefended robust L∞ ε=0.2 (%)" in board and "α/k" in board
    table = json.loads((out / "leaderboard.json").read_text())
    rows = {row[1]: dict(zip(table["header"], row, strict=True)) for row in table["rows"]}
    # only evaluated submissions are ranked, by the corrected choice of their reports; the others follow
    assert sorted(rows[n]["rank"] for n in ("alice", "dave")) == [1, 2]
    assert rows["bob"]["rank"] is None and rows["carol"]["rank"] is None
    assert [row[1] for row in table["rows"]][2:] == ["bob", "carol"]
    for name in ("alice", "dave"):
        selection = reports[name]["selection"]
        assert rows[name]["selected defence (α/k)"] == selection["best"]
        assert rows[name]["ACR (α/k)"] == pytest.approx(
            selection["defences"][selection["best"]]["acr"], abs=1e-4
        )
    first = min(("alice", "dave"), key=lambda n: rows[n]["rank"])
    second = "dave" if first == "alice" else "alice"
    assert rows[first]["ACR (α/k)"] >= rows[second]["ACR (α/k)"]
    # numbers are numbers in leaderboard.json, not strings
    clean = rows["alice"]["clean accuracy (%)"]
    assert isinstance(clean, float) and clean == pytest.approx(
        100 * alice["defences"]["undefended"]["clean_accuracy"]
    )
    assert isinstance(rows["alice"]["certified r=0.25 (%)"], float)
    assert len((out / "leaderboard.tsv").read_text().splitlines()) == 5


def test_the_command_line_prints_where_the_leaderboard_is(tmp_path, capsys):
    from evaluations.cli import main

    root = tmp_path / "submissions"
    root.mkdir()
    _submission(root, "alice")
    out = tmp_path / "board"
    assert main(["run", "--submissions", str(root), "--out", str(out), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == f"leaderboard: {out / 'leaderboard.md'}"
