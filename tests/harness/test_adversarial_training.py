"""Madry et al. PGD adversarial training through ART's trainers, with epsilon in [0, 1] units: on digits,
a few epochs already make the model far more robust under PGD at the training epsilon, in L-inf and L2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from art.attacks.evasion import ProjectedGradientDescent
from art.estimators.classification import PyTorchClassifier
from scipy import stats
from torch import nn

from evaluations.adversarial_training import madry_adversarial_training
from evaluations.data import load_dataset
from evaluations.reproducibility import seeded
from evaluations.zoo import build_model

#: norm -> (training and test eps, training step); ART's PGD norm argument beside.
SETTINGS = {"inf": (0.2, 0.1, np.inf), 2: (1.0, 0.5, 2)}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def art_classifier(dataset, seed: int = 0) -> PyTorchClassifier:
    model = build_model("small_cnn", dataset.input_shape, dataset.nb_classes, seed=seed)
    return PyTorchClassifier(
        model,
        nn.CrossEntropyLoss(),
        dataset.input_shape,
        dataset.nb_classes,
        optimizer=torch.optim.Adam(model.parameters(), lr=0.003),
        clip_values=(0.0, 1.0),
    )


@pytest.fixture(scope="module")
def clean_classifier(digits):
    classifier = art_classifier(digits)
    model = classifier.model
    generator = torch.Generator().manual_seed(0)
    x, y = torch.as_tensor(digits.x_train), torch.as_tensor(digits.y_train)
    for _ in range(10):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), 64):
            index = order[start : start + 64]
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            classifier.optimizer.zero_grad()
            loss.backward()
            classifier.optimizer.step()
    model.eval()
    return classifier


def robust_correct(classifier, x, y, norm, eps, steps: int = 20, seed: int = 1) -> np.ndarray:
    """Per-example correctness under ART's PGD (random start) at ``eps``."""
    attack = ProjectedGradientDescent(
        classifier,
        norm=norm,
        eps=eps,
        eps_step=2.5 * eps / steps,
        max_iter=steps,
        batch_size=250,
        verbose=False,
    )
    with seeded(seed):  # ART's PGD draws its random start from NumPy's global generator
        x_adv = attack.generate(x, y=y)
    return classifier.predict(x_adv).argmax(1) == y


@pytest.mark.parametrize("norm", ["inf", 2], ids=["linf", "l2"])
def test_adversarial_training_makes_the_model_more_robust(digits, clean_classifier, norm):
    eps, eps_step, art_norm = SETTINGS[norm]
    trained = art_classifier(digits)
    returned = madry_adversarial_training(
        trained, digits.x_train, digits.y_train, norm=norm, eps=eps, eps_step=eps_step,
        max_iter=3, nb_epochs=3, batch_size=64, seed=0,
    )  # fmt: skip
    assert returned is trained and not trained.model.training
    x, y = digits.x_test[:250], digits.y_test[:250]
    robust = robust_correct(trained, x, y, art_norm, eps)
    baseline = robust_correct(clean_classifier, x, y, art_norm, eps)
    # Exact one-sided McNemar test on the paired outcomes: the adversarially trained model is correct
    # under attack where the clean one is not far more often than the reverse (p < 1e-6).
    only_robust, only_baseline = int(np.sum(robust & ~baseline)), int(np.sum(~robust & baseline))
    assert stats.binomtest(only_robust, only_robust + only_baseline, 0.5, "greater").pvalue < 1e-6
    assert robust.mean() >= baseline.mean() + 0.1, (robust.mean(), baseline.mean())


def test_same_seed_same_model(digits):
    weights = []
    for _ in range(2):
        classifier = art_classifier(digits, seed=5)
        madry_adversarial_training(
            classifier, digits.x_train[:64], digits.y_train[:64], norm="inf", eps=0.1, eps_step=0.05,
            max_iter=2, nb_epochs=1, batch_size=32, seed=7,
        )  # fmt: skip
        weights.append(torch.cat([p.detach().flatten() for p in classifier.model.parameters()]))
    assert torch.equal(weights[0], weights[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"norm": "inf", "eps": 8, "eps_step": 2}, "0-255"),
        ({"norm": "l1", "eps": 0.1, "eps_step": 0.01}, "norm"),
        ({"norm": 2, "eps": 0.0, "eps_step": 0.01}, "eps"),
        ({"norm": 2, "eps": 1.0, "eps_step": 0.1, "max_iter": 0}, "max_iter"),
        ({"norm": 2, "eps": 1.0, "eps_step": 0.1, "nb_epochs": 3, "warmup_epochs": 3}, "warmup_epochs"),
        ({"norm": 2, "eps": 1.0, "eps_step": 0.1, "warmup_epochs": -1}, "warmup_epochs"),
    ],
)
def test_bad_arguments_are_refused(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        madry_adversarial_training(art_classifier(digits), digits.x_train[:8], digits.y_train[:8], **kwargs)


def test_classifier_without_clip_values_is_refused(digits):
    model = build_model("small_cnn", digits.input_shape, digits.nb_classes)
    classifier = PyTorchClassifier(
        model, nn.CrossEntropyLoss(), digits.input_shape, 10, optimizer=torch.optim.Adam(model.parameters())
    )
    with pytest.raises(ValueError, match="clip_values"):
        madry_adversarial_training(classifier, digits.x_train[:8], digits.y_train[:8], eps=0.1, eps_step=0.05)


@pytest.mark.parametrize("norm", ["inf", 2])
def test_warmup_grows_the_budget_linearly_then_trains_at_eps(digits, norm, monkeypatch):
    from evaluations import adversarial_training

    stages = []
    real_stage = adversarial_training._train_stage

    def recording(classifier, x, y, norm_name, eps, eps_step, max_iter, nb_epochs, *rest):
        stages.append((nb_epochs, round(eps, 6), round(eps_step, 6)))
        real_stage(classifier, x, y, norm_name, eps, eps_step, max_iter, nb_epochs, *rest)

    monkeypatch.setattr(adversarial_training, "_train_stage", recording)
    madry_adversarial_training(
        art_classifier(digits), digits.x_train[:32], digits.y_train[:32], norm=norm, eps=0.3, eps_step=0.06,
        max_iter=1, nb_epochs=5, batch_size=32, warmup_epochs=2,
    )  # fmt: skip
    # epochs 1 and 2 at 1/3 and 2/3 of the budget, then the remaining 3 epochs at the full budget
    assert stages == [(1, 0.1, 0.02), (1, 0.2, 0.04), (3, 0.3, 0.06)]
