"""The allocator settings: a block freed after one batch serves the next without new page faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from evaluations import allocator

ROUNDS = 50
BLOCK_PAGES = 1024  # a 4 MiB block in 4 KiB pages

# Allocates and fills two 4 MiB blocks, frees them, ROUNDS times (a batch's activations, again and again),
# and prints the minor page faults it took.
REPEATED_BLOCKS = textwrap.dedent(
    f"""
    import resource, sys
    sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
    from evaluations.allocator import keep_freed_memory
    tuned = sys.argv[1] == "tuned" and keep_freed_memory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range({ROUNDS}):
        blocks = [b"\\x01" * ({BLOCK_PAGES} * 4096) for _ in range(2)]  # malloc, a write to every page
        del blocks
    print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _page_faults(mode: str) -> tuple[bool, int]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name != "GLIBC_TUNABLES" and not name.startswith("MALLOC_")
    }
    out = subprocess.run(
        [sys.executable, "-c", REPEATED_BLOCKS, mode],
        capture_output=True,
        text=True,
        env=environment,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not allocator._on_glibc(), reason="the thresholds are glibc's")
def test_a_freed_block_serves_the_next_allocation_without_new_page_faults():
    tuned, faults_tuned = _page_faults("tuned")
    assert tuned
    # The two blocks' pages fault once (the heap grows once), not once a round.
    assert faults_tuned < 3 * BLOCK_PAGES, faults_tuned
    # The control: with glibc's own sliding thresholds a block is mapped afresh in every round, a page
    # fault a page (measured: about 100,000 faults, both blocks every round).
    _, faults_default = _page_faults("default")
    assert faults_default > ROUNDS * BLOCK_PAGES, faults_default


def test_the_users_own_malloc_settings_are_kept(monkeypatch):
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert allocator.keep_freed_memory() is False
    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert allocator.keep_freed_memory() is False


def test_a_worker_gets_the_same_thresholds_in_its_environment():
    assert allocator.worker_environment() == {
        "GLIBC_TUNABLES": f"glibc.malloc.mmap_threshold={32 << 20}:glibc.malloc.trim_threshold={64 << 20}"
    }
