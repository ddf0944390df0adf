"""The command line: `python -m evaluations` and its subcommands (run --dry-run, analyze, config)."""

from __future__ import annotations

import subprocess
import sys

from evaluations.cli import main

from .conftest import TINY_OVERRIDES


def _set(overrides):
    return [argument for override in overrides for argument in ("--set", override)]


def test_dry_run_validates_and_estimates_without_training(tmp_path, capsys):
    status = main(["run", "--dry-run", "--cache-dir", str(tmp_path / "cache"), *_set(TINY_OVERRIDES)])
    out = capsys.readouterr().out
    assert status == 0
    assert "configuration valid" in out and "estimated total" in out
    assert "| train | clean (to train)" in out and "| certify | rs_sigma0.25 |" in out
    assert not (tmp_path / "cache").exists()  # nothing was trained or written


def test_dry_run_of_the_mnist5k_preset_plans_its_stages(tmp_path, capsys):
    assert main(["run", "--preset", "mnist5k", "--dry-run", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # 500 points x (100 + 10,000) samples per sigma, as the issue asks
    assert "| certify | rs_sigma0.5 | 5 | 5,050,000 |" in out
    assert "| certify | denoised_dncnn_sigma0.5 | 1 | 210,000 |" in out
    # diffusion: 100 points x (100 + 2,000) at each sigma, its DDPM to train, and no attack or check
    assert "| certify | diffusion_sigma0.25 | 1 | 210,000 |" in out and "| train | ddpm (to train)" in out
    assert "| certificate_check | diffusion_sigma0.5 |" not in out


def test_analyze_subcommand_reaches_the_analyzer(tmp_path, capsys):
    from evaluations.cohen_logs import write_certify_log

    log = tmp_path / "sigma_0.25.tsv"
    write_certify_log(
        log,
        {
            "idx": [0, 1, 2, 3],
            "label": [1, 2, 3, 4],
            "predict": [1, 2, -1, 0],
            "radius": [0.3, 0.6, 0.0, 0.2],
            "correct": [1, 1, 0, 0],
            "time": [0.1, 0.1, 0.1, 0.1],
        },
    )
    assert main(["analyze", str(log), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "certified_accuracy.md").is_file()
    assert "50.0" in capsys.readouterr().out  # 2 of 4 certified correctly at r = 0


def test_python_dash_m_entry_point():
    done = subprocess.run(
        [sys.executable, "-m", "evaluations", "config", "--keys"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "`smoothing.sigmas`" in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "evaluations", "run", "--set", "smoothing.sigmas=[]", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "config key 'smoothing.sigmas'" in bad.stderr
