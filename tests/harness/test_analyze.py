"""The analyze command: hand-computed tables from small logs we write ourselves, and (where the authors'
published logs are present beside the project) the exact published percentages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from evaluations.analyze import analyze_logs, format_percent, main
from evaluations.cohen_logs import write_certify_log

GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)


def _certify_rows(label, predict, radius):
    label, predict = np.asarray(label), np.asarray(predict)
    return {
        "idx": np.arange(len(label)),
        "label": label,
        "predict": predict,
        "radius": np.asarray(radius, dtype=float),
        "correct": (label == predict).astype(int),
        "time": np.full(len(label), 0.5),
    }


@pytest.fixture
def small_logs(tmp_path):
    folder = tmp_path / "logs"
    # Eight points: 6 correct with radii 0.1, 0.25 (exactly on the grid), 0.5, 0.74999, 1.2, 1.6;
    # one wrong label certified at 2.0 (never counts); one abstention.
    write_certify_log(
        folder / "data_certify_toy_noise_0.50_test_sigma_0.50",
        _certify_rows(
            label=[0, 1, 2, 3, 4, 5, 6, 7],
            predict=[0, 1, 2, 3, 4, 5, 0, -1],
            radius=[0.1, 0.25, 0.5, 0.74999, 1.2, 1.6, 2.0, 0.0],
        ),
    )
    # Three points, 2 correct: 2/3 = 66.666.. must print 66.7 and 1/3 = 33.3.
    write_certify_log(
        folder / "data_certify_toy_noise_0.25_test_sigma_0.25",
        _certify_rows(label=[0, 1, 2], predict=[0, 1, 9], radius=[0.3, 0.6, 0.9]),
    )
    write_certify_log(
        folder / "data_predict_toy_N_100",
        {
            "idx": [0, 1, 2, 3],
            "label": [0, 1, 2, 3],
            "predict": [0, -1, 2, 1],
            "correct": [1, 0, 1, 0],
            "time": [0] * 4,
        },
    )
    return folder


def test_format_percent_rounds_half_up_exactly():
    assert format_percent(2, 3) == "66.7"
    assert format_percent(1, 3) == "33.3"
    assert format_percent(1, 8) == "12.5"
    assert format_percent(1, 16) == "6.3"  # 6.25 rounds half up (float formatting would give 6.2)
    assert format_percent(0, 427) == "0.0" and format_percent(427, 427) == "100.0"


def test_hand_computed_tables(small_logs, tmp_path):
    result = analyze_logs([small_logs], tmp_path / "out", GRID)
    rows = {row["log"]: row for row in result["rows"]}
    toy = rows["data_certify_toy_noise_0.50_test_sigma_0.50"]
    # correct radii 0.1, 0.25, 0.5, 0.74999, 1.2, 1.6 over 8 rows; 0.25 counts at r = 0.25 (>=), 0.74999
    # does not count at r = 0.75.
    assert toy["counts"] == [6, 5, 4, 2, 2, 1]
    assert toy["certified_accuracy_pct"] == ["75.0", "62.5", "50.0", "25.0", "25.0", "12.5"]
    assert toy["acr"] == pytest.approx((0.1 + 0.25 + 0.5 + 0.74999 + 1.2 + 1.6) / 8)
    assert toy["abstained"] == 1 and toy["rows"] == 8
    thirds = rows["data_certify_toy_noise_0.25_test_sigma_0.25"]
    assert thirds["certified_accuracy_pct"] == ["66.7", "66.7", "33.3", "0.0", "0.0", "0.0"]
    predict = rows["data_predict_toy_N_100"]
    assert predict["kind"] == "predict" and predict["accuracy_pct"] == "50.0" and predict["abstained"] == 1
    markdown = Path(result["markdown"]).read_text()
    assert (
        "| `data_certify_toy_noise_0.50_test_sigma_0.50` | certify | 8 | "
        "75.0 | 62.5 | 50.0 | 25.0 | 25.0 | 12.5 |" in markdown
    )
    assert "| `data_predict_toy_N_100` | predict | 4 | 50.0 |  |  |  |  |  |  | 1 (25.0%) |" in markdown
    assert Path(result["plot"]).read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(Path(result["json"]).read_text())
    assert saved["radius_grid"] == list(GRID) and len(saved["rows"]) == 3


def test_cli_prints_the_table_and_refuses_bad_paths(small_logs, tmp_path, capsys):
    assert (
        main([str(small_logs / "data_predict_toy_N_100"), "--out", str(tmp_path / "o"), "--radii", "0"]) == 0
    )
    assert "| `data_predict_toy_N_100` | predict | 4 | 50.0 |" in capsys.readouterr().out
    assert not (tmp_path / "o" / "certified_accuracy.png").exists()  # predict logs only: no curves to draw
    assert main([str(tmp_path / "missing"), "--out", str(tmp_path / "o2")]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()


COHEN_LOGS = Path(
    os.environ.get("COHEN2019_LOGS", Path(__file__).resolve().parents[3] / "shared/reference/cohen2019")
)

# anchors.md: certified accuracy (%) recomputed from the authors' logs.
PUBLISHED = {
    "cifar10_resnet110_noise_0.12_test_sigma_0.12": "81.4 58.6 0.0",
    "cifar10_resnet110_noise_0.25_test_sigma_0.25": "74.8 60.0 42.8 26.6 0.0",
    "cifar10_resnet110_noise_0.50_test_sigma_0.50": "65.2 54.6 41.4 32.0 23.4 9.4",
    "cifar10_resnet110_noise_1.00_test_sigma_1.00": "47.2 39.2 34.0 27.8 21.6 14.0",
    "imagenet_resnet50_noise_0.50_test_sigma_0.50": "57.2 51.8 45.8 42.4 37.2",
}


@pytest.mark.skipif(not COHEN_LOGS.is_dir(), reason=f"the authors' logs are not at {COHEN_LOGS}")
def test_reproduces_the_published_tables_exactly(tmp_path):
    result = analyze_logs([COHEN_LOGS], tmp_path, GRID)
    rows = {row["log"]: row for row in result["rows"]}
    for name, expected in PUBLISHED.items():
        published = expected.split()
        assert rows[f"data_certify_{name}"]["certified_accuracy_pct"][: len(published)] == published, name
    assert rows["data_certify_imagenet_resnet50_noise_0.25_test_sigma_0.25"]["rows"] == 427
    assert {row["kind"] for row in result["rows"] if "predict" in row["log"]} == {"predict"}
