"""Command line: ``art-smoothing-eval`` / ``python -m evaluations``.

Subcommands:

* ``run`` -- the pipeline (data, models, defences, attacks, metrics, report) from a preset and/or a
  config file; ``--submissions DIR`` evaluates every submission in DIR and writes a leaderboard;
  ``--dry-run`` validates everything and prints the plan and a time estimate without training or
  attacking anything.
* ``analyze LOG...`` -- Cohen-format certify logs into the same tables and plots (:mod:`evaluations.analyze`).
* ``config`` -- print the resolved configuration (``--keys``: every key with its meaning and presets).

Bad input (unknown names, wrong types, a model that does not import, weights that do not fit) ends the
command with one message naming the config key and the expected form, exit status 2, before any long work.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .config import PRESETS, ConfigError, describe_schema, load_config_file, resolve_config

__all__ = ["build_parser", "main"]


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), help="base preset (default: the file's, else quick)"
    )
    parser.add_argument("--config", metavar="FILE", help="a .toml or .json file merged over the preset")
    parser.add_argument(
        "--set",
        metavar="SECTION.KEY=VALUE",
        action="append",
        default=[],
        help="override one key (JSON value), e.g. --set smoothing.n=2000; repeatable",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="cap every number of test points at N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="art-smoothing-eval",
        description="Certified against empirical robustness: randomized and denoised smoothing, adversarial "
        "training and feature squeezing under attack.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the evaluation pipeline")
    _add_config_arguments(run)
    run.add_argument(
        "--out", metavar="DIR", help="output folder (default results/<preset>/); reuse it to resume"
    )
    run.add_argument(
        "--cache-dir", metavar="DIR", help="trained-model cache (default ~/.cache/art-smoothing/models)"
    )
    run.add_argument(
        "--submissions",
        metavar="DIR",
        help="instructor mode: evaluate every submission folder in DIR and write a leaderboard. IMPORTING A "
        "SUBMISSION'S MODEL CODE RUNS IT: use a sandbox for untrusted code",
    )
    run.add_argument("--dry-run", action="store_true", help="validate and print the plan and a time estimate")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    analyze = commands.add_parser(
        "analyze", help="tables and plots from Cohen-format certify logs", add_help=False
    )
    analyze.add_argument("rest", nargs=argparse.REMAINDER)

    show = commands.add_parser("config", help="print the resolved configuration")
    _add_config_arguments(show)
    show.add_argument("--keys", action="store_true", help="print every key, its meaning and preset values")
    return parser


def _resolve(args: argparse.Namespace) -> dict:
    file_config = load_config_file(args.config) if args.config else None
    return resolve_config(args.preset, file_config, args.set, args.limit)


def _run(args: argparse.Namespace) -> int:
    if args.submissions:
        from .leaderboard import run_leaderboard

        file_config = load_config_file(args.config) if args.config else None
        out = Path(args.out or "results/leaderboard")
        run_leaderboard(
            args.submissions,
            out,
            preset=args.preset,
            file_config=file_config,
            overrides=args.set,
            limit=args.limit,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            dry_run=args.dry_run,
        )
        return 0
    config = _resolve(args)
    out = Path(args.out or f"results/{config['preset']}")
    if args.dry_run:
        from .dryrun import dry_run

        print(dry_run(config, cache_dir=args.cache_dir))
        return 0
    from .pipeline import Pipeline
    from .report import run_and_report

    pipeline = Pipeline(config, out, cache_dir=args.cache_dir, progress=not args.no_progress)
    pipeline.prepare()
    run_and_report(pipeline)
    print(f"report: {out / 'report.md'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 success, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "analyze":
        from . import analyze

        return int(analyze.main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "config":
            if args.keys:
                print(describe_schema())
            else:
                print(json.dumps(_resolve(args), indent=2))
            return 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 2
