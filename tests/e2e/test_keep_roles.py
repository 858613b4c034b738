"""`cluster.keep_roles`: a run hands its actors to the next run of the process, which resets them
instead of starting its own. A run on kept actors must be the run a fresh start gives, record
for record; a role whose key differs is started anew and the kept one stopped; a kept actor that
died is noticed and every role started anew. (Which settings make a role's key: tests/unit/test_keep_roles.py.)"""

import pytest
import ray
from helpers import TINY

import rlvr.runtime.roles as roles
from rlvr.config import compose
from rlvr.train.loop import train
from scripts.compare_records import FILES, differences, load

# every role, and the state each keeps: V0.5's value context, HA-DW's weights, a recomputed π_old
# over two mini-batches, the oracle's extra samples and the held-out evaluation's
RUN = TINY + ["algorithm=v05", "weighting=hadw", "algorithm.warmup_prompts=4", "learner.mini_batches=2",
              "eval.oracle.samples=4", "trainer.save_every=0"]


def kept_actor_ids() -> dict[str, list[str]]:
    return {role: [a._actor_id.hex() for a in k.actors] for role, k in roles._kept.items()}


@pytest.mark.slow
def test_a_run_on_kept_actors_equals_a_fresh_run_and_a_changed_role_starts_anew(tmp_path, ray_session, tiny_model):
    roles.release_kept_roles()
    train(compose(RUN + [f"run_dir={tmp_path / 'fresh'}"]))
    first = kept_actor_ids()
    assert set(first) == {"verifier", "value", "rollout", "learner"}

    train(compose(RUN + [f"run_dir={tmp_path / 'kept'}"]))
    assert kept_actor_ids() == first  # the same four actors ran the second run
    for name in FILES:
        fresh, kept = load(tmp_path / "fresh", name), load(tmp_path / "kept", name)
        # the oracle's gradient cosine sums the whole gradient, in an order that follows its buffers'
        # alignment in the process: checked to 1e-6 (`differences`), not bitwise
        cosines = [[r.pop(k) for r in records for k in sorted(r) if k.startswith("oracle/grad_cosine")] for records in (fresh, kept)]
        diffs, max_rel = differences(fresh, kept)
        assert len(fresh) == len(kept) > 0 and not diffs and max_rel == 0.0, (name, diffs[:3])
        assert cosines[0] == pytest.approx(cosines[1], rel=1e-6, nan_ok=True)
    # each actor writes to the run it serves
    for log in ("learner-0", "rollout-0", "value-0", "verifier-0"):
        assert (tmp_path / "kept" / "logs" / f"{log}.log").exists(), log

    # GRPO with other reward terms: no value server, a new verifier pool; engine and learner reset
    old_value = roles._kept["value"].actors[0]
    # (the engine's `auto` cache differs from the first job's: its largest generate call does)
    other = TINY + ["algorithm=grpo", "trainer.steps=1", "verifier.terms=[{fn: 'e2e_rewards:odd_length', weight: 1.0}]"]
    train(compose(other + [f"run_dir={tmp_path / 'other'}"]))
    now = kept_actor_ids()
    assert set(now) == {"verifier", "rollout", "learner"}
    assert now["rollout"] == first["rollout"] and now["learner"] == first["learner"] and now["verifier"] != first["verifier"]
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(old_value.ready.remote(), timeout=60)

    # a kept engine that died meanwhile: every role starts anew, and the run trains
    ray.kill(roles._kept["rollout"].actors[0])
    history = train(compose(other + [f"run_dir={tmp_path / 'after_death'}"]))["history"]
    assert [h["step"] for h in history if h["step"] > 0] == [1]
    assert kept_actor_ids()["rollout"] != first["rollout"]
    assert kept_actor_ids()["learner"] != first["learner"]

    # what a run without keep_roles (or the end of a sweep) does with the kept roles: stop them
    engine = roles._kept["rollout"].actors[0]
    roles.release_kept_roles()
    assert roles._kept == {}
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(engine.weight_version.remote(), timeout=60)
