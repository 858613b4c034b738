"""VerifierPool: the Ray actor round trip (real Ray, real worker processes)."""

from __future__ import annotations

import ray

from rlvr.sandbox import RewardSpec, ScoreRequest, ScoreResult


def test_verifier_pool_actor_round_trip(ray_session):
    from rlvr.sandbox.actor import VerifierPool

    pool = VerifierPool.options(num_cpus=0.1).remote(
        [{"fn": "math", "weight": 1.0}, RewardSpec("reward_fns_for_tests:misbehave", weight=0.0)],
        num_workers=2,
        timeout_s=1.5,
        memory_mb=512,
    )
    reqs = [
        ScoreRequest(r"\boxed{45}", "45"),
        ScoreRequest("61 - 16", "45"),
        ScoreRequest(r"\boxed{\sqrt{12}}", r"2\sqrt{3}", "expression"),
        ScoreRequest("HANG_C", "45"),  # the user term hangs in C: hard kill
        ScoreRequest("The answer is (C).", "C", "choice"),
        ScoreRequest("ABORT", "45"),
    ]
    results, stats = ray.get(pool.score.remote(reqs), timeout=120)
    assert all(isinstance(r, ScoreResult) for r in results)
    assert [r.reward for r in results] == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert [r.error for r in results] == [None, None, None, "timeout", None, "crash"]
    assert stats["timeout"] == 1 and stats["crash"] == 1 and stats["items"] == 6

    # the actor's pool is whole again; then it shuts its processes down
    results, _ = ray.get(pool.score.remote([ScoreRequest(r"\boxed{1}", "1")] * 10), timeout=60)
    assert [r.reward for r in results] == [1.0] * 10
    pids = ray.get(pool.worker_pids.remote())
    assert len(pids) == 3
    ray.get(pool.close.remote())
    ray.kill(pool)


def test_a_reward_function_that_does_not_load_is_named_at_start_up(ray_session):
    """A misspelt function (the module imports, so validation's find_spec passes) killed the pool's
    creation task: the run restarted it trainer.max_restarts times and ended in a RoleFailed that
    named no cause (the AttributeError was only in logs/verifier-0.log)."""
    import pytest

    from rlvr.runtime.roles import verifier_start_error
    from rlvr.sandbox.actor import VerifierPool

    pool = VerifierPool.options(num_cpus=0.1).remote([{"fn": "reward_fns_for_tests:no_such_fn", "style": "trl"}], num_workers=1,
                                                     timeout_s=5, memory_mb=512)
    with pytest.raises(ray.exceptions.RayActorError) as died:
        ray.get(pool.__ray_ready__.remote(), timeout=120)
    error = verifier_start_error(died.value)
    assert error is not None and "AttributeError: module 'reward_fns_for_tests' has no attribute 'no_such_fn'" in str(error)
    assert verifier_start_error(RuntimeError("an engine died")) is None
