"""DnCNN and MemNet: shapes, the identity start, configuration, and save/load with sigma."""

from __future__ import annotations

import pytest
import torch

from art_smoothing_plugin.denoisers import DnCNN, MemNet, load_denoiser, register_denoiser, save_denoiser

ARCHITECTURES = [
    pytest.param(lambda **kw: DnCNN(**kw), id="dncnn"),
    pytest.param(lambda **kw: MemNet(**kw), id="memnet"),
]


@pytest.mark.parametrize("make", ARCHITECTURES)
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 10)])
def test_output_has_the_input_shape(make, shape):
    denoiser = make(channels=shape[0]).eval()
    x = torch.rand(4, *shape)
    assert denoiser(x).shape == x.shape


@pytest.mark.parametrize("make", ARCHITECTURES)
def test_untrained_denoiser_is_the_identity(make):
    # The last layer starts at zero: training starts from "no denoising", not from a random corruption.
    denoiser = make().eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(denoiser(x), x)


@pytest.mark.parametrize("make", ARCHITECTURES)
def test_wrong_channel_count_is_refused(make):
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        make()(torch.rand(2, 3, 8, 8))


@pytest.mark.parametrize("make", ARCHITECTURES)
def test_seed_fixes_the_initial_weights_without_touching_global_state(make):
    state = torch.random.get_rng_state()
    first, second, other = make(seed=1), make(seed=1), make(seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    weights = [[p.detach() for p in m.parameters()] for m in (first, second, other)]
    assert all(torch.equal(a, b) for a, b in zip(weights[0], weights[1], strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], weights[2], strict=True))


def test_size_knobs_change_the_network():
    small, large = DnCNN(depth=3, width=8), DnCNN(depth=8, width=32)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(small) < count(large)
    assert count(MemNet(width=8, memory_blocks=1, recursions=1)) < count(MemNet(width=16, memory_blocks=3))
    assert DnCNN(depth=4, batch_norm=False).config() == {
        "channels": 1,
        "depth": 4,
        "width": 16,
        "batch_norm": False,
        "sigma": None,
    }


@pytest.mark.parametrize(
    "kwargs", [{"depth": 1}, {"width": 0}, {"channels": 0}, {"sigma": -0.5}, {"sigma": float("nan")}]
)
def test_bad_dncnn_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        DnCNN(**kwargs)


@pytest.mark.parametrize("kwargs", [{"memory_blocks": 0}, {"recursions": 0}, {"sigma": 0.0}])
def test_bad_memnet_arguments_are_refused(kwargs):
    with pytest.raises(ValueError):
        MemNet(**kwargs)


@pytest.mark.parametrize("make", ARCHITECTURES)
def test_save_and_load_round_trip_keeps_weights_and_sigma(make, tmp_path):
    torch.manual_seed(0)
    denoiser = make(sigma=0.25)
    with torch.no_grad():  # move away from the identity start so that the weights matter
        for parameter in denoiser.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    denoiser.eval()
    path = save_denoiser(denoiser, tmp_path / "sub" / "denoiser.pt")
    loaded = load_denoiser(path)
    assert type(loaded) is type(denoiser)
    assert loaded.sigma == 0.25
    assert loaded.config() == denoiser.config()
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8)
    assert not torch.equal(denoiser(x), x)
    assert torch.equal(loaded(x), denoiser(x))


def test_saving_without_sigma_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no sigma"):
        save_denoiser(DnCNN(), tmp_path / "d.pt")


def test_saving_an_unregistered_module_is_refused(tmp_path):
    with pytest.raises(ValueError, match="register"):
        save_denoiser(torch.nn.Identity(), tmp_path / "d.pt")


def test_loading_refuses_files_that_are_not_denoisers(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_denoiser(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a denoiser"):
        load_denoiser(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(2)}, plain)
    with pytest.raises(ValueError, match="format tag"):
        load_denoiser(plain)


def test_loading_never_unpickles_code(tmp_path):
    # A whole module pickled with torch.save holds code references; weights_only loading refuses it.
    path = tmp_path / "module.pt"
    torch.save(DnCNN(sigma=0.5), path)
    with pytest.raises(ValueError, match="not a denoiser"):
        load_denoiser(path)


def test_register_denoiser_requires_architecture_and_config():
    class NoName(torch.nn.Module):
        pass

    with pytest.raises(ValueError, match="architecture"):
        register_denoiser(NoName)
