"""Every seed a run derives from its config's one `seed`, named. A resumed run draws what the
original drew because each draw's seed is a fixed function of (seed, step, round, ...); changing
any function here changes every run's samples, so each is written once.

    step        the step's prompts' rollouts and its mini-batch plan; step 0 is V0.5's warm start
    round       a generation round within a step (DAPO's refills, V0.5's purchases)
    engine      one engine's share of a generate call
    turn        one turn of a multi-turn episode
    oracle      the oracle's extra samples at a step
    evaluation  the held-out evaluation after a step (step 0: before training)
"""

from __future__ import annotations


def step_seed(seed: int, step: int) -> int:
    return seed * 100003 + step


ROUNDS_PER_STEP = 100  # round seeds of step s are s*100 .. s*100 + 99: config validation caps the rounds


def round_seed(step: int, round_: int) -> int:
    """Round `round_` of generation within the step whose seed is `step` (round 0: the first draw)."""
    return step * ROUNDS_PER_STEP + round_


def engine_seed(call: int, engine: int) -> int:
    return call * 1000 + engine


def turn_seed(call: int, max_turns: int, turn: int) -> int:
    return call * max_turns + turn


def oracle_seed(seed: int, step: int) -> int:
    return step_seed(seed, step) + 10**7


def evaluation_seed(seed: int, step: int) -> int:
    return seed + 10**6 + step
