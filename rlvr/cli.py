"""`rlvr` command line. Every command answers --help and exits 0; its errors exit 2 with a message.

    rlvr train [key=value ...]        a Hydra app: e.g. rlvr train algorithm=v05 weighting=focal data=mix
                                      --cfg job|hydra|all, --help, --info, -m algorithm=grpo,v05 seed=0,1,2
    rlvr config [key=value ...]       print the composed, validated config and exit
    rlvr export CKPT OUT [--adapter]  write a checkpoint's policy as a plain Hugging Face model folder
                                      (LoRA merged), or with --adapter a peft adapter folder
    rlvr eval CKPT|MODEL [key=value]  held-out pass@1 / pass@k of a checkpoint or model folder, e.g. data=champ eval.n_samples=4
    rlvr plot RUN_DIR [RUN_DIR ...]   PNG figures comparing runs, e.g. every run dir of a sweep (--out DIR)
    rlvr compare RUN_DIR [...]        a table of final held-out accuracy, pass@k, rollouts and wall time per run
    rlvr value-report RUN_DIR         the value prior's Brier, AUC and calibration, predicted before each step's rollouts
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

USAGE = __doc__


def _compose_or_exit(overrides: list[str], make=None, may_be_missing: tuple[str, ...] = (), validating: bool = True):
    """The config `make(overrides)` builds (default: the tree composed with them), validated unless
    ``validating`` is false; a config error is printed without a traceback and exits 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rlvr.config import ConfigError, compose, validate

    try:
        cfg = (make or compose)(overrides)
        if validating:
            validate(cfg, may_be_missing)
        return cfg
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        print(f"rlvr: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix: printed without a traceback."""
    from rlvr.checkpoint import ResumeConflict
    from rlvr.config import ConfigError
    from rlvr.data import DataError
    from rlvr.runtime.placement import ClusterTooSmall
    from rlvr.sandbox.messages import VerifierStartError

    return (ConfigError, DataError, ClusterTooSmall, ConnectionError, FileNotFoundError, ResumeConflict, VerifierStartError)


def main(argv: list[str] | None = None) -> int:
    # A user's module beside them (`my_rewards:brevity`, `env.name=my_envs:MyEnv`) imports as under
    # `python -m`: the `rlvr` script's path starts at its own bin/ instead. Ray's workers get this path.
    try:
        cwd = os.getcwd()
    except OSError:  # the folder was deleted under the shell: nothing to import from it
        cwd = None
    if cwd is not None and cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except _user_errors() as e:
        print(f"rlvr: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def _run(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rlvr: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    if command != "train":  # Hydra sets up logging for train (console and run_dir/train.log)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return COMMANDS[command](rest)


def _parser(command: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"rlvr {command}", description=description)


# -- train: a Hydra application ---------------------------------------------------------------


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of every job of ``-m`` (Hydra's basic sweeper: the product of comma lists)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def run_dir_problem(run_dir: Path) -> str | None:
    """Why ``run_dir`` cannot be the run's folder (a file, or under one; a folder this user cannot
    write; a path starting with ~, which nothing expands), or None."""
    if str(run_dir).startswith("~"):
        return f"{run_dir} starts with ~, which is not expanded here (it made a folder named ~): give the full path"
    if run_dir.exists() and not run_dir.is_dir():
        return f"{run_dir} is a file, not a folder"
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, so {run_dir} cannot be made"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable by this user"
    return None


def train_command(argv: list[str]) -> int:
    """`rlvr train` runs through ``hydra.main``, so --cfg, --help, --info and -m/--multirun behave as
    in any Hydra app. Every job's config is composed and validated first, so an unknown key or a bad
    value fails before any actor starts (exit 2, naming the key)."""
    import hydra
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException

    from rlvr.config import config_dir, expand_shorthand, overridden_keys
    from rlvr.config.schema import register_schema

    argv = expand_shorthand(argv)
    args = get_args_parser().parse_args(argv)
    if args.multirun and (args.cfg or args.info or args.shell_completion):  # Hydra refused it with a ValueError traceback
        print("rlvr: config error: -m/--multirun cannot be combined with --cfg, --info or --shell-completion: "
              "look at one job's config (drop -m, give one value per key)", file=sys.stderr)
        return 2
    if (args.cfg or args.info) and not (args.help or args.hydra_help):
        _compose_or_exit(args.overrides, validating=False)  # Hydra's own report of a bad key is a traceback
    if not (args.help or args.hydra_help or args.info or args.cfg or args.shell_completion):
        try:
            jobs = sweep_jobs(args.overrides) if args.multirun else [args.overrides]
        except HydraException as e:
            print(f"rlvr: config error: {e}", file=sys.stderr)
            return 2
        run_dirs: set[str] = set()
        for job in jobs:
            cfg = _compose_or_exit(job)
            # a sweep's job without run_dir= runs in Hydra's multirun/ folder (see `task`), which Hydra makes
            if not args.multirun or "run_dir" in overridden_keys(job):
                problem = run_dir_problem(Path(str(cfg.run_dir)))
                if problem is None and str(cfg.run_dir) in run_dirs:
                    problem = (f"{cfg.run_dir} is more than one job's run dir (each would resume the one before it and train "
                               "nothing): drop run_dir= or make it differ per job, e.g. run_dir=runs/lr${learner.lr}")
                if problem:  # Hydra makes run_dir before the run starts: its error came as a traceback
                    print(f"rlvr: config error: run_dir: {problem}", file=sys.stderr)
                    return 2
                run_dirs.add(str(cfg.run_dir))
                from rlvr.train.state import refuse_before_start

                try:  # before Hydra rewrites run_dir/.hydra/, which a refused command replaced for a live or a kept run
                    refuse_before_start(cfg)
                except _user_errors() as e:
                    print(f"rlvr: {type(e).__name__}: {e}", file=sys.stderr)
                    return 2

    def task(cfg) -> dict:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from rlvr.train.loop import train

        hc = HydraConfig.get()
        user_set_run_dir = "run_dir" in overridden_keys(hc.overrides.task)
        if hc.mode == RunMode.MULTIRUN and not user_set_run_dir:
            cfg.run_dir = hc.runtime.output_dir  # multirun/<date>/<time>/<job>_<overrides>
        from rlvr.checkpoint import CheckpointSaveError
        from rlvr.runtime.faults import RoleFailed
        from rlvr.train.state import RunStopped

        try:
            s = train(cfg, keep_history=False)["summary"]
        except _user_errors() as e:
            print(f"rlvr: {type(e).__name__}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        except (RoleFailed, CheckpointSaveError) as e:
            print(f"rlvr: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except RunStopped as e:  # a stopped run is not a finished one: a sweep or a script stops with it
            print(f"rlvr: {e}", file=sys.stderr)
            raise SystemExit(128 + e.signum) from None
        print(f"held-out accuracy (strict): {s['heldout_before']} -> {s['heldout_after']}  run dir: {s['run_dir']}")
        return s

    register_schema()  # configs/config.yaml names it; --help and --cfg reach hydra.main without compose()
    saved = sys.argv
    sys.argv = ["rlvr train", *argv]  # hydra.main reads its flags and overrides from sys.argv
    try:
        hydra.main(config_path=config_dir(), config_name="config", version_base=None)(task)()
    finally:
        sys.argv = saved
    return 0


# -- the other commands -----------------------------------------------------------------------


def config_command(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    parser = _parser("config", "print the composed and validated config (what `rlvr train` would run) and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    print(OmegaConf.to_yaml(_compose_or_exit(parser.parse_args(argv).overrides)))
    return 0


def export_command(argv: list[str]) -> int:
    parser = _parser("export", "write a checkpoint's policy as a plain Hugging Face model folder")
    parser.add_argument("ckpt", metavar="CKPT", help="a checkpoint dir (run_dir/checkpoints/step_N) or a run dir (its latest)")
    parser.add_argument("out", metavar="OUT", help="the model folder to write")
    parser.add_argument(
        "--adapter", action="store_true", help="a LoRA run: write the peft adapter folder (PeftModel.from_pretrained(base, OUT)) instead of merged weights"
    )
    args = parser.parse_args(argv)
    from rlvr.export import ExportWriteError, export_checkpoint

    try:
        print(export_checkpoint(args.ckpt, args.out, adapter=args.adapter))
    except (ValueError, ExportWriteError) as e:  # not a checkpoint, or one that does not fit its base model, or --adapter without LoRA
        print(f"rlvr export: {e}", file=sys.stderr)
        return 2
    return 0


def eval_command(argv: list[str]) -> int:
    parser = _parser("eval", "held-out pass@1 (and pass@k with eval.n_samples > 1) of a checkpoint or a model folder")
    parser.add_argument("target", metavar="CKPT|MODEL_DIR")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data=champ eval.n_samples=4")
    args = parser.parse_args(argv)
    from rlvr.export import ExportWriteError
    from rlvr.train.evaluate import eval_config, evaluate_model

    # a checkpoint is scored under its run's own config; a model folder without a training file is fine
    cfg = _compose_or_exit(args.overrides, lambda o: eval_config(args.target, o), may_be_missing=("data.train.path",))
    from rlvr.train.state import StopRequest

    stop = StopRequest()  # before the temp export: SIGTERM's default action left it in /tmp, with no cleanup run
    try:
        metrics = evaluate_model(args.target, cfg, stop)
    except (KeyboardInterrupt, SystemExit) as e:
        stopped = stop.stop_behind(e)
        if stopped is None and stop.signal is None:
            raise
        signum = stop.signal or stopped.signum  # the first signal's
        print(f"rlvr eval: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + signum
    except (ValueError, ExportWriteError) as e:  # as `rlvr export`: not a checkpoint, its weights do not load, a full /tmp
        print(f"rlvr eval: {e}", file=sys.stderr)
        return 2
    finally:
        stop.restore()
    for k, v in metrics.items():
        print(f"{k}: {v:.4f}")
    return 0


def value_report_command(argv: list[str]) -> int:
    parser = _parser("value-report", "the value prior's quality, step by step, out of sample")
    parser.add_argument("run_dir")
    parser.add_argument("--min-context", type=int, default=64, help="score prompts predicted with at least this much context")
    parser.add_argument("--predictors", nargs="+", default=None, help="subset of: logged context_mean embedded ridge")
    args = parser.parse_args(argv)
    from rlvr.analysis.value_report import PREDICTORS, format_table, value_report

    try:
        report = value_report(Path(args.run_dir), args.min_context, tuple(args.predictors or PREDICTORS))
    except ValueError as e:  # a run with no V0.5 decisions, an unknown predictor
        print(f"rlvr value-report: {e}", file=sys.stderr)
        return 2
    print(format_table(report))
    print(f"wrote {Path(args.run_dir) / 'value_report.json'} and value_report.png")
    return 0


def plot_command(argv: list[str]) -> int:
    from rlvr.analysis.plots import main as plot_main

    return plot_main(argv)


def compare_command(argv: list[str]) -> int:
    parser = _parser("compare", "one row per run: final held-out accuracy, pass@k, rollouts spent and wall time")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run dirs, e.g. multirun/<date>/<time>/*")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    from rlvr.analysis.plots import compare_runs, format_comparison, run_dir_arguments

    rows = compare_runs(run_dir_arguments(args.run_dirs))
    if args.json:
        import json

        print(json.dumps(rows, indent=2))
    else:
        print(format_comparison(rows))
    return 0


COMMANDS = {
    "train": train_command,
    "config": config_command,
    "export": export_command,
    "eval": eval_command,
    "plot": plot_command,
    "compare": compare_command,
    "value-report": value_report_command,
}


if __name__ == "__main__":
    raise SystemExit(main())
