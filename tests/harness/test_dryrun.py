"""The dry run's plan prices what a run really does: passes at the batch sizes the stages use, the
detector-evading attack's extra passes and detector calls, denoisers to train (for a user's model too),
and fixed costs."""

from __future__ import annotations

from evaluations.dryrun import _Costs, dry_run, plan_work

from .conftest import tiny_config


def _rows(config):
    return {(r["stage"], r["defence"]): r for r in plan_work(config, 1297, 500)}


def test_passes_are_priced_at_the_batch_sizes_the_stages_use():
    config = tiny_config()  # chunk_size 6, m = 4, smoothing.batch_size 1000
    rows = _rows(config)
    assert rows[("attacks", "undefended")]["backward_batch"] == 6  # one chunk of points per gradient
    assert rows[("attacks", "rs_sigma0.25")]["backward_batch"] == 6 * 4  # times the m noise draws
    assert rows[("clean", "rs_sigma0.25")]["forward_batch"] == 1000  # PREDICT's sampling batches
    assert rows[("certify", "rs_sigma0.25")]["forward_batch"] == 1000
    assert rows[("clean", "undefended")]["forward_batch"] == 6


def test_the_detector_evading_attack_is_counted_with_its_views_and_checks():
    base = tiny_config('attacks.enabled=["pgd"]')
    evading = tiny_config('attacks.enabled=["pgd", "detector_evading"]')
    plain, adaptive = (
        _rows(base)[("attacks", "feature_squeezing")],
        _rows(evading)[("attacks", "feature_squeezing")],
    )
    points, steps, views = 12, 3, 1 + 2  # the tiny run: 12 points, 3 steps, two squeezers
    eps = 2  # one L-inf and one L2 epsilon
    assert adaptive["backward"] - plain["backward"] == eps * points * steps * 2 * views
    chunks = eps * 2  # 12 points in chunks of 6, per epsilon
    assert adaptive["detector_calls"] - plain["detector_calls"] == chunks * (1 + steps)


def test_a_user_models_run_plans_its_denoisers_and_fixed_costs(tmp_path):
    import torch

    from evaluations.zoo import build_model

    model = build_model("small_cnn", (1, 8, 8), 10)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "net.py").write_text(
        "from evaluations.zoo import build_model\n\n\n"
        "def Net():\n    return build_model('small_cnn', (1, 8, 8), 10)\n"
    )
    config = tiny_config(
        f'model.module="{tmp_path / "net.py"}:Net"',
        f'model.weights="{tmp_path / "weights.pt"}"',
        'defences.enabled=["undefended", "denoised_smoothing"]',
    )
    text = dry_run(config, cache_dir=tmp_path / "cache")
    assert "| setup | validation, imports, figures |" in text
    assert "| train | denoiser-dncnn-sigma0.5 (to train) |" in text  # a user's model still needs it
    assert not (tmp_path / "cache").exists()


def test_costs_are_measured_once_per_batch_size():
    import torch

    costs = _Costs(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), (1, 8, 8))
    first = costs(50)
    assert costs(50) == first and set(costs.measured) == {50}
    forward, backward = costs(1000)
    assert forward > 0 and backward > 0 and set(costs.measured) == {50, 1000}
