"""The samplers and the BudgetController's round of generation, driven by a scripted generator:
each problem's uid says how many of its rollouts are right and how long they are, so the
controller's and samplers' decisions are checked exactly without an engine."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

from rlvr.config import compose, validate
from rlvr.generation.base import Rollouts
from rlvr.rollout.engines import SamplingConfig
from rlvr.train.controller import BudgetController, step_rates
from rlvr.train.loop import controller_config
from rlvr.types import Problem, Trajectory


class ScriptedGenerator:
    """Rollouts whose correctness and length come from the problem: "mixed/..." has one right answer
    in each group, "wrong/..." none, "right/..." all; `lengths[uid]` sets every answer's length (default 4 tokens).
    Each call reports one second of generation."""

    def __init__(self, lengths: dict[str, int] | None = None):
        self.calls: list[list[str]] = []
        self.lengths = lengths or {}

    def generate(self, problems, ns, sampling, seed) -> Rollouts:
        self.calls.append([p.uid for p in problems])
        out = []
        for g, (p, n) in enumerate(zip(problems, ns)):
            for i in range(n):
                right = p.uid.startswith("right") or (p.uid.startswith("mixed") and i == 0)
                length = self.lengths.get(p.uid, 4)
                out.append(Trajectory(prompt_ids=[1, 2], response_ids=list(range(length)), reward=float(right), correct=right, group=g))
        return Rollouts(out, counts={"rollouts": sum(ns)}, timings={"generate": 1.0})


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
    # the batch's accuracy is the kept groups' (1 in 4); over everything generated it is 6 right of 72
    assert batch.stats["accuracy_generated"] == 6 / 72 and batch.stats["overlong_penalty_mean"] == 0.0
    assert not {"generated", "generated_correct", "overlong_penalty_sum"} & batch.stats.keys()


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
    assert step_rates(dict(ctl.counts))["overlong_penalty_mean"] == pytest.approx((2 * -0.25 + 2 * -0.5) / 4)
    ctl.sample([Problem("mixed/1", "q", "1")], [2], seed=2)  # a second round's penalties add to the first's
    assert step_rates(dict(ctl.counts))["overlong_penalty_mean"] == pytest.approx((2 * -0.25 + 4 * -0.5) / 6)
    assert step_rates({"reward_term_sum/0:math": 1.0, "reward_term_count/0:math": 1}) == {"reward_term/0:math": 1.0}
    assert step_rates({"reward_term_sum/0:my:fn": 0.0, "reward_term_count/0:my:fn": 0}) == {}  # failed on every item: no mean
    whole = controller(ScriptedGenerator({"mixed/0": 21}), "algorithm.overlong_penalty_factor=1.0")
    assert [t.reward for t in whole.sample([Problem("mixed/0", "q", "1")], [2], seed=1)[0].trajectories] == [0.0, -1.0]


@pytest.mark.parametrize("override, key", [("algorithm.max_rounds=0", "algorithm.max_rounds"),
                                           ("algorithm.overlong_penalty_factor=0", "algorithm.overlong_penalty_factor")])
def test_dapo_settings_that_cannot_work_are_refused(override, key):
    from rlvr.config import ConfigError

    with pytest.raises(ConfigError, match=key):
        validate(compose(["algorithm=dapo", override]))


def test_v05_rounds_are_bounded_below_only():
    """Round seeds are hashed, so no round count reaches another step's seeds (the cap of 99 was theirs)."""
    from rlvr.config import ConfigError

    with pytest.raises(ConfigError, match="algorithm.adaptive_rounds"):
        validate(compose(["algorithm=v05", "algorithm.adaptive_rounds=-1"]))
    validate(compose(["algorithm=v05", "algorithm.adaptive_rounds=0"]))
    validate(compose(["algorithm=v05", "algorithm.adaptive_rounds=1000"]))


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
        return Rollouts(out, counts={"rollouts": sum(ns)}, timings={"generate": 1.0})


def test_the_dapo_filter_reads_correctness_not_the_shaped_reward():
    """DESIGN: the filter keeps groups mixed in accuracy; the pure function is tested, this wiring was not."""
    gen = WrongAtTwoLengths()
    batch = controller(gen, "trainer.batch_size=2", "algorithm.max_rounds=1").collect(stream(("wrong",))(2), stream(("wrong",)), seed=7)
    assert len(batch.groups) == 0 and batch.stats["dapo/dropped_reward_mixed"] == 2


# ---- V0.5's sampler (`rlvr.sampling.adaptive`) with a real value model in this process -------------


class ValueRoleHere:
    """The value role's interface (`rlvr.runtime.faults.RestartingRole`: call, call_or, update,
    snapshot, load) over a real value model in this process, as `ValueServer` answers; ``down``: the
    server is dead, so `call_or` gives its default. Records the context each predict saw."""

    def __init__(self, model, down: bool = False):
        self.model, self.down, self.predicted_with = model, down, []

    def call(self, method, *args):
        if method == "predict":
            self.predicted_with.append((list(args[0]), list(self.model._ctx.prompts)))
            prior, unc = self.model.predict(list(args[0]))
            return prior.tolist(), unc.tolist()
        return getattr(self.model, method)(*args)

    def call_or(self, default, method, *args):
        return default if self.down else self.call(method, *args)

    update = call

    def snapshot(self):
        return self.model.state_dict()

    def load(self, state):
        self.model.load_state_dict(state)


def v05_controller(generator, value_role, *overrides: str) -> BudgetController:
    cfg = compose(["algorithm=v05", "rollout.max_tokens=20", "algorithm.warmup_prompts=0", *overrides])
    validate(cfg)
    sampling = SamplingConfig(temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p, max_tokens=cfg.rollout.max_tokens)
    return BudgetController(controller_config(cfg), generator, value_role, sampling)


def test_v05_spends_at_most_budget_factor_less_one_of_the_base_rollouts_on_extras():
    """DESIGN: the step's budget is 1.5× the base rollouts, so the extras are 0.5× (n 4, 8 prompts: 16)."""
    from rlvr.value import ConstantValueModel

    draw = stream(("right", "mixed", "wrong"))  # prompts that differ: a constant prior is worth testing with more rollouts
    batch = v05_controller(ScriptedGenerator(), ValueRoleHere(ConstantValueModel()), "trainer.batch_size=8").collect(draw(8), draw, seed=7)
    extra = sum(d["extra"] for d in batch.decisions)
    assert 0 < extra <= 16 and batch.stats["rollouts"] == 32 + extra


def test_v05_spends_a_budget_of_exactly_one_chunk():
    """2 prompts, n 4, factor 1.5: a budget of 4 = Δ is one chunk to spend, not none."""
    from rlvr.value import ConstantValueModel

    draw = stream(("right", "mixed"))
    batch = v05_controller(ScriptedGenerator(), ValueRoleHere(ConstantValueModel()), "trainer.batch_size=2").collect(draw(2), draw, seed=7)
    assert [d["extra"] for d in batch.decisions] == [0, 4]


def test_v05_s_context_learns_the_measured_success_rate_not_the_prior():
    """DESIGN: (x, p̂) enters the value context."""
    from rlvr.value import ConstantValueModel

    model = ConstantValueModel(0.9, 0.5)
    batch = v05_controller(ScriptedGenerator(), ValueRoleHere(model), "trainer.batch_size=2", "algorithm.adaptive_rounds=0").collect(
        stream(("mixed", "wrong"))(2), stream(("mixed",)), seed=7)
    assert [d["prior"] for d in batch.decisions] == pytest.approx([0.9, 0.9])
    assert model._ctx.success == [0.25, 0.0]  # 1 of 4 right, 0 of 4


def test_a_dead_value_server_s_stand_in_prior_is_not_trusted():
    """Its 0.5 is uninformed: rejected outright, and the calibration window does not learn from it."""
    from rlvr.value import ConstantValueModel

    ctl = v05_controller(ScriptedGenerator(), ValueRoleHere(ConstantValueModel(), down=True), "trainer.batch_size=4")
    batch = ctl.collect(stream(("mixed",))(4), stream(("mixed",)), seed=7)
    assert batch.stats["v05/priors_missing"] == 4 and batch.stats["v05/rejected"] == 4
    assert all(d["baseline"] == 0.25 for d in batch.decisions)  # the batch's own p̂


def test_v05_s_warm_start_predicts_each_prompt_without_its_own_outcome_in_the_context():
    """Two-fold cross-fitting: no warm-up prior has seen its own prompt's outcome; the context then
    holds every warm-up pair."""
    from rlvr.sampling.adaptive import warm_start
    from rlvr.value import ConstantValueModel

    role = ValueRoleHere(ConstantValueModel())
    problems = [Problem(f"mixed/{i}", f"question {i}", "1") for i in range(6)]
    out = warm_start(v05_controller(ScriptedGenerator(), role, "trainer.batch_size=4"), problems, seed=3)
    assert len(role.predicted_with) == 2
    for targets, context in role.predicted_with:
        assert context and not set(targets) & set(context)
    assert sorted(role.model._ctx.prompts) == sorted(p.question for p in problems) and out["warmup/prompts"] == 6
    # one warm-up prompt: its fold predicts from an empty context, a stand-in the window must not learn
    ctl = v05_controller(ScriptedGenerator(), ValueRoleHere(ConstantValueModel()), "trainer.batch_size=4")
    assert warm_start(ctl, problems[:1], seed=3)["v05/window"] == 0


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def test_engine_seeds_of_a_runs_generate_calls_never_collide():
    """A mutant of seeds.py `call * 1000 + engine` -> `call + engine`: engine 1 of round r reseeded torch as
    engine 0 of round r+1 did (rlvr/rollout/pool.py manual_seed per call)."""
    from rlvr.seeds import engine_seed, round_seed, step_seed

    seeds = [engine_seed(round_seed(step_seed(7, t), r), e) for t in range(1, 4) for r in range(200) for e in range(8)]
    assert len(set(seeds)) == len(seeds)


@pytest.mark.parametrize("seed, step, other", [(1, 998, ("oracle", 97)), (0, 10_000, ("evaluation", 0))])
def test_a_long_runs_rollouts_never_draw_an_oracle_or_evaluation_stream(seed, step, other):
    """The arithmetic seeds met: seed=1's step 998 drew the oracle's engine seeds of step 97, and
    seed=0's step 10,000 those of the first evaluation. Hashed, every kind's seeds are apart."""
    from rlvr import seeds as S

    engines = lambda call: {S.engine_seed(call, e) for e in range(4)}  # noqa: E731
    rollouts = set().union(*(engines(S.round_seed(S.step_seed(seed, step), r)) for r in range(3)))
    kind, at = other
    assert not rollouts & engines(getattr(S, f"{kind}_seed")(seed, at))
    everything = [getattr(S, f"{k}_seed")(s, t) for k in ("step", "oracle", "evaluation") for s in range(3) for t in range(2000)]
    everything += [S.turn_seed(c, t) for c in everything[:50] for t in range(8)]
    assert len(set(everything)) == len(everything)
    assert all(0 <= x < 2**63 for x in everything)  # torch.manual_seed and random.Random take them


def test_two_runs_seeds_do_not_share_step_seeds():
    """A mutant of seeds.py:17 `seed * 100003 + step` -> `seed + step`: run seed=1 step 1 drew what run seed=2
    step 0 drew (replicate runs for error bars correlated)."""
    from rlvr.seeds import step_seed

    seeds = [step_seed(s, t) for s in range(5) for t in range(1000)]
    assert len(set(seeds)) == len(seeds)


def test_controller_counts_and_timings_add_up_over_rounds():
    ctl = controller(ScriptedGenerator({"mixed/a": 18, "mixed/b": 21, "mixed/c": 4}))
    ctl.sample([Problem("mixed/b", "q", "1")], [2], seed=1)  # 21 tokens: penalised
    ctl.sample([Problem("mixed/a", "q", "1"), Problem("mixed/c", "q", "1")], [2, 2], seed=2)  # 18: penalised, 4: not
    assert ctl.counts["rounds"] == 2 and ctl.timings["generate"] == 2.0 and ctl.counts["rollouts"] == 6
    assert ctl.counts["overlong_penalised"] == 4 and ctl.counts["overlong_shortest_penalised"] == 18
    ctl.timed("x", time.sleep, 0.02)
    ctl.timed("x", lambda: None)
    assert ctl.timings["x"] >= 0.02 and len(ctl.timings) == 2


def test_each_collect_reports_its_own_step_only():
    ctl = controller(ScriptedGenerator(), "trainer.batch_size=2", "algorithm.max_rounds=1")
    draw = stream(["mixed"])
    first = ctl.collect(draw(2), draw, seed=1).stats
    second = ctl.collect(draw(2), draw, seed=2).stats
    assert first["rounds"] == second["rounds"] and first["rollouts"] == second["rollouts"]


def test_controller_state_round_trips_the_v05_window():
    a = controller(ScriptedGenerator())
    a.v05.history = {"prior": torch.rand(3, dtype=torch.float64), "k": torch.rand(3, dtype=torch.float64)}
    b = controller(ScriptedGenerator())
    b.load_state_dict(a.state_dict())
    assert b.v05.history is not None and all(torch.equal(b.v05.history[k], v) for k, v in a.v05.history.items())
