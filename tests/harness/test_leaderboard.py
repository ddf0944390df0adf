"""Instructor mode: a folder of submissions gives one report per valid submission and one leaderboard
that lists the invalid ones with the reason, without stopping the others."""

from __future__ import annotations

import json
import textwrap

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
    _submission(root, "alice", config="[smoothing]\nsigmas = [0.25]\n")
    _submission(root, "bob", hidden=16, config="[model]\nkwargs = {hidden = 32}\n")  # weights do not fit
    _submission(root, "carol", weights=False)  # no weights file at all
    found = {s.name: s for s in discover_submissions(root)}
    assert set(found) == {"alice", "bob", "carol"}
    assert found["carol"].error and "model.weights" in found["carol"].error
    out = tmp_path / "board"
    # --set overrides beat a submission's own sigmas, so the tiny overrides leave smoothing.sigmas alone
    tiny = [o for o in TINY_OVERRIDES if not o.startswith("smoothing.sigmas")]
    overrides = [*tiny, 'attacks.enabled=["pgd", "smoothadv"]', "smoothing.points=6", "attacks.points=6"]
    reports = run_leaderboard(
        root, out, overrides=overrides, cache_dir=model_cache, progress=False, log=lambda m: None
    )
    assert isinstance(reports["alice"], dict)
    assert "config key 'model.weights'" in reports["bob"] and "size mismatch" in reports["bob"]
    alice = reports["alice"]
    # defences that train their own classifier are left out; the student's model is smoothed at its sigma
    assert set(alice["defences"]) == {
        "undefended",
        "rs_sigma0.25",
        "denoised_dncnn_sigma0.5",
        "diffusion_sigma0.5",
        "feature_squeezing",
    }
    assert (out / "alice" / "report.md").is_file() and not (out / "bob").exists()
    board = (out / "leaderboard.md").read_text()
    assert "[alice](alice/report.md)" in board and "invalid: config key 'model.weights'" in board
    table = json.loads((out / "leaderboard.json").read_text())
    assert [row[1] for row in table["rows"]][0] == "alice"  # the only valid submission ranks first
    assert len((out / "leaderboard.tsv").read_text().splitlines()) == 4
