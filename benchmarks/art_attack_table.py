"""Run ART's evasion attacks against both estimators and say, for each, whether it runs or is refused and
what it attacks: the table of docs/art-surface.md.

    python benchmarks/art_attack_table.py                 # prints the Markdown table (about 2 minutes)
    python benchmarks/art_attack_table.py --out table.md  # also writes it
    python benchmarks/art_attack_table.py --only DeepFool HopSkipJump

Set-up: the digits MLP (64-64-10) trained with Gaussian noise at sigma = 0.25 by
``RandomizedSmoothingClassifier.fit``; the same network as the classifier of a
``DenoisedSmoothingClassifier`` with a (fresh, identity) DnCNN, and as a query-only callable (labels
only). Each attack runs once, with small budgets, on the first 8 test digits. What it attacks is read off
what it called: the estimator's own methods (each wrapped to count its calls), or, where the attack
replaced the estimator by one it built from ``estimator.model`` (the base model), that. "PREDICT changed"
is how many of the 8 digits get another PREDICT label (n = 100, alpha = 0.001, fresh noise) after the
attack: a sign of life, not a robustness figure.
"""

from __future__ import annotations

import argparse
import logging
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

#: The estimator methods an attack may call, counted per run.
COUNTED = (
    "predict",
    "loss_gradient",
    "class_gradient",
    "compute_loss",
    "get_activations",
    "_predict_framework",
)
GRADIENT_METHODS = ("loss_gradient", "class_gradient", "compute_loss", "_predict_framework")
POINTS = 8
KINDS = ("randomized", "denoised", "query-only")


@dataclass
class Row:
    family: str
    attack: str
    kind: str
    status: str  # "runs" or "refused: ..."
    attacks: str
    calls: str
    changed: str
    seconds: float


def _attacks() -> dict[str, tuple[str, Callable]]:
    """name -> (family, factory(estimator) -> attack), small budgets throughout."""
    from art.attacks import evasion as E

    l2 = {"norm": 2, "eps": 1.0, "eps_step": 0.25, "max_iter": 5, "verbose": False}
    return {
        "FastGradientMethod": ("gradient", lambda e: E.FastGradientMethod(e, norm=2, eps=1.0)),
        "BasicIterativeMethod": (
            "gradient",
            lambda e: E.BasicIterativeMethod(e, eps=0.15, eps_step=0.05, max_iter=5, verbose=False),
        ),
        "ProjectedGradientDescent (PyTorch)": ("gradient", lambda e: E.ProjectedGradientDescent(e, **l2)),
        "ProjectedGradientDescentNumpy": ("gradient", lambda e: E.ProjectedGradientDescentNumpy(e, **l2)),
        "MomentumIterativeMethod": ("gradient", lambda e: E.MomentumIterativeMethod(e, **l2)),
        "AutoProjectedGradientDescent (loss_type=None)": (
            "gradient",
            lambda e: E.AutoProjectedGradientDescent(e, nb_random_init=1, loss_type=None, **l2),
        ),
        "AutoProjectedGradientDescent (cross_entropy)": (
            "gradient",
            lambda e: E.AutoProjectedGradientDescent(e, nb_random_init=1, loss_type="cross_entropy", **l2),
        ),
        "AutoConjugateGradient": (
            "gradient",
            lambda e: E.AutoConjugateGradient(e, nb_random_init=1, loss_type="cross_entropy", **l2),
        ),
        "RescalingAutoConjugateGradient": (
            "gradient",
            lambda e: E.RescalingAutoConjugateGradient(e, nb_random_init=1, loss_type="cross_entropy", **l2),
        ),
        "AutoAttack": ("gradient", lambda e: E.AutoAttack(e, norm=2, eps=1.0, eps_step=0.25, batch_size=8)),
        "AutoProjectedGradientDescent on smoothed_module()": (
            "gradient",
            lambda e: E.AutoProjectedGradientDescent(
                _soft_classifier(e), nb_random_init=1, loss_type="cross_entropy", **l2
            ),
        ),
        "CarliniL2Method": (
            "gradient",
            lambda e: E.CarliniL2Method(e, max_iter=10, binary_search_steps=2, verbose=False),
        ),
        "CarliniLInfMethod": ("gradient", lambda e: E.CarliniLInfMethod(e, max_iter=10, verbose=False)),
        "CarliniL0Method": (
            "gradient",
            lambda e: E.CarliniL0Method(e, max_iter=10, binary_search_steps=2, verbose=False),
        ),
        "DeepFool": ("gradient", lambda e: E.DeepFool(e, max_iter=10, verbose=False)),
        "NewtonFool": ("gradient", lambda e: E.NewtonFool(e, max_iter=10, verbose=False)),
        "ElasticNet": (
            "gradient",
            lambda e: E.ElasticNet(e, max_iter=10, binary_search_steps=2, verbose=False),
        ),
        "SaliencyMapMethod": (
            "gradient",
            lambda e: E.SaliencyMapMethod(e, theta=0.2, gamma=0.2, verbose=False),
        ),
        "UniversalPerturbation": (
            "gradient",
            lambda e: E.UniversalPerturbation(e, attacker="fgsm", max_iter=2, eps=1.0, norm=2, verbose=False),
        ),
        "TargetedUniversalPerturbation": (
            "gradient",
            lambda e: E.TargetedUniversalPerturbation(e, attacker="fgsm", max_iter=2, eps=1.0, norm=2),
        ),
        "VirtualAdversarialMethod": (
            "gradient",
            lambda e: E.VirtualAdversarialMethod(e, max_iter=2, eps=0.5, verbose=False),
        ),
        "BrendelBethgeAttack": (
            "gradient",
            lambda e: _brendel_bethge()(e, norm=2, steps=5, batch_size=8),
        ),
        "Wasserstein": (
            "gradient",
            lambda e: E.Wasserstein(e, max_iter=2, kernel_size=3, regularization=100, verbose=False),
        ),
        "ShadowAttack": ("gradient", lambda e: E.ShadowAttack(e, nb_steps=5, batch_size=8, verbose=False)),
        "FeatureAdversariesPyTorch": (
            "gradient",
            lambda e: E.FeatureAdversariesPyTorch(e, delta=0.1, layer=1, max_iter=2, step_size=0.01),
        ),
        "FeatureAdversariesNumpy": ("gradient", lambda e: E.FeatureAdversariesNumpy(e, delta=0.1, layer=1)),
        "AdversarialPatchPyTorch": ("gradient", lambda e: E.AdversarialPatchPyTorch(e, max_iter=2)),
        "GRAPHITEWhiteboxPyTorch": ("gradient", lambda e: E.GRAPHITEWhiteboxPyTorch(e, (8, 8), num_xforms=2)),
        "ZooAttack": ("score", lambda e: E.ZooAttack(e, max_iter=5, nb_parallel=4, binary_search_steps=1)),
        "SquareAttack": (
            "score",
            lambda e: E.SquareAttack(e, norm=np.inf, eps=0.3, max_iter=20, nb_restarts=1, verbose=False),
        ),
        "SimBA": ("score", lambda e: E.SimBA(e, attack="px", max_iter=20, epsilon=0.2, verbose=False)),
        "PixelAttack": ("score", lambda e: E.PixelAttack(e, th=4, max_iter=5, verbose=False)),
        "ThresholdAttack": ("score", lambda e: E.ThresholdAttack(e, th=0.3, max_iter=5, verbose=False)),
        "SpatialTransformation": (
            "score",
            lambda e: E.SpatialTransformation(
                e, max_translation=20, num_translations=2, max_rotation=10, num_rotations=2
            ),
        ),
        "HopSkipJump": (
            "decision",
            lambda e: E.HopSkipJump(e, max_iter=2, max_eval=50, init_eval=10, verbose=False),
        ),
        "BoundaryAttack": (
            "decision",
            lambda e: E.BoundaryAttack(e, targeted=False, max_iter=5, num_trial=5, verbose=False),
        ),
        "GeoDA": ("decision", lambda e: E.GeoDA(e, max_iter=500, sub_dim=4, verbose=False)),
        "SignOPTAttack": (
            "decision",
            lambda e: E.SignOPTAttack(e, targeted=False, max_iter=2, query_limit=400, verbose=False),
        ),
        "GRAPHITEBlackbox": (
            "decision",
            lambda e: E.GRAPHITEBlackbox(e, (8, 8), (8, 8), num_xforms_mask=2, num_xforms_boost=2),
        ),
    }


def _soft_classifier(estimator):
    """docs/art-surface.md's route for attacks that need logits: the smoothed soft classifier as a plain
    ART PyTorchClassifier (its predict returns the soft classifier's log-probabilities)."""
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        estimator.smoothed_module(num_samples=32),
        torch.nn.NLLLoss(),
        input_shape=estimator.input_shape,
        nb_classes=estimator.nb_classes,
        clip_values=estimator.clip_values,
        device_type="cpu",
    )


def _brendel_bethge():
    from art.attacks.evasion.brendel_bethge import BrendelBethgeAttack

    return BrendelBethgeAttack


def build_estimators(seed: int = 0):
    """The three estimators around one digits MLP trained with noise, and the test digits."""
    from art_smoothing_plugin import DenoisedSmoothingClassifier, DnCNN, RandomizedSmoothingClassifier
    from evaluations.data import load_dataset

    data = load_dataset("digits")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)
        )
    options = {"scale": 0.25, "sample_size": 32, "seed": seed, "clip_values": (0.0, 1.0)}
    randomized = RandomizedSmoothingClassifier(
        model,
        torch.nn.CrossEntropyLoss(),
        (1, 8, 8),
        10,
        optimizer=torch.optim.Adam(model.parameters(), lr=1e-2),
        device_type="cpu",
        **options,
    )
    randomized.fit(data.x_train, data.y_train, batch_size=64, nb_epochs=15)

    def labels_only(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(batch)).argmax(dim=1).numpy()

    estimators = {
        "randomized": lambda: randomized,
        "denoised": lambda: DenoisedSmoothingClassifier(
            model, DnCNN(seed=seed), input_shape=(1, 8, 8), nb_classes=10, **options
        ),
        "query-only": lambda: DenoisedSmoothingClassifier(
            labels_only, None, input_shape=(1, 8, 8), nb_classes=10, **options
        ),
    }
    return estimators, data.x_test[:POINTS], data.y_test[:POINTS]


def _instrument(estimator) -> dict[str, int]:
    counts = dict.fromkeys(COUNTED, 0)
    for name in COUNTED:
        method = getattr(estimator, name, None)
        if method is None:
            continue

        def counted(*args, _name=name, _method=method, **kwargs):
            counts[_name] += 1
            return _method(*args, **kwargs)

        setattr(estimator, name, counted)
    return counts


def _uninstrument(estimator) -> None:
    for name in COUNTED:
        estimator.__dict__.pop(name, None)


def _short(error: BaseException) -> str:
    """Who refused, and the start of the message: us (raised in art_smoothing_plugin) or ART."""
    text = " ".join(str(error).split()).replace("|", "/")
    if isinstance(error, ModuleNotFoundError):
        return f"not run: ART needs `{error.name}` (not installed here)"
    origin = traceback.extract_tb(error.__traceback__)[-1].filename
    who = "by us" if "art_smoothing_plugin" in origin else "by ART"
    first = text.split(". ")[0].split("; ")[0] or "(no message)"
    return f"refused {who}: {type(error).__name__}: {first[:90]}{'…' if len(first) > 90 else ''}"


def run_attack(name: str, kind: str, estimators, x: np.ndarray, y: np.ndarray) -> Row:
    family, factory = _attacks()[name]
    estimator = estimators[kind]()
    estimator.seed = 0  # every row from the same noise stream, whichever rows run before it
    before = estimator.predict_labels(x, n=100, alpha=0.001, seed=11)
    counts = _instrument(estimator)
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attack = factory(estimator)
            if name.startswith("FeatureAdversaries"):  # y is a guide image whose features x should take
                x_adv = attack.generate(x.copy(), y=x[::-1].copy())
            elif name == "GRAPHITEBlackbox":  # targeted: an image of each target class
                x_adv = attack.generate(
                    x.copy(), y=np.eye(10, dtype=np.float32)[y[::-1]], x_tar=x[::-1].copy()
                )
            elif name == "ShadowAttack":  # one input at a time
                x_adv = np.concatenate([attack.generate(x[i : i + 1].copy()) for i in range(len(x))])
            else:
                x_adv = attack.generate(x.copy(), y=np.eye(10, dtype=np.float32)[y])
    except Exception as error:  # noqa: BLE001 - the table records what the attack raised
        _uninstrument(estimator)
        return Row(family, name, kind, _short(error), "—", "", "", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    _uninstrument(estimator)
    inner = getattr(attack, "estimator", estimator)
    called = {k: v for k, v in counts.items() if v}
    calls = ", ".join(f"{k} ×{v}" for k, v in called.items())
    if name.endswith("smoothed_module()"):
        what = "g: the smoothed soft classifier as a module (`smoothed_module()` in a PyTorchClassifier)"
    elif inner is not estimator:
        what = "**f**: builds its own classifier from `estimator.model` (the base model)"
    elif any(k in called for k in GRADIENT_METHODS):
        what = "g: smoothed soft classifier's gradients / losses, g's predict"
    elif called:
        what = "g: smoothed predict only"
    else:
        what = "nothing of ours called"
    after = estimator.predict_labels(
        np.asarray(x_adv, dtype=np.float32).clip(0, 1), n=100, alpha=0.001, seed=12
    )
    changed = f"{int(np.sum(after != before))}/{len(x)}"
    return Row(family, name, kind, "runs", what, calls, changed, seconds)


def markdown(rows: list[Row]) -> str:
    """One row per attack, one column per estimator: runs (on g, through which of our methods; or on f,
    through ``estimator.model``), refused (by us or by ART, and why), or not run (a missing dependency)."""
    kinds = list(dict.fromkeys(r.kind for r in rows))
    header = {"randomized": "RandomizedSmoothingClassifier", "denoised": "Denoised… (torch chain)"}
    lines = [
        "| family | attack | " + " | ".join(header.get(k, f"Denoised… ({k})") for k in kinds) + " |",
        "|---|---|" + "---|" * len(kinds),
    ]
    for attack in dict.fromkeys(r.attack for r in rows):
        cells = {r.kind: r for r in rows if r.attack == attack}
        family = next(iter(cells.values())).family
        lines.append(
            f"| {family} | {attack} | " + " | ".join(_cell(cells[k]) for k in kinds if k in cells) + " |"
        )
    return "\n".join(lines)


def _cell(row: Row) -> str:
    if row.status != "runs":
        return row.status.replace("NotDifferentiableError: ", "").replace("NotImplementedError: get_", "get_")
    methods = ", ".join(f"`{c.split(' ×')[0]}`" for c in row.calls.split(", ") if c)
    if row.attacks.startswith("**f**"):
        return f"runs on **f** (own classifier from `estimator.model`); PREDICT changed {row.changed}"
    if "smoothed_module" in row.attacks:
        return f"runs on g (the soft classifier module); PREDICT changed {row.changed}"
    return f"runs on g: {methods}; PREDICT changed {row.changed}"


def long_markdown(rows: list[Row]) -> str:
    lines = [
        "| family | attack | estimator | runs / refused | what it attacks | our methods it called "
        "| PREDICT changed | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.family} | {r.attack} | {r.kind} | {r.status} | {r.attacks} | {r.calls} | {r.changed} "
            f"| {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--only", nargs="*", help="attack names (default: all)")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--long", action="store_true", help="one row per attack and estimator, with counts")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    estimators, x, y = build_estimators()
    names = args.only or list(_attacks())
    rows = []
    for name in names:
        for kind in args.kinds:
            row = run_attack(name, kind, estimators, x, y)
            rows.append(row)
            print(f"{name:48s} {kind:11s} {row.status[:60]:60s} {row.seconds:6.1f} s", flush=True)
    table = long_markdown(rows) if args.long else markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
