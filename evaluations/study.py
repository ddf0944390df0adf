"""The study of sample size and confidence (Cohen et al. 2019, Section 4 and Figure 4): how certified
accuracy depends on the number of estimation samples n and on the level alpha, and the largest radius n
samples can certify at all, sigma * Phi^-1(alpha^(1/n)).

One smoothed classifier (the harness's Gaussian-trained model at ``study.sigma``, or the user's
``[model]``) is certified on the first ``study.points`` test points at every n of ``study.n_values`` and
every alpha of ``study.alphas``. Per point the study draws ``n0`` selection samples, then ONE stream of
``max(n_values)`` estimation samples after them, and records the selected class's votes at every prefix
length n of that stream. The certificate at (n, alpha) is CERTIFY's own computation on those counts
(:func:`art_smoothing_plugin.smoothing.certificate_from_counts`: the Clopper-Pearson bound and the radius
of :mod:`art_smoothing_plugin.statistics`), so:

* each (n, alpha) certificate, taken alone, is exactly CERTIFY with n estimation samples at level alpha:
  its n samples are independent draws, independent of the n0 selection samples that chose the class, so
  it is wrong with probability at most alpha;
* the certificates at different n share samples (prefixes of one stream), and those at different alphas
  share counts: they are dependent and are NOT simultaneous guarantees. Each curve of the figures is
  valid on its own, which is all a comparison of curves needs; disjoint samples per n would cost
  sum(n_values) instead of max(n_values) samples per point and make no single curve more valid.

The work is cut into units of ``study.chunk_size`` points, each a checkpoint (:class:`WorkStore`), so an
interrupted study resumes where it stopped; a tqdm bar counts the noisy samples. Output: ``study.md``,
``study.json``, ``study.tsv`` and ``plots/study_certified_accuracy.png``, ``plots/study_max_radius.png``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from . import metrics
from .reproducibility import derive_seed
from .storage import WorkStore, atomic_write_json, atomic_write_text

__all__ = ["run_study", "study_certificates", "study_dry_run", "study_figures"]


def _model(config: dict[str, Any], dataset: Any, cache_dir: str | Path | None, device: Any, progress, log):
    from .models import DEFAULT_CACHE_DIR, ModelStore

    store = ModelStore(config, dataset, cache_dir or DEFAULT_CACHE_DIR, device, progress, log)
    model, key = store.classifier("gaussian", sigma=config["study"]["sigma"])
    return store, model, key


def prefix_counts(
    model: Any,
    x: np.ndarray,
    *,
    sigma: float,
    n0: int,
    n_values: list[int],
    num_classes: int,
    batch_size: int,
    seeds: list[int],
    device: Any,
    on_batch=None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(candidates, counts)``: per input, the class chosen by ``n0`` selection samples, and its votes
    among the first n samples of one estimation stream at every n of ``n_values``: ``counts[i, j]`` for
    ``n_values[j]``. The stream is cut into segments (the samples between consecutive n), each drawn in its
    own keyed phase (:func:`~art_smoothing_plugin.sampling.look_phase`), so every sample is independent of
    the selection samples and of every other sample, and the counts at each n are a prefix of one stream.

    Input ``i`` draws all its noise under its own key, ``NoiseKey(seeds[i], 0)``, so its counts do not
    depend on which other inputs share its unit of work (results do not depend on how the work is cut).
    Noise and votes come from the package's one sampler (:func:`art_smoothing_plugin.sampling.count_votes`).
    """
    import torch

    from art_smoothing_plugin.classifiers.torch_module import label_function
    from art_smoothing_plugin.sampling import SELECTION, NoiseKey, count_votes, look_phase

    if len(seeds) != len(x):
        raise ValueError(f"seeds must hold one seed per input: {len(seeds)} seeds for {len(x)} inputs")
    classify = label_function(model, num_classes)
    inputs = torch.as_tensor(x, dtype=torch.float32, device=device)
    candidates, counts = [], []
    with torch.inference_mode():
        for point, seed in zip(inputs, seeds, strict=True):
            one = point.unsqueeze(0)
            key = NoiseKey(int(seed), 0)
            selection = count_votes(
                classify, one, n0, sigma, num_classes, batch_size, key, SELECTION, on_batch=on_batch
            )
            candidate = int(selection.argmax(dim=1))
            total, drawn, row = 0, 0, []
            for segment, n in enumerate(n_values):
                votes = count_votes(
                    classify,
                    one,
                    n - drawn,
                    sigma,
                    num_classes,
                    batch_size,
                    key,
                    look_phase(segment),
                    on_batch=on_batch,
                )
                total += int(votes[0, candidate])
                drawn = n
                row.append(total)
            candidates.append(candidate)
            counts.append(row)
    return np.asarray(candidates, dtype=np.int64), np.asarray(counts, dtype=np.int64).reshape(len(x), -1)


def study_certificates(
    candidates: np.ndarray,
    counts: np.ndarray,
    labels: np.ndarray,
    *,
    sigma: float,
    n0: int,
    n_values: list[int],
    alphas: list[float],
    radius_grid: np.ndarray,
) -> list[dict[str, Any]]:
    """One summary per (n, alpha): certified accuracy on ``radius_grid``, ACR, abstentions, the largest
    radius certified and the largest certifiable one, all from CERTIFY's computation on the counts."""
    from art_smoothing_plugin import statistics
    from art_smoothing_plugin.smoothing import certificate_from_counts

    rows = []
    for j, n in enumerate(n_values):
        for alpha in alphas:
            result = certificate_from_counts(candidates, counts[:, j], n0, n, alpha, sigma)
            rows.append(
                {
                    "n": int(n),
                    "alpha": float(alpha),
                    "labels": result.labels,
                    "radii": result.radii,
                    "accuracy": [
                        float(a)
                        for a in metrics.certified_accuracy(result.labels, result.radii, labels, radius_grid)
                    ],
                    "acr": metrics.average_certified_radius(result.labels, result.radii, labels),
                    "abstain": metrics.abstain_rate(result.labels),
                    "largest_certified_radius": float(np.max(result.radii, initial=0.0)),
                    "max_certifiable_radius": statistics.max_certifiable_radius(n, alpha, sigma),
                }
            )
    return rows


def run_study(
    config: dict[str, Any],
    out_dir: str | Path,
    *,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    log=None,
) -> dict[str, Any]:
    """Run (or resume) the study of ``config["study"]`` into ``out_dir``; returns ``study.json``'s dict."""
    import sys

    import torch
    from tqdm.auto import tqdm

    from .data import load_dataset
    from .pipeline import resolve_device

    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    started = time.perf_counter()
    section = config["study"]
    out = Path(out_dir)
    if config["run"]["threads"]:
        torch.set_num_threads(config["run"]["threads"])
    device = resolve_device(config["run"]["device"])
    dataset = load_dataset(
        config["dataset"]["name"], path=config["dataset"]["path"] or None, root=config["dataset"]["root"]
    )
    store, model, model_key = _model(config, dataset, cache_dir, device, progress, log)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", config)
    count = min(section["points"], len(dataset.x_test))
    x, y = dataset.x_test[:count], dataset.y_test[:count]
    n_values, size = section["n_values"], section["chunk_size"]
    work = WorkStore(out / "checkpoints", out / "events.jsonl")
    per_point = section["n0"] + max(n_values)
    parts = []
    with tqdm(
        total=count * per_point, unit="sample", unit_scale=True, desc="study", disable=not progress
    ) as bar:
        for start in range(0, count, size):
            stop = min(start + size, count)
            key = {
                "seeding": "per point",
                "model": model_key,
                "dataset": dataset.name,
                "sigma": section["sigma"],
                "n0": section["n0"],
                "n_values": n_values,
                "batch_size": config["smoothing"]["batch_size"],
                "seed": config["run"]["seed"],
                "start": start,
                "stop": stop,
            }

            def compute(start=start, stop=stop) -> dict[str, np.ndarray]:
                candidates, counts = prefix_counts(
                    model,
                    x[start:stop],
                    sigma=section["sigma"],
                    n0=section["n0"],
                    n_values=n_values,
                    num_classes=store.nb_classes,
                    batch_size=config["smoothing"]["batch_size"],
                    seeds=[derive_seed(config["run"]["seed"], "study", i) for i in range(start, stop)],
                    device=device,
                    on_batch=bar.update,
                )
                return {"candidates": candidates, "counts": counts}

            before = bar.n
            parts.append(work.fetch("study", f"study-{start}", key, compute))
            bar.update((stop - start) * per_point - (bar.n - before))  # a reused unit counts as done
    store.release_user()  # a user's worker, if any, is not needed past the counts
    candidates = np.concatenate([p["candidates"] for p in parts]).astype(np.int64)
    counts = np.concatenate([p["counts"] for p in parts]).astype(np.int64)
    grid = np.asarray(config["report"]["radius_grid"], dtype=np.float64)
    rows = study_certificates(
        candidates,
        counts,
        y,
        sigma=section["sigma"],
        n0=section["n0"],
        n_values=n_values,
        alphas=section["alphas"],
        radius_grid=grid,
    )
    summary = {
        "config": config,
        "study": section,
        "dataset": dataset.name,
        "points": count,
        "model": store.events,
        "radius_grid": grid.tolist(),
        "reuse": "prefixes of one estimation stream per point (each n alone is CERTIFY with n samples, "
        "independent of the n0 selection samples); alphas on the same counts",
        "results": [{k: v for k, v in row.items() if k not in ("labels", "radii")} for row in rows],
        "units_computed": work.count("computed"),
        "units_reused": work.count("reused"),
    }
    _write_tsv(out / "study.tsv", np.arange(count), y, candidates, counts, n_values)
    plots = {}
    if config["report"]["plots"]:
        plots = study_figures(rows, y, section, out / "plots", dataset.name)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    atomic_write_json(out / "study.json", summary)
    atomic_write_text(out / "study.md", _markdown(summary, plots, out))
    log(
        f"study done in {summary['seconds']:.1f} s: {summary['units_computed']} units computed, "
        f"{summary['units_reused']} reused"
    )
    return summary


def _write_tsv(path: Path, idx, labels, candidates, counts, n_values) -> None:
    header = ["idx", "label", "candidate", *(f"count_top_n{n}" for n in n_values)]
    lines = ["\t".join(header)]
    for i in range(len(idx)):
        lines.append("\t".join(map(str, [int(idx[i]), int(labels[i]), int(candidates[i]), *counts[i]])))
    atomic_write_text(path, "\n".join(lines) + "\n")


def study_figures(
    rows: list[dict[str, Any]], labels: np.ndarray, section: dict[str, Any], out: Path, dataset: str
) -> dict[str, Path]:
    """The study's two PNGs: certified accuracy against radius per n (at the smallest alpha) and per
    alpha (at the smallest n, where alpha matters most; the table has every other pair), and the largest
    certifiable radius against n per alpha (the exact curve sigma * Phi^-1(alpha^(1/n)) as a line, the
    largest radius certified on the points as markers)."""
    from art_smoothing_plugin import statistics

    from . import plots

    by_key = {(r["n"], r["alpha"]): r for r in rows}
    n_values, alphas = section["n_values"], section["alphas"]
    alpha_fixed, n_fixed = min(alphas), min(n_values)
    top = max(float(np.max(r["radii"], initial=0.0)) for r in rows)
    fine = np.linspace(0.0, top * 1.05 + 1e-9, 300)
    # one colour per series across both figures (an alpha keeps its colour in the two PNGs)
    colours = plots.defence_colours([f"n = {n:,}" for n in n_values] + [f"α = {a:g}" for a in alphas])
    curves = []
    for panel, members in (
        (f"n varies, α = {alpha_fixed:g}", [(n, alpha_fixed) for n in n_values]),
        (f"α varies, n = {n_fixed:,}", [(n_fixed, a) for a in alphas]),
    ):
        for n, alpha in members:
            row = by_key[(n, alpha)]
            name = f"n = {n:,}" if panel.startswith("n varies") else f"α = {alpha:g}"
            curves.append(
                {
                    "label": f"{name} (at most {row['max_certifiable_radius']:.2f})",
                    "radii": fine,
                    "accuracy": metrics.certified_accuracy(row["labels"], row["radii"], labels, fine),
                    "style": "solid",
                    "group": name,
                    "panel": panel,
                }
            )
    written = {
        "certified_accuracy": plots.plot_certified_accuracy(
            curves,
            out / "study_certified_accuracy.png",
            title=f"Certified accuracy ({dataset}, σ = {section['sigma']:g})",
            xlabel="L2 radius r",
            colours=colours,
        )
    }
    n_grid = np.unique(np.geomspace(min(10, min(n_values)), max(n_values) * 2, 200).astype(int))
    exact = {
        f"α = {alpha:g}": (
            n_grid,
            [statistics.max_certifiable_radius(int(n), alpha, section["sigma"]) for n in n_grid],
        )
        for alpha in alphas
    }
    measured = {
        f"α = {alpha:g}": (n_values, [by_key[(n, alpha)]["largest_certified_radius"] for n in n_values])
        for alpha in alphas
    }
    written["max_radius"] = plots.plot_max_radius(
        exact,
        measured,
        out / "study_max_radius.png",
        title=f"Largest certifiable radius σ·Φ⁻¹(α^(1/n)), σ = {section['sigma']:g}",
        colours=colours,
    )
    return written


def _markdown(summary: dict[str, Any], plots: dict[str, Path], out: Path) -> str:
    section = summary["study"]
    grid = summary["radius_grid"]
    lines = [
        f"# Certified accuracy against sample size and confidence: {summary['dataset']}, "
        f"σ = {section['sigma']:g}",
        "",
        f"{summary['points']} test points; n0 = {section['n0']} selection samples; n ∈ "
        f"{{{', '.join(f'{n:,}' for n in section['n_values'])}}} estimation samples; α ∈ "
        f"{{{', '.join(f'{a:g}' for a in section['alphas'])}}}. Each certificate at (n, α) is CERTIFY on "
        "the first n samples of one estimation stream per point, drawn independently of the selection "
        "samples: valid on its own at level α. Curves at different n share samples and the α's share "
        "counts, so they are not simultaneous guarantees (docs/sample-size-study.md). Abstentions count "
        f"as wrong. {summary['units_computed']} units computed, {summary['units_reused']} reused, "
        f"{summary['seconds']:.0f} s.",
        "",
        "| n | α | " + " | ".join(f"r={r:g}" for r in grid) + " | ACR | abstain (%) | largest certified | "
        "σ·Φ⁻¹(α^(1/n)) |",
        "|---|---|" + "---|" * len(grid) + "---|---|---|---|",
    ]
    for row in summary["results"]:
        lines.append(
            f"| {row['n']:,} | {row['alpha']:g} | "
            + " | ".join(f"{100 * a:.1f}" for a in row["accuracy"])
            + f" | {row['acr']:.3f} | {100 * row['abstain']:.1f} | {row['largest_certified_radius']:.3f} | "
            f"{row['max_certifiable_radius']:.3f} |"
        )
    if plots:
        lines += [""] + [f"![{name}]({path.relative_to(out).as_posix()})" for name, path in plots.items()]
    return "\n".join(lines) + "\n"


def study_dry_run(config: dict[str, Any], cache_dir: str | Path | None = None) -> str:
    """Validate the study's configuration (data, model) and estimate its time from this machine's
    measured forward throughput, computing nothing."""
    from .data import load_dataset
    from .dryrun import _throughput
    from .models import DEFAULT_CACHE_DIR, ModelStore
    from .pipeline import resolve_device
    from .reproducibility import config_hash
    from .zoo import build_model

    section = config["study"]
    dataset = load_dataset(
        config["dataset"]["name"], path=config["dataset"]["path"] or None, root=config["dataset"]["root"]
    )
    store = ModelStore(
        config,
        dataset,
        cache_dir or DEFAULT_CACHE_DIR,
        resolve_device(config["run"]["device"]),
        progress=False,
        log=lambda m: None,
    )
    train_seconds = 0.0
    if store.user_model:
        model, _ = store.load_user()
        status = f"user model {config['model']['module'] or config['model']['weights']}"
    else:
        model = build_model(config["model"]["architecture"], dataset.input_shape, store.nb_classes)
        spec = store.training_spec("gaussian", sigma=section["sigma"])
        cached = any(store.cache_dir.glob(f"*-{config_hash(spec)}.pt"))
        status = f"gaussian sigma={section['sigma']:g} model ({'cached' if cached else 'to train'})"
        if not cached:
            train_seconds = spec["epochs"] * len(dataset.x_train) * _throughput(model, dataset.input_shape)[1]
    forward, _ = _throughput(model, dataset.input_shape, batch=config["smoothing"]["batch_size"])
    store.release_user()
    points = min(section["points"], len(dataset.x_test))
    samples = points * (section["n0"] + max(section["n_values"]))
    seconds = train_seconds + samples * forward
    return "\n".join(
        [
            f"study dry run on {dataset.name}: configuration valid; {status}.",
            f"{points} points x ({section['n0']} + {max(section['n_values']):,}) samples = {samples:,} "
            f"forward passes at {1e6 * forward:.1f} µs each (measured here)"
            + (f", plus about {train_seconds:.0f} s of training" if train_seconds else "")
            + ".",
            f"estimated total: {seconds / 60:.1f} minutes on this machine (planning figure, about ±2x).",
        ]
    )
