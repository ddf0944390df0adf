"""The README's set-up on a user's machine: .ci/setup works inside a virtual environment and stops with
one clear line on a system Python that refuses pip (PEP 668). (The README's examples run in
tests/docs/test_examples.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_setup_works_inside_a_virtual_environment(tmp_path):
    # --system-site-packages: the environment sees this machine's torch and the rest, so the set-up
    # finds everything in place and installs nothing (CI machines have no network for a fresh one)
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(tmp_path / "venv")],
        check=True,
        timeout=120,
    )
    environment = {**os.environ, "PATH": f"{tmp_path / 'venv' / 'bin'}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", ".ci/setup"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    probe = subprocess.run(
        ["python3", "-c", "import sys; print(sys.prefix != sys.base_prefix)"],
        env=environment,
        capture_output=True,
        text=True,
    )
    assert probe.stdout.strip() == "True"  # the set-up above ran in the environment's python3


def test_setup_on_a_system_managed_python_says_to_create_an_environment(tmp_path):
    """A python3 that reports itself externally managed (PEP 668), as Debian's does: one line, exit 1,
    and no pip call at all."""
    log = tmp_path / "calls.log"
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            echo "$*" >> {log}
            if [ "$1" = "-" ]; then
                script=$(cat)
                case "$script" in *EXTERNALLY-MANAGED*) exit 1 ;; esac
                printf '%s' "$script" | exec {sys.executable} -
            fi
            exec {sys.executable} "$@"
            """
        )
    )
    fake.chmod(0o755)
    environment = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", ".ci/setup"], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "PEP 668" in lines[0]
    assert "python3 -m venv .venv && . .venv/bin/activate" in lines[0] and "python3-venv" in lines[0]
    assert "-m pip" not in log.read_text()
