"""Every seed a run derives from its config's one `seed`, named. A resumed run draws what the
original drew because each draw's seed is a fixed function of (seed, step, round, ...); changing
any function here changes every run's samples, so each is written once.

    step        the step's prompts' rollouts and its mini-batch plan; step 0 is V0.5's warm start
    round       a generation round within a step (DAPO's refills, V0.5's purchases)
    engine      one engine's share of a generate call
    turn        one turn of a multi-turn episode
    oracle      the oracle's extra samples at a step
    evaluation  the held-out evaluation after a step (step 0: before training)

Each is a 63-bit hash of its kind and arguments, so two draws share a seed only by a 2^-63 chance.
Seeds built by arithmetic (step * 100 + round, ...) met each other's ranges: with seed=1, step
998's rollouts drew the oracle's stream of step 97, and with seed=0 step 10,000's drew the first
evaluation's.
"""

from __future__ import annotations

import hashlib


def _seed(kind: str, *parts: int) -> int:
    text = ":".join((kind, *(str(int(p)) for p in parts)))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def step_seed(seed: int, step: int) -> int:
    return _seed("step", seed, step)


def round_seed(step: int, round_: int) -> int:
    """Round `round_` of generation within the step whose seed is `step` (round 0: the first draw)."""
    return _seed("round", step, round_)


def engine_seed(call: int, engine: int) -> int:
    return _seed("engine", call, engine)


def turn_seed(call: int, turn: int) -> int:
    return _seed("turn", call, turn)


def oracle_seed(seed: int, step: int) -> int:
    return _seed("oracle", seed, step)


def evaluation_seed(seed: int, step: int) -> int:
    return _seed("evaluation", seed, step)
