"""Command line: ``python3 -m evaluations`` (the same as the console command ``art-smoothing-eval``).

Subcommands:

* ``run`` -- the pipeline (data, models, defences, attacks, metrics, report) from a preset and/or a
  config file; ``--submissions DIR`` evaluates every submission in DIR and writes a leaderboard;
  ``--dry-run`` validates everything (``--out`` included) and prints the plan and a time estimate without
  training or attacking anything.
* ``study`` -- certified accuracy against the number of samples n and the level alpha
  (:mod:`evaluations.study`).
* ``analyze LOG...`` -- Cohen-format certify logs into the same tables and plots (:mod:`evaluations.analyze`).
* ``config`` -- print the resolved configuration (``--keys``: every key with its meaning and presets).

Bad input (unknown names, wrong types, a model that does not import, weights that do not fit, an output
folder that cannot be written) ends the command with one line naming the argument or config key and the
expected form, exit status 2, before any long work. Ctrl-C ends it with one line saying that rerunning the
same command resumes (exit status 130).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .allocator import keep_freed_memory
from .config import PRESETS, ConfigError, describe_schema, load_config_file, resolve_config
from .config.resolve import parse_override
from .executors import EXECUTORS
from .submissions.file_format import model_format

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INTERRUPTED",
    "build_parser",
    "check_output_folder",
    "main",
    "program_name",
]

#: Exit status of bad input (argparse uses the same) and of an interrupted command (128 + SIGINT).
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def program_name() -> str:
    """The name the user typed: ``art-smoothing-eval`` for the console command, else the module form.
    Every subcommand's usage and help use this one name."""
    return (
        "art-smoothing-eval" if Path(sys.argv[0]).name == "art-smoothing-eval" else "python3 -m evaluations"
    )


def _description(prog: str) -> str:
    return f"""\
Certified against empirical robustness, on CPU or GPU: randomized smoothing (Cohen et al.), denoised
smoothing (Salman et al.) and diffusion denoised smoothing (Carlini et al.) are certified with CERTIFY and
attacked (PGD, PGDL2, EOTPGD, ART PGD, SmoothAdv), beside PGD adversarial training, feature squeezing and
the undefended model. Results: report.md, TSV/JSON tables and PNG plots in the output folder.

examples:
  {prog} run                  # the quick preset on digits (minutes on 2 cores)
  {prog} run --preset mnist5k --dry-run   # validate, estimate the time, compute nothing
  {prog} run --config homework.toml --out results/me   # your model: see 'run -h'
  {prog} run --submissions homework/ --out results/board   # instructor mode
  {prog} study --out results/study   # certified accuracy against n and alpha
  {prog} analyze LOGS --out DIR   # Cohen-format certify logs into tables and plots
  {prog} config --keys        # every config key, its meaning and preset values

Run '{prog} <command> -h' for a command's options. Docs: docs/evaluation-harness.md."""


def _run_description(prog: str) -> str:
    return f"""\
Run the evaluation pipeline: data -> models -> defences -> clean -> certify -> attacks -> certificate
check -> report. The defences (defences.enabled): undefended, randomized_smoothing (one per sigma and
training method of smoothing.training: gaussian, smoothadv, macer, consistency, smoothmix),
denoised_smoothing (DnCNN/MemNet), diffusion_smoothing (a DDPM as one-shot denoiser; certified, attacked
only with diffusion.attack_points > 0), adversarial_training_linf/_l2 and feature_squeezing. Trained models
are cached (--cache-dir); rerunning the same command with the same --out resumes where it stopped.

your own model (homework): a config file with a [model] table, e.g. homework.toml:
  [model]
  weights = "model.onnx"          # ONNX: no code runs (docs/homework.md: the one-line export); or
                                  # a torch.export "model.pt2"; or code and a state_dict:
  module = "my_model.py:Net"      # "package.module:Net": a class, a factory or an nn.Module
  weights = "net_weights.pt"      # torch.save(model.state_dict(), ...) or .safetensors
  kwargs = {{ width = 32 }}         # passed to Net(...)
  mean = [0.1307]                 # normalisation the model expects (applied inside), with std
  std = [0.3081]
  nb_classes = 10                 # optional: the dataset's by default
  [defences]
  enabled = ["undefended", "randomized_smoothing", "feature_squeezing"]
The model takes images in [0, 1] of the dataset's shape and returns (N, nb_classes) logits.
IMPORTING THE MODEL'S MODULE RUNS ITS CODE (and so does loading a .pt2): by default in this process, for
code you trust; --set isolation.mode='"sandbox"' runs it in a bubblewrap sandbox instead. Instructor mode
always sandboxes code and .pt2 submissions (docs/homework.md).

examples:
  {prog} run                  # the quick preset (digits), into results/quick/
  {prog} run --preset mnist5k --limit 20   # the whole pipeline on 20 points per stage
  {prog} run --preset training --dry-run   # five training methods for smoothing compared on MNIST-5k
  {prog} run --set 'smoothing.training=["gaussian", "consistency"]'   # two training methods side by side
  {prog} run --config homework.toml --set smoothing.n=2000 --out results/me
  {prog} run --preset mnist5k --config homework.toml --dry-run
  {prog} run --submissions homework/ --out results/board   # instructor mode: one folder
      per student, one report each and a leaderboard (docs/evaluation-harness.md, 'Instructor mode')
  {prog} run --preset mnist5k --executor ray --address 10.0.0.5:6379   # units of work as Ray tasks
      on a cluster, the same files as --executor local (docs/scale-out.md)"""


def _study_description(prog: str) -> str:
    return f"""\
The lecture's study of sample size and confidence (Cohen et al. 2019): one smoothed classifier (the
harness's Gaussian-trained model at study.sigma, or your [model]) certified on study.points test points at
every n of study.n_values and every alpha of study.alphas, from prefixes of one estimation stream per point.
Writes study.md, study.json, study.tsv and PNG plots of certified accuracy against radius (per n, per alpha)
and of the largest certifiable radius sigma * Phi^-1(alpha^(1/n)) against n. Resumable like run.

examples:
  {prog} study                # digits, sigma 0.5, 50 points, n up to 100,000 (minutes)
  {prog} study --set "study.n_values=[100, 1000]" --out results/study-small
  {prog} study --dry-run      # validate and estimate the time"""


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
        help="override one key (JSON value), e.g. --set smoothing.n=2000; repeatable; 'config --keys' "
        "lists every key",
    )
    parser.add_argument("--limit", type=int, metavar="N", help="cap every number of test points at N")


def _add_output_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument(
        "--out", metavar="DIR", help=f"output folder (default {default}); rerun with the same one to resume"
    )
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="trained-model cache (default ~/.cache/art-smoothing/models)"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="validate and print the plan and a time estimate"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    prog = prog or program_name()
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog=prog, description=_description(prog), formatter_class=formatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,study,analyze,config}")

    def long_command(name: str, help_text: str, description: str, out_default: str):
        """A command that computes: config arguments, an output folder, a dry run."""
        command = commands.add_parser(
            name, help=help_text, description=description, formatter_class=formatter
        )
        _add_config_arguments(command)
        _add_output_arguments(command, out_default)
        return command

    run = long_command("run", "run the evaluation pipeline", _run_description(prog), "results/<preset>/")
    run.add_argument(
        "--submissions",
        metavar="DIR",
        help="instructor mode: evaluate every submission folder in DIR and write a leaderboard. ONNX "
        "submissions load without running code; code and .pt2 submissions run in a bubblewrap sandbox",
    )
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where units of work and model training run: local (this process) or ray (Ray tasks, the "
        "driver writing every checkpoint; pip install 'art-smoothing-plugin[distributed]')",
    )
    run.add_argument(
        "--address",
        metavar="ADDR",
        help="with --executor ray: the cluster (HOST:PORT of its head, auto, ray://HOST:PORT); default a "
        "local instance",
    )
    run.add_argument(
        "--trust-submissions",
        action="store_true",
        help="instructor mode on a machine without the sandbox: run code and .pt2 submissions in a plain "
        "worker process (with your uid, files and network) instead of refusing them; their rows say TRUSTED",
    )

    long_command(
        "study",
        "certified accuracy against the number of samples n and the level alpha",
        _study_description(prog),
        "results/study-<preset>/",
    )

    commands.add_parser(
        "analyze",
        help="tables and plots from Cohen-format certify logs (analyze -h for its options)",
        add_help=False,
    )

    show = commands.add_parser(
        "config",
        help="print the resolved configuration",
        description="Print the configuration a run would use (preset, file and --set merged and validated), "
        "as JSON; --keys prints every key with its meaning and its value in each preset.",
    )
    _add_config_arguments(show)
    show.add_argument("--keys", action="store_true", help="print every key, its meaning and preset values")
    return parser


def check_output_folder(path: str | Path, key: str = "--out") -> Path:
    """Refuse an output folder that cannot be created or written, before any work, WITHOUT creating it:
    the path (or its nearest existing parent) must be a folder in which a folder can be created, which is
    probed with a temporary folder that is removed at once. Returns the path."""
    path = Path(path).expanduser()
    expected = "a folder that exists or can be created, and that you can write to"
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        what = "the output folder" if existing == path else "a part of the path"
        raise ConfigError(key, expected, str(path), hint=f"{what} {str(existing)!r} is a file, not a folder")
    try:
        probe = tempfile.mkdtemp(prefix=".write-probe-", dir=existing)
        os.rmdir(probe)
    except OSError as error:
        raise ConfigError(
            key, expected, str(path), hint=f"cannot create anything in {str(existing)!r}: {error.strerror}"
        ) from None
    return path


def _worker_config(args: argparse.Namespace) -> bool:
    """Whether the run's configuration evaluates a model in a worker, from the config file's tables and
    the ``--set`` overrides alone (resolving the whole configuration imports torch; bad input is
    reported later, where the run resolves it)."""
    try:
        config = load_config_file(args.config) if args.config else {}
        for override in args.set or []:
            section, key, value = parse_override(override)
            config.setdefault(section, {})[key] = value
        return runs_a_worker(config)
    except (ConfigError, OSError, ValueError, AttributeError, TypeError):
        return False


def _resolve(args: argparse.Namespace) -> dict:
    file_config = load_config_file(args.config) if args.config else None
    return resolve_config(args.preset, file_config, args.set, args.limit)


#: libgomp's spin count (its own default is 300,000 busy-wait rounds, milliseconds) for a run whose model
#: computes in a worker process beside this one (see :func:`quiet_openmp_for_workers`).
WORKER_RUN_SPINCOUNT = "1000"


def runs_a_worker(config: dict) -> bool:
    """Whether ``config`` evaluates a model whose code runs in a worker process: a user's model given as
    code or a ``.pt2`` file with ``isolation.mode`` other than ``"none"`` (ONNX runs in this process; the
    format by the rule the loader uses, :func:`~evaluations.submissions.file_format.model_format`)."""
    model = config.get("model") or {}
    module, weights = str(model.get("module") or ""), str(model.get("weights") or "")
    users_model = bool(module or weights)
    return (
        users_model
        and model_format(module, weights) != "onnx"
        and (config.get("isolation") or {}).get("mode", "none") != "none"
    )


def quiet_openmp_for_workers() -> bool:
    """Before torch loads: let this process's OpenMP threads sleep soon after a parallel region, as they
    would if they outnumbered the cores, which beside a worker they do (libgomp cannot see the worker).

    By default they busy-wait for milliseconds after each parallel region (cheap when one process owns the
    cores); while this process waits for a worker's answer they took a core from the worker's own
    threads, and a batch of 1,000 noisy digits took 11.7 ms through the worker against 6.8 ms in process.
    With ``GOMP_SPINCOUNT=1000`` (libgomp's own value for oversubscribed cores): 7.8 ms; the quick preset's
    homework run in the sandbox, 127 s where it took 205 s. Returns whether it could act: only before
    torch is imported (the value is read when torch's OpenMP runtime loads) and when the user has not set
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY`` themselves."""
    if "torch" in sys.modules or "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return False
    os.environ["GOMP_SPINCOUNT"] = WORKER_RUN_SPINCOUNT
    return True


def _run(args: argparse.Namespace) -> int:
    if args.submissions or _worker_config(args):
        quiet_openmp_for_workers()
    if args.trust_submissions and not args.submissions:
        raise ConfigError(
            "--trust-submissions", "--submissions with it (the flag is for instructor mode)", show_got=False
        )
    if args.address and args.executor != "ray":
        raise ConfigError("--address", "used with --executor ray", args.address)
    if args.submissions:
        from .leaderboard import run_leaderboard

        file_config = load_config_file(args.config) if args.config else None
        out = check_output_folder(args.out or "results/leaderboard")
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
            trust_submissions=args.trust_submissions,
            protected=[args.config] if args.config else [],
            executor=args.executor,
            address=args.address,
        )
        print(f"leaderboard: {out / 'leaderboard.md'}")
        return 0
    from .dryrun import dry_run

    def run_pipeline(config: dict, out: Path) -> Path:
        from .pipeline import Pipeline
        from .report import run_and_report

        pipeline = Pipeline(
            config,
            out,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
            executor=args.executor,
            address=args.address,
        )
        pipeline.prepare()
        run_and_report(pipeline)
        return out / "report.md"

    return _compute(args, "results/{preset}", dry_run, run_pipeline, "report")


def _study(args: argparse.Namespace) -> int:
    from .study import run_study, study_dry_run

    def study(config: dict, out: Path) -> Path:
        run_study(config, out, cache_dir=args.cache_dir, progress=not args.no_progress)
        return out / "study.md"

    return _compute(args, "results/study-{preset}", study_dry_run, study, "study report")


def _compute(args: argparse.Namespace, default_out: str, plan, work, what: str) -> int:
    """The shape of every computing command: resolve and validate the configuration and the output
    folder, then either print the dry run's plan or do the work and print where its report is."""
    config = _resolve(args)
    out = check_output_folder(args.out or default_out.format(preset=config["preset"]))
    if args.dry_run:
        print(plan(config, cache_dir=args.cache_dir))
        print(f"output folder {str(out)!r}: writable.")
        return 0
    print(f"{what}: {work(config, out)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 success, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = program_name()
    command = argv[0] if argv else ""
    keep_freed_memory()
    try:
        if command == "analyze":
            from . import analyze

            return int(analyze.main(argv[1:], prog=f"{prog} analyze") or 0)
        args = build_parser(prog).parse_args(argv)
        if args.command == "run":
            return _run(args)
        if args.command == "study":
            return _study(args)
        if args.command == "config":
            print(describe_schema() if args.keys else json.dumps(_resolve(args), indent=2))
            return 0
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        resumable = command in ("run", "study")
        advice = "; rerun the same command (same --out) to resume: finished units of work are kept"
        print("interrupted" + (advice if resumable else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as error:  # a file system failure mid-run (disk full, folder removed): one line, no trace
        where = f": {error.filename!r}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 1
    return EXIT_BAD_INPUT
