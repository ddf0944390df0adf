"""Each attack on small data through the uniform interface: budgets, the [0, 1] box, reproducibility from
the seed, per-example budgets for SmoothAdv, and that an attack actually hurts (it can fail)."""

from __future__ import annotations

import numpy as np
import pytest

from evaluations.attacks import ATTACKS, AttackSettings, attack_class, build_attacks
from evaluations.pipeline import Pipeline

from .conftest import tiny_config


@pytest.fixture(scope="module")
def built(model_cache, tmp_path_factory):
    """The tiny run's defences, built from the session's model cache (no attack run)."""
    pipeline = Pipeline(
        tiny_config(),
        tmp_path_factory.mktemp("attacks"),
        cache_dir=model_cache,
        progress=False,
        log=lambda m: None,
    )
    pipeline.prepare()
    pipeline.build()
    return pipeline, {d.name: d for d in pipeline.defences}


def _distance(x, x_adv, norm):
    delta = (x_adv - x).reshape(len(x), -1)
    return np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)


def _attack(name, settings):
    """The attack with the tiny run's settings (AutoAttack at a few steps and queries, not 100 and 5,000)."""
    cls = attack_class(name)
    return cls.from_config(settings, tiny_config()) if hasattr(cls, "from_config") else cls(settings)


def test_registry_builds_every_attack_and_refuses_unknown_names():
    settings = AttackSettings(steps=2)
    assert {attack_class(name)(settings).name for name in ATTACKS} == set(ATTACKS)
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        attack_class("cw")
    config = tiny_config('attacks.enabled=["smoothadv", "pgd"]')
    assert [a.name for a in build_attacks(config)] == ["smoothadv", "pgd"]


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_stays_in_budget_and_is_reproducible(built, name):
    pipeline, defences = built
    attack = _attack(name, AttackSettings(steps=3, noise_samples=4))
    applicable = [d for d in defences.values() if attack.applies_to(d)]
    assert applicable, f"{name} applies to no defence of the tiny run"
    defence = applicable[0]
    x, y = pipeline.dataset.x_test[:8], pipeline.dataset.y_test[:8]
    for norm in attack.norms:
        eps = 0.2 if norm == "linf" else 1.0
        x_adv = attack.perturb(defence, x, y, norm=norm, eps=eps, seed=11)
        assert x_adv.shape == x.shape and x_adv.dtype == np.float32
        assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
        assert np.all(_distance(x, x_adv, norm) <= eps * (1 + 1e-4) + 1e-6)
        assert np.abs(x_adv - x).max() > 0  # it moved
        np.testing.assert_array_equal(x_adv, attack.perturb(defence, x, y, norm=norm, eps=eps, seed=11))
    with pytest.raises(ValueError, match="runs in norms"):
        attack.perturb(defence, x, y, norm="l1", eps=0.1, seed=0)


def test_pgd_breaks_the_undefended_model(built):
    pipeline, defences = built
    undefended = defences["undefended"]
    x, y = pipeline.dataset.x_test[:40], pipeline.dataset.y_test[:40]
    clean = np.mean(undefended.predict(x, seed=0) == y)
    attack = attack_class("pgd")(AttackSettings(steps=10))
    attacked = np.mean(
        undefended.predict(attack.perturb(undefended, x, y, norm="linf", eps=0.3, seed=0), seed=0) == y
    )
    assert clean >= 0.5 and attacked <= clean / 2


def test_smoothadv_takes_one_budget_per_example_and_attacks_the_smoothed_classifier(built):
    pipeline, defences = built
    smoothed = defences["rs_sigma0.25"]
    attack = attack_class("smoothadv")(AttackSettings(steps=8, noise_samples=8))
    x, y = pipeline.dataset.x_test[:40], pipeline.dataset.y_test[:40]
    budgets = np.where(np.arange(40) % 2 == 0, 0.0, 2.0)
    x_adv = attack.perturb(smoothed, x, y, norm="l2", eps=budgets, seed=5)
    distances = _distance(x, x_adv, "l2")
    np.testing.assert_array_equal(x_adv[budgets == 0], x[budgets == 0])  # zero budget: untouched
    assert np.all(distances <= budgets * (1 + 1e-4) + 1e-6) and distances[budgets > 0].min() > 0.5
    clean = smoothed.predict(x[budgets > 0], seed=1) == y[budgets > 0]
    attacked = smoothed.predict(x_adv[budgets > 0], seed=1) == y[budgets > 0]
    assert attacked.sum() < clean.sum()  # PREDICT with fresh noise is fooled on some points
    with pytest.raises(ValueError, match="scalar eps"):
        attack_class("pgd")(AttackSettings()).perturb(smoothed, x, y, norm="linf", eps=budgets, seed=0)


def test_applicability_matrix(built):
    _, defences = built
    settings = AttackSettings()
    matrix = {
        name: {d for d in defences if attack_class(name)(settings).applies_to(defences[d])}
        for name in ATTACKS
    }
    smoothed = {"rs_sigma0.25", "rs_sigma0.5", "denoised_dncnn_sigma0.5", "diffusion_sigma0.5"}
    assert matrix["smoothadv"] == smoothed and matrix["eotpgd"] == smoothed
    assert matrix["pgd"] == set(defences) and matrix["art_pgd"] == set(defences)
    assert matrix["bpda"] == matrix["detector_evading"] == {"feature_squeezing"}
