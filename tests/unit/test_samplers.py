"""The samplers and the BudgetController's round of generation, driven by a scripted generator:
each problem's uid says how many of its rollouts are right and how long they are, so the
controller's and samplers' decisions are checked exactly without an engine."""

from __future__ import annotations

import itertools

import pytest

from rlvr.config import compose, validate
from rlvr.generation.base import Rollouts
from rlvr.rollout.engines import SamplingConfig
from rlvr.train.controller import BudgetController
from rlvr.train.loop import controller_config
from rlvr.types import Problem, Trajectory


class ScriptedGenerator:
    """Rollouts whose correctness and length come from the problem: "mixed/..." has one right answer
    in each group, "wrong/..." none; `lengths[uid]` sets every answer's length (default 4 tokens)."""

    def __init__(self, lengths: dict[str, int] | None = None):
        self.calls: list[list[str]] = []
        self.lengths = lengths or {}

    def generate(self, problems, ns, sampling, seed) -> Rollouts:
        self.calls.append([p.uid for p in problems])
        out = []
        for g, (p, n) in enumerate(zip(problems, ns)):
            for i in range(n):
                right = p.uid.startswith("mixed") and i == 0
                length = self.lengths.get(p.uid, 4)
                out.append(Trajectory(prompt_ids=[1, 2], response_ids=list(range(length)), reward=float(right), correct=right, group=g))
        return Rollouts(out, counts={"rollouts": sum(ns)})


def controller(generator, *overrides: str) -> BudgetController:
    cfg = compose(["algorithm=dapo", "rollout.max_tokens=20", *overrides])
    validate(cfg)
    sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.rollout.max_tokens)
    return BudgetController(controller_config(cfg), generator, None, sampling)


def stream(pattern):
    """Problems named by the pattern, cycled: ("mixed", "wrong", "wrong") -> mixed/0, wrong/1, wrong/2, mixed/3 ..."""
    counter = itertools.count()
    kinds = itertools.cycle(pattern)
    return lambda k: [Problem(f"{next(kinds)}/{next(counter)}", "q", "1") for _ in range(k)]


def test_a_dapo_refill_draws_a_whole_batch_and_keeps_the_first_mixed_groups():
    """Refills drew only the missing prompts, so each slot had max_rounds tries and most steps of a
    hard batch trained short; a refill is a whole batch now (verl's generation batch)."""
    gen = ScriptedGenerator()
    draw = stream(("mixed", "wrong", "wrong"))  # a third of the groups mixed
    batch = controller(gen, "trainer.batch_size=6").collect(draw(6), draw, seed=7)
    assert [len(c) for c in gen.calls] == [6, 6, 6]
    assert batch.stats["dapo/rounds"] == 3 and batch.stats["dapo/kept_groups"] == 6 == len(batch.groups)
    assert batch.stats["dapo/dropped_groups"] == 12 and batch.stats["rollouts"] == 18 * 4  # the dropped groups' spend counts
    assert all(g.problem.uid.startswith("mixed") for g in batch.groups)


def test_dapo_stops_at_max_rounds_with_a_short_batch_and_says_so(caplog):
    gen = ScriptedGenerator()
    draw = stream(("mixed", "wrong", "wrong", "wrong"))
    batch = controller(gen, "trainer.batch_size=4", "algorithm.max_rounds=2").collect(draw(4), draw, seed=7)
    assert [len(c) for c in gen.calls] == [4, 4]
    assert (batch.stats["dapo/kept_groups"], batch.stats["dapo/target_groups"], batch.stats["dapo/rounds"]) == (2, 4, 2)
    assert "2 of 4 mixed groups after 2 rounds" in caplog.text


def test_the_overlong_penalty_is_half_the_recipes_on_a_0_1_reward():
    """DAPO adds 1.0·R_len to a ±1 reward; on rlvr's 0/1 correctness the same advantages need 0.5·R_len
    (at 1.0 a right answer at L_max scored the same as a short wrong one)."""
    # L_max 20, L_c = 20 % = 4: the ramp from 16 to 20 tokens, −1 beyond
    gen = ScriptedGenerator({"mixed/0": 18, "mixed/1": 21})
    ctl = controller(gen)
    groups = ctl.sample([Problem("mixed/0", "q", "1"), Problem("mixed/1", "q", "1")], [2, 2], seed=1)
    assert [t.reward for t in groups[0].trajectories] == pytest.approx([1 - 0.5 * 0.5, -0.5 * 0.5])
    assert [t.reward for t in groups[1].trajectories] == pytest.approx([0.5, -0.5])
    assert ctl.counts["overlong_penalised"] == 4 and ctl.counts["overlong_shortest_penalised"] == 18
    whole = controller(ScriptedGenerator({"mixed/0": 21}), "algorithm.overlong_penalty_factor=1.0")
    assert [t.reward for t in whole.sample([Problem("mixed/0", "q", "1")], [2], seed=1)[0].trajectories] == [0.0, -1.0]


@pytest.mark.parametrize("override, key", [("algorithm.max_rounds=101", "algorithm.max_rounds"),
                                           ("algorithm.overlong_penalty_factor=0", "algorithm.overlong_penalty_factor")])
def test_dapo_settings_that_cannot_work_are_refused(override, key):
    from rlvr.config import ConfigError

    with pytest.raises(ConfigError, match=key):
        validate(compose(["algorithm=dapo", override]))


def test_v05_rounds_that_would_reuse_the_next_steps_seeds_are_refused():
    from rlvr.config import ConfigError
    from rlvr.seeds import ROUNDS_PER_STEP, round_seed

    assert round_seed(5, ROUNDS_PER_STEP) == round_seed(6, 0)  # why the cap
    with pytest.raises(ConfigError, match="algorithm.adaptive_rounds"):
        validate(compose(["algorithm=v05", f"algorithm.adaptive_rounds={ROUNDS_PER_STEP}"]))
    validate(compose(["algorithm=v05", f"algorithm.adaptive_rounds={ROUNDS_PER_STEP - 1}"]))


def test_a_dapo_batch_never_holds_more_groups_than_its_target():
    gen = ScriptedGenerator()
    draw = stream(("mixed", "mixed", "wrong"))  # round 1: 3 of 4 mixed; round 2 adds 3 more
    batch = controller(gen, "trainer.batch_size=4").collect(draw(4), draw, seed=7)
    assert len(batch.groups) == 4 and batch.stats["dapo/kept_groups"] == 4


class WrongAtTwoLengths(ScriptedGenerator):
    """All-wrong groups whose answers differ in length: mixed in the length-shaped reward only."""

    def generate(self, problems, ns, sampling, seed) -> Rollouts:
        self.calls.append([p.uid for p in problems])
        out = [Trajectory(prompt_ids=[1, 2], response_ids=list(range(4 if i == 0 else 18)), reward=0.0, correct=False, group=g)
               for g, (p, n) in enumerate(zip(problems, ns)) for i in range(n)]
        return Rollouts(out, counts={"rollouts": sum(ns)})


def test_the_dapo_filter_reads_correctness_not_the_shaped_reward():
    """DESIGN: the filter keeps groups mixed in accuracy; the pure function is tested, this wiring was not."""
    gen = WrongAtTwoLengths()
    batch = controller(gen, "trainer.batch_size=2", "algorithm.max_rounds=1").collect(stream(("wrong",))(2), stream(("wrong",)), seed=7)
    assert len(batch.groups) == 0 and batch.stats["dapo/dropped_reward_mixed"] == 2
