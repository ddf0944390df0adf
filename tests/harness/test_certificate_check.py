"""The certificate check catches an unsound certifier: a wrapper that inflates every certified radius is
attacked inside its (false) radii and flagged, while the sound certifier of the same model is not."""

from __future__ import annotations

import numpy as np
import pytest

from art_smoothing_plugin.statistics import max_certifiable_radius
from evaluations.defences import SmoothedDefence
from evaluations.defences.smoothing import build_randomized_smoothing
from evaluations.pipeline import Pipeline
from evaluations.registry import DEFENCE_KINDS, DefenceKind, register_defence
from evaluations.report import summarise

from .conftest import tiny_config

#: How much the unsound certifier inflates radii. Doubling is the textbook example; on this tiny model
#: the attack at twice the radius already flips enough points to be flagged.
INFLATION = 2.0


class InflatedRadii(SmoothedDefence):
    """A deliberately unsound certifier: the sound certificates with every radius multiplied."""

    def certify(self, x, *, seed):
        from dataclasses import replace

        result = super().certify(x, seed=seed)
        return replace(result, radii=result.radii * INFLATION)


def _build_unsound(context):
    sound = build_randomized_smoothing(context)
    return [
        InflatedRadii(
            f"unsound_{d.name}",
            "unsound_smoothing",
            d.estimator,
            d.model,
            d.identity | {"inflated": INFLATION},
            sigma=d.sigma,
            n0=d.n0,
            n=d.n,
            alpha=d.alpha,
            predict_n=d.predict_n,
            predict_alpha=d.predict_alpha,
            batch_size=d.batch_size,
            points=d.points,
        )
        for d in sound
    ]


@pytest.fixture()
def unsound_kind():
    register_defence(
        DefenceKind(
            "unsound_smoothing",
            _build_unsound,
            "randomized smoothing with inflated radii (a test double)",
            smoothed=True,
            section="smoothing",
            name_format="unsound_rs_sigma{sigma:g}",
        )
    )
    yield
    del DEFENCE_KINDS["unsound_smoothing"]


def test_inflated_radii_are_flagged_and_sound_ones_are_not(unsound_kind, model_cache, tmp_path):
    config = tiny_config(
        'defences.enabled=["randomized_smoothing", "unsound_smoothing"]',
        "smoothing.sigmas=[0.25]",
        "smoothing.points=60",
        "smoothing.n=200",
        "smoothing.predict_n=200",
        "certificate_check.points=60",
        "certificate_check.steps=10",
        "attacks.enabled=[]",
    )
    pipeline = Pipeline(config, tmp_path, cache_dir=model_cache, progress=False, log=lambda m: None)
    pipeline.prepare()
    pipeline.build()
    pipeline.run_certify()
    pipeline.run_certificate_check()
    results = summarise(pipeline)
    sound = results["defences"]["rs_sigma0.25"]["certificate_check"]
    unsound = results["defences"]["unsound_rs_sigma0.25"]["certificate_check"]
    # Every attempted point is a trial (the first 60 certified); the certified ones among them are
    # attacked. Same model and noise level: about the same points certify (the noise draws differ).
    for name, check in (("rs_sigma0.25", sound), ("unsound_rs_sigma0.25", unsound)):
        labels = pipeline.data.certified[name]["labels"][:60]
        assert check["trials"] == 60 and check["attacked"] == int(np.count_nonzero(labels != -1)) >= 30
    radii = pipeline.data.certified["unsound_rs_sigma0.25"]["radii"]
    ceiling = INFLATION * max_certifiable_radius(200, config["smoothing"]["alpha"], 0.25)
    assert radii.max() > max_certifiable_radius(200, config["smoothing"]["alpha"], 0.25)  # truly inflated
    assert radii.max() <= ceiling + 1e-12
    print("sound", sound, "unsound", unsound)
    assert not sound["flagged"]
    assert unsound["flagged"] and unsound["flips"] >= 2
    assert unsound["p_value"] < 1 - unsound["confidence"]
