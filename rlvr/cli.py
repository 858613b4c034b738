"""`rlvr` command line.

    rlvr train [key=value ...]        e.g. rlvr train algorithm=v05 weighting=focal data=mix model=smollm2-135m
    rlvr config [key=value ...]       print the composed config and exit
    rlvr export CKPT OUT              write a checkpoint's policy as a plain Hugging Face model folder
    rlvr eval CKPT|MODEL [key=value]  held-out pass@1 / pass@k of a checkpoint or model folder, e.g. data=champ eval.n_samples=4
    rlvr plot RUN_DIR [RUN_DIR ...]   PNG figures comparing runs (--out DIR)
    rlvr value-report RUN_DIR         the value prior's Brier, AUC and calibration, predicted before each step's rollouts
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

USAGE = __doc__


def _compose_or_exit(overrides: list[str]):
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from rlvr.config import ConfigError, compose, validate

    # `resume=never|auto|PATH` is short for resume.mode=...
    overrides = [("resume.mode=" + o.split("=", 1)[1]) if o.startswith("resume=") else o for o in overrides]
    try:
        cfg = compose(overrides)
        validate(cfg)
        return cfg
    except (HydraException, OmegaConfBaseException, ConfigError) as e:
        print(f"rlvr: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix: printed without a traceback."""
    from rlvr.config import ConfigError
    from rlvr.data import DataError
    from rlvr.placement import ClusterTooSmall

    return (ConfigError, DataError, ClusterTooSmall, ConnectionError, FileNotFoundError)


def main(argv: list[str] | None = None) -> int:
    try:
        return _run(argv)
    except _user_errors() as e:
        print(f"rlvr: {type(e).__name__}: {e}", file=sys.stderr)
        return 2


def _run(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, overrides = argv[0], argv[1:]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if command == "config":
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(_compose_or_exit(overrides)))
        return 0
    if command == "train":
        cfg = _compose_or_exit(overrides)
        from rlvr.trainer import train

        result = train(cfg)
        s = result["summary"]
        print(f"held-out accuracy (strict): {s['heldout_before']} -> {s['heldout_after']}  run dir: {s['run_dir']}")
        return 0
    if command == "export":
        if len(overrides) != 2:
            print("usage: rlvr export CKPT OUT", file=sys.stderr)
            return 2
        from rlvr.export import export_checkpoint

        print(export_checkpoint(overrides[0], overrides[1]))
        return 0
    if command == "eval":
        if not overrides:
            print("usage: rlvr eval CKPT|MODEL_DIR [key=value ...]", file=sys.stderr)
            return 2
        target, rest = overrides[0], overrides[1:]
        from rlvr.trainer import evaluate_model

        metrics = evaluate_model(target, _compose_or_exit(rest))
        for k, v in metrics.items():
            print(f"{k}: {v:.4f}")
        return 0
    if command == "value-report":
        import argparse

        parser = argparse.ArgumentParser(prog="rlvr value-report", description="the value prior's quality, step by step, out of sample")
        parser.add_argument("run_dir")
        parser.add_argument("--min-context", type=int, default=64, help="score prompts predicted with at least this much context")
        parser.add_argument("--predictors", nargs="+", default=None, help="subset of: logged context_mean embedded ridge")
        args = parser.parse_args(overrides)
        from rlvr.value_report import PREDICTORS, format_table, value_report

        report = value_report(Path(args.run_dir), args.min_context, tuple(args.predictors or PREDICTORS))
        print(format_table(report))
        print(f"wrote {Path(args.run_dir) / 'value_report.json'} and value_report.png")
        return 0
    if command == "plot":
        from rlvr.plots import main as plot_main

        return plot_main(overrides)
    print(f"rlvr: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
