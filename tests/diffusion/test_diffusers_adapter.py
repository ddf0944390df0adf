"""The diffusers adapter, against diffusers' own scheduler arithmetic (skipped without diffusers)."""

from __future__ import annotations

import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from art_smoothing_plugin.denoisers.diffusers_adapter import (  # noqa: E402
    DiffusersUNetAdapter,
    denoiser_from_diffusers,
    load_diffusers_checkpoint,
)
from art_smoothing_plugin.denoisers.diffusion import select_timestep  # noqa: E402
from art_smoothing_plugin.sampling import make_generator  # noqa: E402


def tiny_unet(seed: int = 0, out_channels: int = 1) -> torch.nn.Module:
    torch.manual_seed(seed)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=out_channels,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    for parameter in unet.parameters():  # a random, non-trivial network (the last conv starts near zero)
        parameter.data.normal_(0, 0.2, generator=make_generator(seed))
    return unet.eval()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
def test_one_step_estimate_equals_diffusers_pred_original_sample(prediction_type, beta_schedule) -> None:
    unet = tiny_unet()
    scheduler = diffusers.DDPMScheduler(beta_schedule=beta_schedule, prediction_type=prediction_type)
    sigma = 0.25
    denoiser = denoiser_from_diffusers(unet, scheduler, sigma)
    assert denoiser.prediction_type == prediction_type
    assert denoiser.timestep == select_timestep(scheduler.alphas_cumprod, 2 * sigma)

    x = torch.rand(4, 1, 8, 8, generator=make_generator(2))
    noisy = x + sigma * torch.randn(x.shape, generator=make_generator(3))
    t = denoiser.timestep
    x_t = math.sqrt(float(scheduler.alphas_cumprod[t])) * (2 * noisy - 1)
    with torch.no_grad():
        model_output = unet(x_t, torch.full((4,), t)).sample
        reference = scheduler.step(model_output, t, x_t).pred_original_sample  # clipped to [-1, 1]
        ours = denoiser(noisy)
    torch.testing.assert_close(ours, (reference + 1) / 2, atol=1e-5, rtol=1e-5)


def test_scheduler_prediction_type_outside_the_three_is_refused() -> None:
    scheduler = diffusers.DDPMScheduler(prediction_type="flow_prediction")
    with pytest.raises(ValueError, match="prediction_type must be one of epsilon, v_prediction, sample"):
        denoiser_from_diffusers(tiny_unet(), scheduler, 0.25)


def test_unet_with_learned_variance_or_class_labels_is_refused() -> None:
    scheduler = diffusers.DDPMScheduler()
    with pytest.raises(ValueError, match="out_channels=2"):
        denoiser_from_diffusers(tiny_unet(out_channels=2), scheduler, 0.25)
    conditional = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        num_class_embeds=10,
    )
    with pytest.raises(ValueError, match="class-conditional"):
        DiffusersUNetAdapter(conditional)


def test_scheduler_without_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="scheduler must be a diffusers DDPM-style scheduler"):
        denoiser_from_diffusers(tiny_unet(), object(), 0.25)


def test_clip_sample_range_sets_the_model_data_range() -> None:
    scheduler = diffusers.DDPMScheduler(clip_sample_range=2.0)
    denoiser = denoiser_from_diffusers(tiny_unet(), scheduler, 0.25)
    assert denoiser.model_data_range == (-2.0, 2.0)
    assert denoiser.target_noise_level == pytest.approx(1.0)  # [0, 1] -> [-2, 2] multiplies noise by 4


@pytest.mark.parametrize("layout", ["pipeline", "flat"])
def test_checkpoint_folder_loads_to_the_same_denoiser(tmp_path, layout: str) -> None:
    unet = tiny_unet(seed=4)
    scheduler = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
    if layout == "pipeline":
        unet.save_pretrained(tmp_path / "unet")
        scheduler.save_pretrained(tmp_path / "scheduler")
    else:
        unet.save_pretrained(tmp_path)
        scheduler.save_pretrained(tmp_path)
    loaded = load_diffusers_checkpoint(tmp_path, 0.5, denoising_steps=2)
    direct = denoiser_from_diffusers(unet, scheduler, 0.5, denoising_steps=2)
    assert loaded.prediction_type == "v_prediction" and loaded.timestep == direct.timestep
    assert loaded.timesteps == direct.timesteps
    x = torch.rand(3, 1, 8, 8, generator=make_generator(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), direct(x))


def test_not_a_checkpoint_folder_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="is not a diffusers checkpoint"):
        load_diffusers_checkpoint(tmp_path, 0.25)
    with pytest.raises(ValueError, match="path must be a diffusers checkpoint folder"):
        load_diffusers_checkpoint(tmp_path / "missing", 0.25)
