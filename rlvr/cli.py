"""`rlvr` command line.

    rlvr train [key=value ...]     e.g. rlvr train algorithm=v05 weighting=focal data=arith model=smollm2-135m
    rlvr config [key=value ...]    print the composed config and exit
"""

from __future__ import annotations

import logging
import sys

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


def main(argv: list[str] | None = None) -> int:
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
    print(f"rlvr: unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
