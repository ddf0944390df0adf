"""The gradient-masking checklist as pure functions: each check's statistic, its flag at the 0.01 level
(boundaries derived from the exact binomial and McNemar tests, not tuned), and the comparison of
AutoAttack with single attacks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from evaluations import checklist
from evaluations.checklist import Outcome


def _robust(points: int, broken: list[int] | range | np.ndarray) -> np.ndarray:
    robust = np.ones(points, dtype=bool)
    robust[np.asarray(list(broken), dtype=int)] = False
    return robust


def test_eps_sweep_flags_accuracy_that_does_not_fall_to_zero():
    # With a 2% ceiling and 100 points, P(Bin(100, 0.02) >= 7) = 0.0046 < 0.01 <= P(Bin(100, 0.02) >= 6).
    assert stats.binom.sf(6, 100, 0.02) < 0.01 <= stats.binom.sf(5, 100, 0.02)
    eps = [0.1, 0.5, 1.0]
    for still_robust, flagged in ((7, True), (6, False), (0, False)):
        robust = [_robust(100, range(50)), _robust(100, range(80)), _robust(100, range(100 - still_robust))]
        check = checklist.eps_sweep("autoattack", "linf", eps, robust, unbounded_eps=1.0)
        assert check["flagged"] is flagged and check["robust"] == still_robust and check["eps"] == 1.0
        assert [s["accuracy"] for s in check["sweep"]] == [0.5, 0.2, still_robust / 100]
        if flagged:
            assert (
                check["message"].startswith("possible gradient masking") and "autoattack" in check["message"]
            )
    # A sweep that stops short of the unbounded budget checks nothing (its accuracy may rightly be high).
    assert (
        checklist.eps_sweep("autoattack", "l2", [0.5, 1.0], [_robust(10, [])] * 2, unbounded_eps=8.0) is None
    )
    with pytest.raises(ValueError, match="one length"):
        checklist.eps_sweep("autoattack", "l2", [0.5, 1.0], [_robust(10, [])], unbounded_eps=1.0)


def test_black_box_beating_white_box_is_flagged_by_an_exact_mcnemar_test():
    # 7 discordant points all one way: p = 2**-7 < 0.01; 6: p = 2**-6 > 0.01.
    for only_black_box, flagged in ((7, True), (6, False)):
        white = Outcome("pgd", "linf", 0.2, _robust(50, range(10)))
        square = Outcome(
            "square", "linf", 0.2, _robust(50, range(10 + only_black_box)), threat="black-box", gradient=False
        )
        (check,) = checklist.black_box_beats_white_box([white, square])
        assert check["only_first"] == only_black_box and check["only_second"] == 0
        assert check["p_value"] == pytest.approx(0.5**only_black_box)
        assert check["flagged"] is flagged and check["attacks"] == ["square", "pgd"]
    # A transfer attack is compared with white-box gradient attacks, not with another black-box one, and
    # only on the same (norm, eps).
    outcomes = [
        Outcome("pgd", "linf", 0.2, _robust(50, range(5)), threat="transfer"),
        Outcome("bpda", "linf", 0.2, _robust(50, range(30))),
        Outcome("square", "linf", 0.2, _robust(50, range(3)), threat="black-box", gradient=False),
        Outcome("bpda", "linf", 0.1, _robust(50, [])),
    ]
    pairs = {tuple(c["attacks"]) for c in checklist.black_box_beats_white_box(outcomes)}
    assert pairs == {("pgd", "bpda"), ("square", "bpda")}


def test_more_restarts_that_break_more_points_are_flagged():
    base = Outcome("apgd-ce", "l2", 1.0, _robust(80, range(20)))
    for extra, flagged in ((7, True), (6, False)):
        more = Outcome(
            "apgd-ce-restarts", "l2", 1.0, _robust(80, range(20 + extra)), more_effort_of="apgd-ce"
        )
        (check,) = checklist.more_effort([base, more])
        assert check["flagged"] is flagged and check["attacks"] == ["apgd-ce", "apgd-ce-restarts"]
    # Without its base attack at that budget there is nothing to compare.
    assert checklist.more_effort([Outcome("x", "l2", 1.0, _robust(5, []), more_effort_of="y")]) == []


def test_square_is_compared_with_the_gradient_attacks_together():
    # Each gradient attack alone misses points the other breaks; together they break 0-39, Square 0-29
    # and 40-49: 10 points only Square broke, 10 only the gradient attacks: not flagged (p = 0.59).
    first = Outcome("apgd-ce", "linf", 0.3, _robust(60, range(20)))
    second = Outcome("fab-t", "linf", 0.3, _robust(60, range(20, 40)))
    square = Outcome("square", "linf", 0.3, _robust(60, [*range(30), *range(40, 50)]), "black-box", False)
    (check,) = checklist.square_beats_gradient([first, second, square])
    assert (check["only_first"], check["only_second"], check["flagged"]) == (10, 10, False)
    assert check["gradient_attacks"] == ["apgd-ce", "fab-t"]
    # Square breaking 12 points that no gradient attack breaks, and nothing less, is flagged.
    square = Outcome("square", "linf", 0.3, _robust(60, range(52)), "black-box", False)
    (check,) = checklist.square_beats_gradient([first, second, square])
    assert (check["only_first"], check["only_second"], check["flagged"]) == (12, 0, True)
    # Randomized defences: no union of noisy verdicts, so this check is not made at all.
    checks = checklist.gradient_masking_checklist([first, second, square], deterministic=False)
    assert all(c["check"] != "square_beats_gradient" for c in checks)
    assert checklist.flags(checks) == [c for c in checks if c["flagged"]]


def test_autoattack_is_compared_with_each_single_attack():
    autoattack = Outcome("autoattack", "linf", 0.2, _robust(100, range(60)))
    single = [
        Outcome("pgd", "linf", 0.2, _robust(100, range(50))),  # weaker: 0 only-pgd points
        Outcome("square", "linf", 0.2, _robust(100, [*range(40), *range(60, 70)])),  # 10 only-square
        Outcome("pgd", "linf", 0.1, _robust(100, [])),  # another budget: not compared
        Outcome("autoattack", "linf", 0.2, _robust(100, range(60))),  # itself: not compared
    ]
    rows = checklist.compare_with_single_attacks(autoattack, single)
    assert [(r["attack"], r["only_single"], r["only_autoattack"]) for r in rows] == [
        ("pgd", 0, 10),
        ("square", 10, 20),
    ]
    assert [r["weaker"] for r in rows] == [False, False]
    assert rows[1]["p_value"] == pytest.approx(stats.binomtest(10, 30, 0.5, "greater").pvalue)
    stronger = Outcome("bpda", "linf", 0.2, _robust(100, range(70)))
    (row,) = checklist.compare_with_single_attacks(autoattack, [stronger])
    assert row["weaker"] and row["p_value"] == pytest.approx(0.5**10)


def test_bad_outcomes_are_refused():
    with pytest.raises(ValueError, match="boolean"):
        Outcome("pgd", "linf", 0.1, np.ones(4))
    with pytest.raises(ValueError, match="threat must be one of white-box, black-box, transfer"):
        Outcome("pgd", "linf", 0.1, np.ones(4, bool), threat="grey-box")
    with pytest.raises(ValueError, match="same points"):
        checklist.black_box_beats_white_box(
            [
                Outcome("pgd", "linf", 0.1, np.ones(4, bool)),
                Outcome("sq", "linf", 0.1, np.ones(5, bool), threat="black-box", gradient=False),
            ]
        )


def _entry(attack, norm, eps, robust, **extra):
    count = len(robust)
    labels = np.arange(count) % 10
    return {
        "attack": attack,
        "norm": norm,
        "eps": eps,
        "idx": np.arange(count),
        "label": labels,
        "predict": np.where(robust, labels, (labels + 1) % 10),
        **extra,
    }


def test_audit_of_one_defence_from_its_attack_rows():
    from evaluations.attack_audit import audit_defence, markdown_lines

    # A defence behind rounding, in miniature: PGD (100 points) and AutoAttack (its first 60) break few
    # points, Square breaks many; at the unbounded budget AutoAttack leaves 10 of 60 points standing.
    aa = {"part_of": "autoattack"}
    entries = [
        _entry("pgd", "linf", 0.2, _robust(100, range(5)), seconds=2.0),
        _entry(
            "autoattack",
            "linf",
            0.2,
            _robust(60, range(40)),
            gradient=False,
            seconds=30.0,
            component_seconds={"apgd-ce": 1.0, "square": 20.0},
        ),  # fmt: skip
        _entry("autoattack/apgd-ce", "linf", 0.2, _robust(60, range(4)), **aa),
        _entry(
            "autoattack/square", "linf", 0.2, _robust(60, range(40)), threat="black-box", gradient=False, **aa
        ),
        _entry(
            "autoattack/apgd-ce-restarts",
            "linf",
            0.2,
            _robust(60, range(5)),
            more_effort_of="autoattack/apgd-ce",
            **aa,
        ),  # fmt: skip
        _entry("autoattack", "linf", 1.0, _robust(60, range(50)), gradient=False, sweep=True, seconds=3.0),
    ]
    audit = audit_defence(entries, deterministic=True, unbounded_eps={"linf": 1.0, "l2": 8.0})
    kinds = {c["check"]: c for c in audit["flags"]}
    assert set(kinds) == {"eps_sweep", "black_box_beats_white_box", "square_beats_gradient"}
    assert kinds["eps_sweep"]["robust"] == 10 and kinds["eps_sweep"]["points"] == 60
    assert kinds["square_beats_gradient"]["points"] == 60  # the points every row covers
    assert kinds["square_beats_gradient"]["only_first"] == 35  # 40 broken by Square, 5 by PGD or APGD-CE
    assert audit["sweep_checked"] == {"linf": 1.0}  # no L2 row: the L2 sweep is not made
    # AutoAttack against the single attacks (not against its own ensemble, nor at the sweep's budget).
    compared = {r["attack"]: r for r in audit["autoattack"]}
    assert set(compared) == {"pgd"} and not compared["pgd"]["weaker"]
    assert audit["times"]["autoattack"] == {
        "seconds": 33.0, "units": 2, "components": {"apgd-ce": 1.0, "square": 20.0}
    }  # fmt: skip
    curves = audit["curves"]["linf"]
    assert curves["autoattack"] == {
        "eps": [0.2, 1.0],
        "accuracy": [pytest.approx(20 / 60), pytest.approx(10 / 60)],
    }
    # PGD alone, on AutoAttack's 60 points (it broke 5 of them)
    assert curves["others"] == {"eps": [0.2], "accuracy": [pytest.approx(55 / 60)]}
    text = "\n".join(markdown_lines({"defences": {"rounded": {"audit": audit}}}))
    assert "possible gradient masking" in text and "No flag is not a claim of robustness" in text
    assert "| rounded | autoattack | 2 | 33.0 | apgd-ce 1.0, square 20.0 |" in text
