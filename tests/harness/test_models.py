"""Models: the on-disk cache keyed by configuration, and users' models (import, weights loaded without
running code, normalisation, and a clear error for each way a submission can be wrong)."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from evaluations.config import ConfigError, resolve_config
from evaluations.data import load_dataset
from evaluations.models import ModelStore, Normalized, load_state_dict_file, load_user_model

MODEL_CODE = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, width=8, classes=10):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.head = nn.Linear(width * 64, classes)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).flatten(1))
    """
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture()
def submission(tmp_path):
    (tmp_path / "net.py").write_text(MODEL_CODE)
    namespace: dict = {}
    exec(MODEL_CODE, namespace)
    torch.manual_seed(0)
    model = namespace["Net"]()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    return tmp_path, model


def _model_config(folder, **changes):
    config = resolve_config("quick", None, ['defences.enabled=["undefended"]'])["model"]
    config.update({"module": f"{folder / 'net.py'}:Net", "weights": str(folder / "weights.pt"), **changes})
    return config


def test_user_model_loads_and_matches_its_weights(submission, digits):
    folder, reference = submission
    model, key = load_user_model(_model_config(folder), digits)
    x = torch.as_tensor(digits.x_test[:5])
    torch.testing.assert_close(model(x), reference.eval()(x))
    same, key_again = load_user_model(_model_config(folder), digits)
    assert key == key_again and len(key) == 16
    normalised, key_normalised = load_user_model(_model_config(folder, mean=[0.5], std=[0.25]), digits)
    assert isinstance(normalised, Normalized) and key_normalised != key
    torch.testing.assert_close(normalised(x), reference((x - 0.5) / 0.25))


def test_user_model_errors_name_the_key(submission, digits, tmp_path_factory):
    folder, _ = submission
    with pytest.raises(ConfigError, match="'model.module'.*no attribute 'Missing'"):
        load_user_model(_model_config(folder, module=f"{folder / 'net.py'}:Missing"), digits)
    (folder / "broken.py").write_text("raise ImportError('needs a package that is not installed')\n")
    with pytest.raises(ConfigError, match="'model.module'.*ImportError: needs a package"):
        load_user_model(_model_config(folder, module=f"{folder / 'broken.py'}:Net"), digits)
    with pytest.raises(ConfigError, match="'model.module'.*that imports"):
        load_user_model(_model_config(folder, module="no_such_package_xyz.models:Net"), digits)
    with pytest.raises(ConfigError, match="'model.weights': expected weights that fit.*size mismatch"):
        load_user_model(_model_config(folder, kwargs={"width": 4}), digits)
    with pytest.raises(ConfigError, match="'model.kwargs'"):
        load_user_model(_model_config(folder, kwargs={"depth": 4}), digits)
    with pytest.raises(ConfigError, match="'model.nb_classes'.*outputs shape \\(4, 10\\)"):
        load_user_model(_model_config(folder, nb_classes=12), digits)
    with pytest.raises(ConfigError, match="'model.mean'"):
        load_user_model(_model_config(folder, mean=[0.5, 0.5, 0.5], std=[1.0, 1.0, 1.0]), digits)


def test_a_pickled_model_is_refused_with_a_conversion_hint(submission, digits):
    folder, _ = submission
    whole = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    torch.save(whole, folder / "whole_model.pt")  # pickles the classes: loading it would run code
    with pytest.raises(ConfigError) as error:
        load_state_dict_file(folder / "whole_model.pt")
    message = str(error.value)
    assert "'model.weights'" in message and "weights_only=True" in message
    assert "torch.save(model.state_dict(), 'weights.pt')" in message
    assert "torch.nn.modules.container.Sequential" in message  # what the file holds, read without running it
    (folder / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match="'model.weights'"):
        load_state_dict_file(folder / "garbage.pt")


def test_a_pickled_checkpoint_dict_gets_advice_that_fits_a_dict(submission, digits):
    import numpy as np

    folder, model = submission
    checkpoint = {"state_dict": model.state_dict(), "epoch": 3, "accuracy": np.float64(0.9)}
    torch.save(checkpoint, folder / "checkpoint.pt")  # the NumPy scalar needs code to unpickle
    with pytest.raises(ConfigError) as error:
        load_state_dict_file(folder / "checkpoint.pt")
    message = str(error.value)
    assert "holds a dict" in message and "numpy" in message
    assert "torch.save(checkpoint['state_dict'], 'weights.pt')" in message
    assert "model = torch.load" not in message  # the whole-model advice does not fit a dict


def test_a_state_dict_written_with_pickle_is_refused_quietly_with_advice(submission, recwarn):
    import pickle
    import warnings

    folder, model = submission
    with open(folder / "weights.pkl", "wb") as stream:
        pickle.dump(model.state_dict(), stream, protocol=4)
    warnings.simplefilter("always")
    with pytest.raises(ConfigError) as error:
        load_state_dict_file(folder / "weights.pkl")
    assert "written with pickle, not torch.save" in str(error.value)
    assert "torch.save(pickle.load(open('weights.pkl', 'rb')), 'weights.pt')" in str(error.value)
    # torch's "Detected pickle protocol 4" UserWarning does not leak into the output
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


def test_safetensors_and_nested_state_dicts(submission, digits):
    folder, model = submission
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, folder / "nested.pt")
    assert set(load_state_dict_file(folder / "nested.pt")) == set(model.state_dict())
    safetensors = pytest.importorskip("safetensors.torch")
    safetensors.save_file(model.state_dict(), str(folder / "weights.safetensors"))
    loaded, _ = load_user_model(_model_config(folder, weights=str(folder / "weights.safetensors")), digits)
    x = torch.as_tensor(digits.x_test[:3])
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_trained_models_are_cached_by_configuration(tmp_path, digits):
    config = resolve_config("quick", None, ["model.epochs=1"])
    store = ModelStore(config, digits, tmp_path, progress=False, log=lambda m: None)
    first, key = store.classifier("clean")
    assert [e["status"] for e in store.events] == ["trained"]
    assert (tmp_path / f"clean-{key}.pt").is_file() and (tmp_path / f"clean-{key}.json").is_file()
    again = ModelStore(config, digits, tmp_path, progress=False, log=lambda m: None)
    second, key_again = again.classifier("clean")
    assert key_again == key and [e["status"] for e in again.events] == ["cached"]
    x = torch.as_tensor(digits.x_test[:8])
    torch.testing.assert_close(first(x), second(x))
    accuracy = np.mean(second(torch.as_tensor(digits.x_test)).argmax(1).numpy() == digits.y_test)
    assert accuracy > 0.5  # one epoch already learns digits: the cached weights are the trained ones
    other = ModelStore(resolve_config("quick", None, ["model.epochs=2"]), digits, tmp_path, progress=False)
    assert other.training_spec("clean") != store.training_spec("clean")
    noisy = store.training_spec("gaussian", sigma=0.25)
    assert noisy["sigma"] == 0.25 and noisy["seed"] != store.training_spec("clean")["seed"]


def test_denoisers_trained_by_the_harness_do_not_depend_on_the_global_generator(tmp_path):
    from evaluations.data import load_dataset
    from evaluations.defences import BuildContext
    from evaluations.defences.smoothing import _denoiser
    from evaluations.models import ModelStore

    from .conftest import tiny_config

    config = tiny_config()
    dataset = load_dataset("digits")
    weights = []
    for run, global_seed in enumerate((1, 2)):
        torch.manual_seed(global_seed)  # whatever ran before in the process
        store = ModelStore(config, dataset, tmp_path / f"cache{run}", progress=False, log=lambda m: None)
        context = BuildContext(dataset, config, store, torch.device("cpu"), progress=False)
        denoiser, _ = _denoiser(context, 0.5, None, "")
        weights.append(torch.cat([p.detach().flatten() for p in denoiser.parameters()]))
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize(("device", "expected"), [("cpu", "cpu"), ("cuda", "gpu")])
def test_denoised_estimators_run_on_the_runs_device(monkeypatch, device, expected):
    """Found on an H200: the harness built denoised and diffusion smoothing without ``device_type``, so on
    a CUDA run their noise was drawn on the CPU for modules on the GPU (a RuntimeError at the first
    prediction). Checked here without a GPU: the estimator is asked for the run's device."""
    from art_smoothing_plugin.estimators import denoised_smoothing
    from evaluations.data import load_dataset
    from evaluations.defences import BuildContext
    from evaluations.defences.smoothing import _denoised_estimator

    from .conftest import tiny_config

    seen = {}
    monkeypatch.setattr(
        denoised_smoothing, "DenoisedSmoothingClassifier", lambda *args, **kwargs: seen.update(kwargs)
    )
    context = BuildContext(load_dataset("digits"), tiny_config(), None, torch.device(device), progress=False)
    context.models = type("Models", (), {"nb_classes": 10})()
    _denoised_estimator(context, torch.nn.Identity(), None, 0.25, 100)
    assert seen["device_type"] == expected
