"""AutoAttack from torchattacks' components: the threat model, seeding without touching any global
generator, the ensemble containing each single attack, the rand version's EOT (one noise draw per forward
pass, eot_iter passes per step), feature squeezing with and without BPDA, bad settings, and the checklist
flagging a model behind non-differentiable rounding but not plain adversarial training.

The components run at fewer steps and queries than the reference (100 steps, 5,000 queries) to keep the
tests short; the harness runs them at the reference settings."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from art.estimators.classification import PyTorchClassifier
from torch import nn

from evaluations import checklist
from evaluations.adversarial_training import madry_adversarial_training
from evaluations.attacks import AttackSettings, attack_class
from evaluations.attacks.autoattack import (
    AutoAttack,
    AutoAttackSettings,
    _Squeezed,
)
from evaluations.checklist import Outcome
from evaluations.config import eps_limit
from evaluations.data import load_dataset
from evaluations.defences import PlainDefence, SmoothedDefence
from evaluations.defences.feature_squeezing import squeezer, torch_squeeze
from evaluations.metrics import discordant_pairs_test
from evaluations.models import train_cross_entropy
from evaluations.reproducibility import seeded
from evaluations.zoo import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = AutoAttackSettings(steps=10, square_queries=300, extra_restarts=1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def clean_model(digits):
    model = build_model("small_cnn", digits.input_shape, digits.nb_classes, seed=1)
    return train_cross_entropy(
        model, digits.x_train, digits.y_train, epochs=10, batch_size=64, learning_rate=0.003, seed=1
    )


def _distance(x, x_adv, norm):
    delta = (x_adv - x).reshape(len(x), -1)
    return np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)


def _global_state():
    return (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())  # noqa: NPY002


def _same_state(first, second) -> bool:
    return torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]


def test_seeded_seeds_and_then_restores_every_global_generator():
    torch.manual_seed(3)
    np.random.seed(3)  # noqa: NPY002
    random.seed(3)
    before = _global_state()
    with seeded(7):
        inside = (torch.rand(2), np.random.rand(2), random.random())  # noqa: NPY002
        torch.manual_seed(123)  # what torchattacks' components do
    assert _same_state(before, _global_state())
    with seeded(7):
        again = (torch.rand(2), np.random.rand(2), random.random())  # noqa: NPY002
    assert torch.equal(inside[0], again[0]) and np.array_equal(inside[1], again[1]) and inside[2] == again[2]


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5)])
def test_standard_version_keeps_the_threat_model_and_the_global_generators(digits, clean_model, norm, eps):
    defence = PlainDefence("undefended", "undefended", None, clean_model, {}, CPU)
    attack = AutoAttack(AttackSettings(), FAST)
    x, y = digits.x_test[:40], digits.y_test[:40]
    before = _global_state()
    torch.set_num_threads(2)  # it runs on autoattack.threads (1) and restores the caller's setting
    output = attack.perturb_detailed(defence, x, y, norm=norm, eps=eps, seed=5)
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    assert _same_state(before, _global_state())  # the components' torch.manual_seed calls are undone
    assert (
        set(output.parts)
        == set(attack.parts(defence))
        == {"apgd-ce", "gradient", "square", "apgd-ce-restarts"}
    )
    assert attack.parts(defence)["square"]["threat"] == "black-box"
    assert set(output.seconds) == {"apgd-ce", "apgd-t", "fab-t", "square", "apgd-ce-restarts"}
    for adversarial in (output.adversarial, *output.parts.values()):
        assert adversarial.dtype == np.float32 and adversarial.shape == x.shape
        assert adversarial.min() >= 0.0 and adversarial.max() <= 1.0
        assert np.all(_distance(x, adversarial, norm) <= eps * (1 + 1e-5))
    # The ensemble breaks every point any of its parts breaks (the model is the judge, deterministic).
    robust = defence.predict(output.adversarial, seed=0) == y
    for part in output.parts.values():
        assert not np.any(robust & ~(defence.predict(part, seed=0) == y))
    assert robust.mean() < 0.75 * np.mean(defence.predict(x, seed=0) == y)
    # Reproducible from the seed; another seed gives other random starts.
    again = attack.perturb_detailed(defence, x, y, norm=norm, eps=eps, seed=5)
    np.testing.assert_array_equal(output.adversarial, again.adversarial)
    other = attack.perturb_detailed(defence, x, y, norm=norm, eps=eps, seed=6)
    assert not np.array_equal(output.parts["square"], other.parts["square"])
    # Not significantly weaker than torchattacks' PGD on the same points (exact McNemar at 0.01).
    pgd = attack_class("pgd" if norm == "linf" else "pgdl2")(AttackSettings(steps=10))
    pgd_robust = defence.predict(pgd.perturb(defence, x, y, norm=norm, eps=eps, seed=5), seed=0) == y
    (row,) = checklist.compare_with_single_attacks(
        Outcome("autoattack", norm, eps, robust), [Outcome("pgd", norm, eps, pgd_robust)]
    )
    assert not row["weaker"], row


class _Round(nn.Module):
    """1-bit rounding, as written: its gradient is zero almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)


def _outcomes(defence, output, x, y, eps) -> list[Outcome]:
    def robust(inputs):
        return defence.predict(inputs, seed=0) == y

    parts = output.parts
    return [
        Outcome("apgd-ce", "linf", eps, robust(parts["apgd-ce"])),
        Outcome("gradient", "linf", eps, robust(parts["gradient"])),
        Outcome("square", "linf", eps, robust(parts["square"]), threat="black-box", gradient=False),
        Outcome("apgd-ce-restarts", "linf", eps, robust(parts["apgd-ce-restarts"]), more_effort_of="apgd-ce"),
    ]


def test_checklist_flags_a_model_behind_rounding_and_not_adversarial_training(digits, clean_model):
    trained = build_model("small_cnn", digits.input_shape, digits.nb_classes, seed=0)
    classifier = PyTorchClassifier(
        trained,
        nn.CrossEntropyLoss(),
        digits.input_shape,
        digits.nb_classes,
        optimizer=torch.optim.Adam(trained.parameters(), lr=0.003),
        clip_values=(0.0, 1.0),
    )
    madry_adversarial_training(
        classifier, digits.x_train, digits.y_train, eps=0.2, eps_step=0.1, max_iter=3, nb_epochs=3,
        batch_size=64, seed=0,
    )  # fmt: skip
    models = {"rounded": nn.Sequential(_Round(), clean_model).eval(), "madry": trained.eval()}
    attack = AutoAttack(AttackSettings(), AutoAttackSettings(steps=20, square_queries=1000, extra_restarts=1))
    x, y = digits.x_test[:100], digits.y_test[:100]
    flagged = {}
    for name, model in models.items():
        defence = PlainDefence(name, name, None, model, {}, CPU)
        output = attack.perturb_detailed(defence, x, y, norm="linf", eps=0.2, seed=1)
        unbounded = attack.perturb_detailed(defence, x, y, norm="linf", eps=1.0, seed=1)
        sweep = checklist.eps_sweep(
            "autoattack",
            "linf",
            [0.2, 1.0],
            [
                defence.predict(output.adversarial, seed=0) == y,
                defence.predict(unbounded.adversarial, seed=0) == y,
            ],
            unbounded_eps=1.0,
        )
        checks = checklist.gradient_masking_checklist(
            _outcomes(defence, output, x, y, 0.2), deterministic=True, sweep=[sweep]
        )
        assert {c["check"] for c in checks} == {
            "eps_sweep", "black_box_beats_white_box", "more_effort", "square_beats_gradient"
        }  # fmt: skip
        flagged[name] = checklist.flags(checks)
    # Rounding hides the gradient: Square breaks far more points than every gradient attack together.
    kinds = {c["check"] for c in flagged["rounded"]}
    assert "square_beats_gradient" in kinds and "black_box_beats_white_box" in kinds
    square = next(c for c in flagged["rounded"] if c["check"] == "square_beats_gradient")
    assert square["p_value"] < 1e-6 and square["message"].startswith("possible gradient masking")
    assert flagged["madry"] == []


def test_rand_version_averages_fresh_noise_over_eot_passes_and_is_judged_by_predict(digits, clean_model):
    from art_smoothing_plugin import RandomizedSmoothingClassifier

    estimator = RandomizedSmoothingClassifier(
        clean_model, input_shape=digits.input_shape, nb_classes=digits.nb_classes, clip_values=(0.0, 1.0),
        scale=0.25, sample_size=8, seed=0,
    )  # fmt: skip
    defence = SmoothedDefence(
        "rs", "randomized_smoothing", estimator, clean_model, {}, sigma=0.25, n0=20, n=100, alpha=0.001,
        predict_n=200, predict_alpha=0.01, batch_size=2000, points=30,
    )  # fmt: skip
    requested = []
    differentiable = defence.differentiable

    def spy(**kwargs):
        requested.append(kwargs)
        return differentiable(**kwargs)

    defence.differentiable = spy
    settings = AutoAttackSettings(steps=6, eot_iter=4, extra_restarts=0)
    attack = AutoAttack(AttackSettings(noise_samples=8), settings)
    assert attack.version_for(defence) == "rand"
    x, y = digits.x_test[:30], digits.y_test[:30]
    before = _global_state()
    forwards = []
    output = attack.perturb_detailed(defence, x, y, norm="l2", eps=1.0, seed=2)
    assert _same_state(before, _global_state())
    # The attacked module draws one fresh noise per input on every forward pass; candidates are chosen
    # on m = 8 fixed draws of their own seed.
    assert requested[0]["noise_samples"] == 1 and requested[0]["fixed_noise"] is False
    assert requested[1]["noise_samples"] == 8 and requested[1].get("fixed_noise", True)
    assert requested[0]["noise_seed"] != requested[1]["noise_seed"]
    assert set(output.seconds) == {"apgd-ce", "apgd-dlr"} and set(output.parts) == {"apgd-ce"}
    assert np.all(_distance(x, output.adversarial, "l2") <= 1.0 + 1e-5)
    assert output.adversarial.min() >= 0 and output.adversarial.max() <= 1
    # EOT: one forward pass for the starting accuracy, then eot_iter passes at the start and at each step.
    module = differentiable(noise_samples=1, noise_seed=2, fixed_noise=False)
    handle = module.register_forward_hook(lambda _, inputs, __: forwards.append(len(inputs[0])))
    defence.differentiable = lambda **kwargs: (
        module if kwargs["noise_samples"] == 1 else differentiable(**kwargs)
    )
    attack.perturb_detailed(defence, x, y, norm="l2", eps=1.0, seed=2)
    handle.remove()
    # APGD-CE, then APGD-DLR on the points still standing: each one pass for the starting accuracy and
    # one per step (and at the start) over eot_iter copies of its points (evaluations.attacks.eot).
    passes = 1 + (settings.steps + 1)
    assert len(forwards) in (passes, 2 * passes), len(forwards)
    assert forwards[0] == len(x) and set(forwards[1:passes]) == {settings.eot_iter * len(x)}, forwards
    # Judged by PREDICT with fresh noise: the attack lowers accuracy (exact McNemar against clean, p < 0.01).
    clean = defence.predict(x, seed=9) == y
    attacked = defence.predict(output.adversarial, seed=10) == y
    _, _, p_value = discordant_pairs_test(clean, attacked)
    assert p_value < 0.01, (clean.mean(), attacked.mean())


def test_feature_squeezing_module_with_and_without_bpda(digits, clean_model):
    squeeze = torch_squeeze(squeezer("bit_depth", bit_depth=1))
    x = torch.as_tensor(digits.x_test[:16]).requires_grad_(True)
    y = torch.as_tensor(digits.y_test[:16])
    exact = clean_model(squeeze(x.detach()))
    gradients = {}
    for gradient in ("bpda", "none"):
        module = _Squeezed(clean_model, squeeze, gradient)
        logits = module(x)
        torch.testing.assert_close(logits, exact)  # the forward pass is the whole pipeline either way
        (gradients[gradient],) = torch.autograd.grad(nn.functional.cross_entropy(logits, y), x)
    assert gradients["none"].abs().max() == 0 and gradients["bpda"].abs().max() > 0


def test_bad_settings_are_refused_naming_the_choices():
    with pytest.raises(
        ValueError, match=r"autoattack.version must be one of 'auto', 'standard', 'rand'; got 'plus'"
    ):
        AutoAttackSettings(version="plus")
    with pytest.raises(ValueError, match=r"autoattack.squeezer_gradient must be one of 'bpda', 'none'"):
        AutoAttackSettings(squeezer_gradient="identity")
    with pytest.raises(ValueError, match="autoattack.steps must be an integer >= 1"):
        AutoAttackSettings(steps=0)
    with pytest.raises(ValueError, match=r"autoattack.norms must be one of 'linf', 'l2'; got 'l1'"):
        AutoAttackSettings(norms=["linf", "l1"])
    assert AutoAttack(AttackSettings(), AutoAttackSettings(norms=["l2"])).norms == ("l2",)
    with pytest.raises(ValueError, match="runs in norms"):
        AutoAttack(AttackSettings()).check("l1", 0.1)
    with pytest.raises(ValueError, match=r"norm must be one of 'linf', 'l2'; got 'l1'"):
        eps_limit("l1", 64)
    assert (eps_limit("linf", 64), eps_limit("l2", 64), eps_limit("l2", 784)) == (1.0, 8.0, 28.0)


def test_probe_prices_every_component_of_a_unit(clean_model):
    from evaluations.attacks.autoattack import probe_seconds

    x = torch.rand(8, 1, 8, 8)
    standard = probe_seconds(clean_model, x, norm="linf", version="standard", settings=FAST)
    assert set(standard) == {"apgd-ce", "apgd-t", "fab-t", "square", "apgd-ce-restarts"}
    assert all(seconds > 0 for seconds in standard.values())
    rand = probe_seconds(
        clean_model, x, norm="l2", version="rand", settings=AutoAttackSettings(extra_restarts=0)
    )
    assert set(rand) == {"apgd-ce", "apgd-dlr"} and all(seconds > 0 for seconds in rand.values())
    with pytest.raises(ValueError, match="version must be one of 'standard', 'rand'"):
        probe_seconds(clean_model, x, norm="l2", version="auto")
