"""Opening a model in each format under the isolation it needs: which loader runs where, files outside a
submission's folder refused, and load failures as one line naming the key and the file."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evaluations.submissions.formats import folder_digest, model_format, open_model
from evaluations.submissions.loading import LoadError

from .conftest import (
    TEST_LIMITS,
    honest_module,
    write_export_submission,
    write_onnx_submission,
    write_python_submission,
)

PROBE = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)


def _config(module="", weights="", **extra):
    return {"module": module, "weights": weights, "kwargs": {}, **extra}


def _open(config, folder, isolation):
    return open_model(
        config,
        (1, 8, 8),
        PROBE,
        folder=folder,
        isolation=isolation,
        limits=TEST_LIMITS,
        threads=1,
        outputs=10,
    )


def test_the_format_follows_the_weights_file():
    assert model_format("", "model.onnx") == "onnx"
    assert model_format("", "dir/model.PT2") == "torch_export"
    assert model_format("model.py:Model", "weights.safetensors") == "python"


@pytest.mark.parametrize("isolation", ["none", "sandbox"])
def test_an_onnx_model_loads_in_process_whatever_the_isolation(tmp_path, isolation):
    folder = write_onnx_submission(tmp_path / "alice")
    opened = _open(_config(weights="model.onnx"), folder, isolation)
    assert opened.format == "onnx" and opened.isolation == "none needed"
    x = torch.from_numpy(PROBE)
    with torch.no_grad():
        torch.testing.assert_close(opened.module(x), honest_module()(x), atol=1e-5, rtol=1e-5)


def test_code_formats_run_where_the_isolation_says(tmp_path, sandbox):
    bob = write_python_submission(tmp_path / "bob")
    carol = write_export_submission(tmp_path / "carol")
    local = _open(_config("model.py:Model", "weights.pt"), bob, "none")
    assert local.isolation == "none" and isinstance(local.module, torch.nn.Module)
    assert type(local.module).__name__ == "Model"  # imported here
    for folder, config in (
        (bob, _config("model.py:Model", "weights.pt")),
        (carol, _config(weights="model.pt2")),
    ):
        opened = _open(config, folder, "sandbox")
        try:
            assert opened.isolation == "sandbox" and "bubblewrap" in opened.description
            with torch.no_grad():
                x = torch.from_numpy(PROBE)
                assert torch.equal(opened.module(x), honest_module()(x))
        finally:
            opened.close()


def test_a_link_to_another_submissions_file_is_refused(tmp_path):
    write_onnx_submission(tmp_path / "alice")
    mallory = tmp_path / "mallory"
    mallory.mkdir()
    (mallory / "model.onnx").symlink_to(tmp_path / "alice" / "model.onnx")
    with pytest.raises(LoadError, match="a file inside the submission's folder"):
        _open(_config(weights="model.onnx"), mallory, "sandbox")
    with pytest.raises(LoadError, match="a file inside the submission's folder"):
        _open(_config(weights="../alice/model.onnx"), mallory, "sandbox")


def test_load_failures_name_the_key_and_the_file(tmp_path, sandbox):
    folder = tmp_path / "dave"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(LoadError) as error:
        _open(_config(weights="model.onnx"), folder, "sandbox")
    message = str(error.value)
    assert message.startswith("config key 'model.weights'") and str(folder / "model.onnx") in message
    assert "\n" not in message
    broken = write_python_submission(tmp_path / "erin", "raise ImportError('no such layer')\n")
    with pytest.raises(LoadError, match=r"config key 'model.module'.*ImportError: no such layer"):
        _open(_config("model.py:Model", "weights.pt"), broken, "sandbox")


def test_the_folder_digest_covers_every_file(tmp_path):
    folder = write_python_submission(tmp_path / "bob")
    before = folder_digest(folder)
    (folder / "helper.py").write_text("x = 1\n")
    assert folder_digest(folder) != before


def test_a_users_own_model_runs_in_a_worker_from_the_folder_of_its_files(tmp_path, sandbox, monkeypatch):
    """isolation.mode = "sandbox" outside instructor mode: no submission folder; the worker sees the folder
    holding the model's code (or .pt2 file), paths relative to the current directory as everywhere else."""
    own = write_python_submission(tmp_path / "project" / "model")
    monkeypatch.chdir(tmp_path / "project")
    opened = _open(_config("model/model.py:Model", "model/weights.pt"), None, "sandbox")
    try:
        assert opened.isolation == "sandbox"
        with torch.no_grad():
            x = torch.from_numpy(PROBE)
            assert torch.equal(opened.module(x), honest_module()(x))
    finally:
        opened.close()
    exported = write_export_submission(tmp_path / "exported")
    opened = _open(_config(weights=str(exported / "model.pt2")), None, "sandbox")
    opened.close()
    assert opened.isolation == "sandbox"
    with pytest.raises(LoadError, match=r"config key 'model.module': expected a file path"):
        _open(_config("some_package.model:Model", str(own / "weights.pt")), None, "sandbox")
    elsewhere = tmp_path / "elsewhere.pt"
    elsewhere.write_bytes((own / "weights.pt").read_bytes())
    with pytest.raises(LoadError, match=r"config key 'model.weights': expected a file inside"):
        _open(_config(str(own / "model.py") + ":Model", str(elsewhere)), None, "sandbox")
