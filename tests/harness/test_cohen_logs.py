"""Cohen-format logs: reading the authors' layout, writing ours, round trips and bad files."""

from __future__ import annotations

import numpy as np
import pytest

from evaluations.cohen_logs import read_certify_log, write_certify_log

# Verbatim layout of the authors' certify.py output (both time formats they used).
COHEN_CERTIFY = (
    "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    "0\t3\t-1\t0.0\t0\t0:00:13.736080\n"
    "20\t7\t7\t0.0734\t1\t15.4\n"
    "40\t1\t2\t0.824\t0\t1:02:03.5\n"
)
COHEN_PREDICT = (
    "idx\tlabel\tpredict\tcorrect\ttime\n0\t0\t0\t1\t0:00:01.737771\n100\t2\t5\t0\t0:00:00.158496\n"
)


def test_reads_cohen_certify_layout(tmp_path):
    path = tmp_path / "certify.tsv"
    path.write_text(COHEN_CERTIFY)
    log = read_certify_log(path)
    assert log["kind"] == "certify"
    np.testing.assert_array_equal(log["idx"], [0, 20, 40])
    np.testing.assert_array_equal(log["predict"], [-1, 7, 2])
    np.testing.assert_array_equal(log["correct"], [0, 1, 0])
    np.testing.assert_allclose(log["radius"], [0.0, 0.0734, 0.824])
    np.testing.assert_allclose(log["time"], [13.736080, 15.4, 3723.5])
    assert log["idx"].dtype == np.int64


def test_reads_predict_log_without_radius(tmp_path):
    path = tmp_path / "predict.tsv"
    path.write_text(COHEN_PREDICT)
    log = read_certify_log(path)
    assert log["kind"] == "predict" and "radius" not in log
    np.testing.assert_array_equal(log["correct"], [1, 0])


def test_round_trip_keeps_full_precision_and_extra_columns(tmp_path):
    radius = np.array([0.0, 0.24999999999999997, 1.2345678901234567])
    rows = {
        "idx": np.array([0, 1, 2]),
        "label": np.array([1, 2, 3]),
        "predict": np.array([-1, 2, 3]),
        "radius": radius,
        "correct": np.array([0, 1, 1]),
        "time": np.array([0.5, 0.25, 1.0]),
        "defence": np.array(["smoothing", "smoothing", "smoothing"]),
        "sigma": np.array([0.25, 0.25, 0.25]),
    }
    path = write_certify_log(tmp_path / "sub" / "log.tsv", rows)
    header = path.read_text().splitlines()[0]
    assert header == "idx\tlabel\tpredict\tradius\tcorrect\ttime\tdefence\tsigma"
    log = read_certify_log(path)
    # A radius just below 0.25 must stay below 0.25: rounding it up would certify r = 0.25 unearned.
    np.testing.assert_array_equal(log["radius"], radius)
    assert list(log["defence"]) == ["smoothing"] * 3
    np.testing.assert_array_equal(log["sigma"], [0.25] * 3)
    assert not list(path.parent.glob(".*.tmp")), "the temporary file of the atomic write was left behind"


def test_writes_predict_log_when_radius_absent(tmp_path):
    rows = {"idx": [0], "label": [1], "predict": [1], "correct": [1], "time": [0.1]}
    path = write_certify_log(tmp_path / "predict.tsv", rows)
    assert path.read_text().splitlines()[0] == "idx\tlabel\tpredict\tcorrect\ttime"
    assert read_certify_log(path)["kind"] == "predict"


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty log"),
        ("idx\tlabel\tradius\n0\t1\t0.5\n", "lacks"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\n", "line 2 has 5 fields"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\tcat\t0.5\t1\t0.1\n", "column 'predict'"),
    ],
)
def test_bad_logs_are_refused_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_certify_log(path)


def test_write_refuses_missing_columns_and_negative_radii(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        write_certify_log(tmp_path / "x.tsv", {"idx": [0], "label": [0]})
    rows = {"idx": [0], "label": [0], "predict": [0], "radius": [-1.0], "correct": [1], "time": [0.0]}
    with pytest.raises(ValueError, match="non-negative"):
        write_certify_log(tmp_path / "x.tsv", rows)
    assert not (tmp_path / "x.tsv").exists()
