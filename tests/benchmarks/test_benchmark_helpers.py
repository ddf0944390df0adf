"""The statistics the benchmark scripts print: the noise-draw ceiling of bench_certify.py and the
pre-registered tests of diffusion_mnist.py (which test, which points, which level)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_certify():
    return load("bench_certify")


@pytest.fixture(scope="module")
def diffusion_mnist():
    return load("diffusion_mnist")


def test_noise_ceiling_is_forward_time_over_forward_plus_draw(bench_certify):
    # A draw 9x as fast as the forward pass adds a ninth of its time: 1 / (1 + 1/9) = 0.9.
    assert bench_certify.noise_ceiling([9.0]) == pytest.approx(0.9)
    # The median over repeats, not the mean: one slow outlier does not move it.
    assert bench_certify.noise_ceiling([9.0, 9.0, 0.5]) == pytest.approx(0.9)
    # A cheaper draw raises the ceiling towards 1, never past it.
    assert bench_certify.noise_ceiling([4.0]) < bench_certify.noise_ceiling([19.0]) < 1.0


def test_tuned_malloc_settings_are_whole_byte_counts(bench_certify):
    # glibc parses these as integers; a float or a unit suffix would be ignored silently.
    assert set(bench_certify.TUNED_MALLOC) == {"MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"}
    assert all(value.isdigit() for value in bench_certify.TUNED_MALLOC.values())


def record(correct_at_radius: list[bool]) -> dict:
    """A certification record in which the points marked True are certified correct at radius 1."""
    return {
        "labels": [1] * len(correct_at_radius),
        "radii": [1.0 if ok else 0.1 for ok in correct_at_radius],
        "correct": [True] * len(correct_at_radius),
    }


def test_pre_registered_tests_use_fresh_points_and_their_own_levels(diffusion_mnist):
    tests = diffusion_mnist.CONFIRMATORY_TESTS
    assert tests["confirm"] == {"offset": 100, "sigmas": [0.25, 0.5], "level": 0.01, "report": "confirm.md"}
    assert tests["replicate"]["offset"] == 200 and tests["replicate"]["sigmas"] == [0.25]
    assert tests["replicate"]["level"] == 0.005
    # The point ranges of the exploratory run (0-99) and of the two tests never overlap.
    ranges = [range(0, 100)] + [range(t["offset"], t["offset"] + 100) for t in tests.values()]
    assert all(set(a).isdisjoint(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :])


@pytest.mark.parametrize(
    ("wins", "level", "verdict"), [(8, 0.005, "significant"), (7, 0.005, "not significant")]
)
def test_confirmatory_verdict_follows_the_exact_sign_test(diffusion_mnist, wins, level, verdict):
    # sigma = 0.5, so the test radius is 2 sigma = 1.0; 'wins' points only the DDPM certifies, none against.
    # One-sided exact binomial p: 0.5^8 = 0.0039 < 0.005, 0.5^7 = 0.0078 > 0.005.
    points = 20
    with_ddpm = record([i < wins for i in range(points)])
    without = record([False] * points)
    args = SimpleNamespace(offset=200, points=points, n0=100, n=2000, alpha=0.001, seed=0)
    results = {("diffusion", 0.5): with_ddpm, ("none", 0.5): without}
    report = diffusion_mnist.confirmatory(results, [0.5], args, level)
    row = [line for line in report.splitlines() if line.startswith("| 0.5 |")][0]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[4:6] == [str(wins), "0"]
    assert float(cells[6]) == pytest.approx(0.5**wins, rel=0.01)
    assert cells[7] == verdict
    assert f"level {level:g}" in report


def test_confirm_and_replicate_are_exclusive(diffusion_mnist, capsys):
    with pytest.raises(SystemExit):
        diffusion_mnist.main(["--confirm", "--replicate"])
    assert "give one" in capsys.readouterr().err


def test_certified_mask_needs_a_correct_non_abstaining_label_at_the_radius(diffusion_mnist):
    rec = {"labels": [3, -1, 3, 3], "radii": [0.6, 0.9, 0.4, 0.7], "correct": [True, True, True, False]}
    assert diffusion_mnist.certified_mask(rec, 0.5).tolist() == [True, False, False, False]
    assert np.isclose(diffusion_mnist.certified_accuracy(rec, 0.0), 0.5)


def test_the_autoattack_table_puts_pgd_and_autoattack_side_by_side_on_the_same_points():
    table = load("autoattack_table")

    def row(attack, accuracy, weaker=False):
        return {
            "norm": "linf",
            "eps": 0.1,
            "attack": attack,
            "points": 25,
            "accuracy_attack": accuracy,
            "accuracy_autoattack": 0.4,
            "weaker": weaker,
        }

    audit = {
        "autoattack": [row("pgd", 0.52), row("art_pgd", 0.36, weaker=True)],
        "flags": [{"message": "m"}],
        "checks": [{}, {}, {}],
    }
    results = {"defences": {"madry": {"audit": audit}, "clean_only": {}}}
    lines = table.rows(results)
    assert "| madry | linf | 0.1 | 25 | 52 | 40 | 36 (art_pgd) | art_pgd |" in lines
    assert "| madry | 1 of 3 |" in lines
    assert not any(line.startswith("| clean_only") for line in lines)


@pytest.fixture(scope="module")
def isolation_floor():
    return load("bench_isolation_floor")


def test_the_floor_replay_pairs_each_gradient_with_the_latest_unanswered_forward_pass(isolation_floor):
    # An attack's backward pass through several kept graphs answers them last-first, as autograd does;
    # a gradient with nothing kept (the recorded resend of a dropped graph) is not replayed.
    calls = []

    def forward_keep(x):
        calls.append(("keep", len(x)))
        return len(calls)

    requests = [(2, 3), (2, 5), (3, 5), (3, 3), (3, 7), (1, 4)]
    isolation_floor.replay(
        requests,
        lambda x: calls.append(("forward", len(x))),
        forward_keep,
        lambda handle, cotangent, x: calls.append(("vjp", handle, len(x), cotangent.shape)),
    )
    assert calls == [
        ("keep", 3),
        ("keep", 5),
        ("vjp", 2, 5, (5, 10)),
        ("vjp", 1, 3, (3, 10)),
        ("forward", 4),
    ]


def test_the_floor_replays_through_a_sandboxed_worker_and_in_process(isolation_floor, tmp_path):
    from evaluations.submissions.sandbox import sandbox_support

    support = sandbox_support()
    if not support.available:
        pytest.skip(f"no sandbox here: {support.reason}")
    (tmp_path / "echo").mkdir()  # the sandbox's uid reads it (pytest's own folder is private)
    replays = isolation_floor.echo_replays([(1, 8), (2, 8), (3, 8), (1, 1000)], tmp_path / "echo")
    assert set(replays) == {"sandbox_s", "in_process_s"}
    assert all(seconds > 0 for seconds in replays.values())
