"""The command line: `python -m evaluations` and its subcommands (run --dry-run, analyze, config)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

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


# -- errors a person meets: one line, a non-zero exit, never a traceback ----------------------------------
def _module(*arguments, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "evaluations", *arguments], capture_output=True, text=True, timeout=timeout
    )


def _one_error_line(done, *fragments):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_an_output_folder_under_a_file_is_refused_in_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for extra in ([], ["--dry-run"]):
        done = _module("run", "--out", str(blocker / "sub"), "--limit", "2", *extra)
        _one_error_line(done, "argument '--out'", "is a file, not a folder")
    assert blocker.read_text() == "not a folder"


def test_an_output_folder_that_cannot_be_created_is_refused_in_one_line():
    # /proc refuses new folders even to root, so this holds whoever runs the tests
    for extra in ([], ["--dry-run"]):
        done = _module("run", "--out", "/proc/no-such-results", "--limit", "2", *extra)
        _one_error_line(done, "argument '--out'", "cannot create anything in '/proc'")


def test_dry_run_checks_the_output_folder_without_creating_it(tmp_path, capsys):
    out = tmp_path / "new" / "results"
    arguments = ["run", "--dry-run", "--out", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main([*arguments, *_set(TINY_OVERRIDES)]) == 0
    assert "writable" in capsys.readouterr().out
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []


def test_an_unknown_key_points_to_the_command_that_lists_keys(capsys):
    assert main(["run", "--set", "nosuch.key=1", "--dry-run"]) == 2
    message = capsys.readouterr().err
    assert "config key 'nosuch.key'" in message and "'config --keys'" in message
    assert "--describe" not in message


def test_ctrl_c_ends_in_one_line_that_says_a_rerun_resumes(tmp_path):
    """SIGINT while the run trains its first model: exit 130, one line, no traceback."""
    import signal

    command = [sys.executable, "-m", "evaluations", "run", "--no-progress", "--out", str(tmp_path / "out")]
    command += ["--cache-dir", str(tmp_path / "cache"), *_set(TINY_OVERRIDES)]
    # The child starts with SIGINT at its default, as under a terminal: a test session started as a
    # background job of a non-interactive shell ignores SIGINT, the child would inherit that, and Python
    # keeps an inherited "ignore" (so Ctrl-C would do nothing, by the shell's design, not the CLI's).
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    seen = []
    try:
        for line in process.stderr:
            seen.append(line)
            if line.startswith("training "):  # inside the long work, past every check
                process.send_signal(signal.SIGINT)
                break
        rest = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert any(line.startswith("training ") for line in seen), "".join(seen)
    assert process.returncode == 130, rest
    assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
    lines = rest.strip().splitlines()
    assert lines[-1].startswith("interrupted; rerun the same command (same --out) to resume"), rest
    assert len(lines) == 1, rest


# -- help ------------------------------------------------------------------------------------------------
def test_help_has_examples_homework_model_keys_and_diffusion(capsys):
    import pytest

    texts = {}
    for command in ([], ["run"], ["study"], ["analyze"]):
        with pytest.raises(SystemExit) as stopped:
            main([*command, "-h"])
        assert stopped.value.code == 0
        texts[" ".join(command)] = capsys.readouterr().out
    top, run = texts[""], texts["run"]
    assert "examples:" in top and "examples:" in run and "examples:" in texts["study"]
    assert "diffusion" in top and "diffusion_smoothing" in run
    assert "homework" in run and "[model]" in run
    for key in ("module", "weights", "kwargs", "mean", "std", "nb_classes"):
        assert f"  {key} = " in run
    assert "--submissions" in run and "RUNS ITS CODE" in run
    # one program name across the subcommands, analyze included
    for text in texts.values():
        assert text.startswith("usage: python3 -m evaluations")
    assert "art-smoothing-eval" not in "".join(texts.values())


def test_importing_the_cli_loads_no_torch_so_a_worker_run_can_quiet_openmp_first():
    """quiet_openmp_for_workers only works before torch's OpenMP runtime loads."""
    import subprocess
    import sys

    code = "import sys, evaluations.cli; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


@pytest.mark.parametrize(
    ("model", "mode", "expected"),
    [
        ({"module": "m.py:Net", "weights": "w.pt"}, "sandbox", True),
        ({"module": "m.py:Net", "weights": "w.pt"}, "process", True),
        ({"module": "", "weights": "model.pt2"}, "sandbox", True),
        ({"module": "", "weights": "model.onnx"}, "sandbox", False),  # ONNX runs in this process
        ({"module": "m.py:Net", "weights": "model.onnx"}, "sandbox", False),  # as the loader decides
        ({"module": "m.py:Net", "weights": "w.pt"}, "none", False),
        ({}, "sandbox", False),  # the harness's own models
    ],
)
def test_runs_a_worker(model, mode, expected):
    from evaluations import cli

    assert cli.runs_a_worker({"model": model, "isolation": {"mode": mode}}) is expected


def test_a_worker_run_quiets_openmp_unless_torch_is_loaded_or_the_user_chose(monkeypatch, tmp_path):
    import sys

    from evaluations import cli

    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):
        monkeypatch.delenv(name, raising=False)
    assert cli.quiet_openmp_for_workers() is False  # torch is loaded in this test session: too late
    monkeypatch.delitem(sys.modules, "torch")
    assert cli.quiet_openmp_for_workers() is True
    assert os.environ["GOMP_SPINCOUNT"] == cli.WORKER_RUN_SPINCOUNT
    monkeypatch.setenv("GOMP_SPINCOUNT", "50000")  # the user's own setting stays
    assert cli.quiet_openmp_for_workers() is False and os.environ["GOMP_SPINCOUNT"] == "50000"
    # Which runs: a config file's [model] with code, and isolation.mode from --set.
    config = tmp_path / "homework.toml"
    config.write_text('[model]\nmodule = "m.py:Net"\nweights = "w.pt"\n')
    parser = cli.build_parser()
    sandboxed = parser.parse_args(["run", "--config", str(config), "--set", 'isolation.mode="sandbox"'])
    in_process = parser.parse_args(["run", "--config", str(config)])
    assert cli._worker_config(sandboxed) is True and cli._worker_config(in_process) is False
