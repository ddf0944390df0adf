"""Instructor mode against hostile submissions: two honest submissions (ONNX and Python) beside twelve
that each attack the evaluator in one way. Every attack is contained and reported on its own row with
its reason; nothing outside the attacker's sandbox changes; and the honest submissions' results are
byte-identical to a run without the attackers.

One run of each board (with and without the attackers) is shared by the tests of this module."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import socket
from pathlib import Path

import pytest
import torch

from evaluations.leaderboard import run_leaderboard

from .conftest import write_onnx_submission, write_python_submission
from .hostile import HOSTILE, hostile_source, hostile_weights

#: A tiny instructor's configuration, and tight worker limits so that attacks are stopped in seconds.
OVERRIDES = [
    "run.chunk_size=6",
    'defences.enabled=["undefended", "randomized_smoothing"]',
    "smoothing.sigmas=[0.5]",
    "smoothing.points=6",
    "smoothing.n0=10",
    "smoothing.n=60",
    "smoothing.predict_n=60",
    'attacks.enabled=["pgd", "smoothadv"]',
    "attacks.points=6",
    "attacks.linf_eps=[0.1]",
    "attacks.l2_eps=[0.5]",
    "attacks.steps=2",
    "attacks.noise_samples=2",
    "certificate_check.points=4",
    "certificate_check.steps=2",
    "report.radius_grid=[0, 0.25]",
    "report.plots=false",
    "isolation.memory_mb=2048",
    "isolation.processes=32",
    "isolation.disk_mb=16",
    "isolation.output_kb=256",
    "isolation.load_timeout=90",
    "isolation.call_timeout=8",
]

HONEST = ("alice", "bob")

#: Bad input: each one line naming its file, and the run goes on.
BAD_INPUT = {
    "corrupt_onnx": r"corrupt_onnx/model\.onnx: not an ONNX model \(it does not parse",
    "unsupported_op": r"unsupported_op/model\.onnx: uses unsupported operator\(s\) TopK",
    "wrong_input": r"wrong_input/model\.onnx: takes inputs of shape \(batch, 1, 28, 28\); the dataset.s are",
    "corrupt_pt2": r"config key 'model\.weights'.*corrupt_pt2/model\.pt2.*torch\.export\.load raised",
}


def _write_bad_input(root: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    def classifier(shape, extra=()):
        nodes = [
            helper.make_node("Flatten", ["x"], ["f"]),
            helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
        ]
        weight = numpy_helper.from_array(torch.zeros(10, 64).numpy(), "w")
        graph = helper.make_graph(
            [*nodes, *extra],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
            [weight, numpy_helper.from_array(torch.tensor([3]).numpy(), "k")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    for name in BAD_INPUT:
        (root / name).mkdir()
    write_onnx_submission(root / "corrupt_onnx")
    data = (root / "corrupt_onnx" / "model.onnx").read_bytes()
    (root / "corrupt_onnx" / "model.onnx").write_bytes(data[: len(data) // 2])
    unsupported = classifier(["batch", 1, 8, 8], [helper.make_node("TopK", ["y", "k"], ["v", "i"])])
    (root / "unsupported_op" / "model.onnx").write_bytes(unsupported.SerializeToString())
    (root / "wrong_input" / "model.onnx").write_bytes(classifier(["batch", 1, 28, 28]).SerializeToString())
    (root / "corrupt_pt2" / "model.pt2").write_bytes(b"PK\x03\x04 not really a zip archive")


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def boards(tmp_path_factory, sandbox_module):
    """``(honest-only run, run with the attackers, context)``: each a dict of reports and its folder."""
    base = tmp_path_factory.mktemp("hostile")
    honest_root, all_root = base / "honest", base / "homework"
    for root in (honest_root, all_root):
        write_onnx_submission(root / "alice", seed=1)
        write_python_submission(root / "bob", seed=2)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    out_all = base / "board"
    marker = base / "unpickled-marker"
    places = {
        "alice_model": all_root / "alice" / "model.onnx",
        "leaderboard": out_all / "leaderboard.md",
        "port": listener.getsockname()[1],
        "marker": marker,
    }
    for name in HOSTILE:
        folder = all_root / name
        folder.mkdir()
        (folder / "model.py").write_text(hostile_source(name, **places))
        torch.save(hostile_weights(name), folder / "weights.pt")
    _write_bad_input(all_root)
    cache = base / "cache"
    before = _digest(all_root / "alice")
    common = {"overrides": OVERRIDES, "cache_dir": cache, "progress": False, "log": lambda m: None}
    honest = run_leaderboard(honest_root, base / "honest-board", **common)
    attacked = run_leaderboard(all_root, out_all, **common)
    try:
        connection, _ = listener.accept()
        connection.close()
        connected = True
    except BlockingIOError:
        connected = False
    listener.close()
    context = {
        "alice_before": before,
        "alice_after": _digest(all_root / "alice"),
        "marker": marker,
        "connected": connected,
        "honest_out": base / "honest-board",
        "out": out_all,
    }
    yield honest, attacked, context
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def sandbox_module():
    from evaluations.submissions.sandbox import sandbox_support

    support = sandbox_support()
    if not support.available:
        pytest.skip(f"no sandbox here: {support.reason}")
    return support


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_attack_is_contained_and_reported_on_its_own_row(boards, name):
    _, attacked, context = boards
    reason = attacked[name]
    assert isinstance(reason, str), f"{name} was evaluated as if honest"
    assert re.search(HOSTILE[name][1], reason), reason
    table = json.loads((context["out"] / "leaderboard.json").read_text())
    row = next(r for r in table["rows"] if r[1] == name)
    assert row[0] is None and row[3] == "python" and row[4] == "sandbox"  # unranked, sandboxed


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_input_is_one_line_naming_the_file_and_the_run_goes_on(boards, name):
    _, attacked, context = boards
    reason = attacked[name]
    assert isinstance(reason, str) and "\n" not in reason
    assert re.search(BAD_INPUT[name], reason), reason
    assert all(isinstance(attacked[n], dict) for n in HONEST)


def test_the_honest_submissions_are_evaluated_and_ranked(boards):
    _, attacked, context = boards
    table = json.loads((context["out"] / "leaderboard.json").read_text())
    rows = {r[1]: dict(zip(table["header"], r, strict=True)) for r in table["rows"]}
    assert sorted(rows[n]["rank"] for n in HONEST) == [1, 2]
    assert rows["alice"]["format"] == "onnx" and rows["alice"]["isolation"].startswith("none needed")
    assert rows["bob"]["format"] == "python" and rows["bob"]["isolation"] == "sandbox"
    report = (context["out"] / "bob" / "report.md").read_text()
    assert "**Format:** Python code" in report and "**Isolation:** sandbox (bubblewrap" in report
    assert "**Format:** ONNX" in (context["out"] / "alice" / "report.md").read_text()


def _without_times(value):
    """Results without the wall-clock measurements (the only fields that differ between two runs)."""
    if isinstance(value, dict):
        return {
            k: _without_times(v)
            for k, v in value.items()
            if k not in ("seconds_per_point", "time", "seconds", "components")
        }
    return value


def _table_without_times(path: Path) -> bytes:
    """A per-example table's bytes with its wall-clock ``time`` column (if any) removed."""
    lines = path.read_bytes().split(b"\n")
    header = lines[0].split(b"\t")
    if b"time" not in header:
        return path.read_bytes()
    drop = header.index(b"time")
    return b"\n".join(b"\t".join(c for i, c in enumerate(line.split(b"\t")) if i != drop) for line in lines)


def test_the_honest_results_are_byte_identical_to_a_run_without_the_attackers(boards):
    honest, attacked, context = boards
    for name in HONEST:
        assert isinstance(honest[name], dict) and isinstance(attacked[name], dict)
        assert json.dumps(_without_times(honest[name]["defences"]), sort_keys=True) == json.dumps(
            _without_times(attacked[name]["defences"]), sort_keys=True
        )
        folder = context["honest_out"] / name
        tables = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.suffix in (".tsv", ".log"))
        assert len(tables) >= 3, "per-example tables to compare"
        for table in tables:
            # every byte but the wall-clock column of the certified points
            assert _table_without_times(folder / table) == _table_without_times(context["out"] / name / table)


def test_nothing_outside_the_sandboxes_changed(boards):
    _, _, context = boards
    assert context["alice_after"] == context["alice_before"]  # not overwritten, not added to
    assert not context["marker"].exists()  # the pickle sent down the pipe was never unpickled
    assert not context["connected"]  # no connection reached the evaluator's machine
    board = (context["out"] / "leaderboard.md").read_text()
    # one table row per submission: the forged rows of the error message did not become rows
    rows = [line for line in board.splitlines() if line.startswith("| ") and not line.startswith("| rank")]
    assert len(rows) == len(HOSTILE) + len(HONEST) + len(BAD_INPUT)
    assert "mallory" not in "".join(line.split("|")[2] for line in rows)
