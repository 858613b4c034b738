"""`rlvr.runtime.roles.role_keys`: which settings let a run reuse the actors the previous run kept
(`cluster.keep_roles`). What a reset restores is checked on real runs in tests/e2e/test_keep_roles.py."""

from rlvr.config import algorithm_preset, compose
from rlvr.runtime.roles import role_keys, role_plan


def keys(*overrides: str) -> dict:
    # sizes given, not `auto`: auto reads the model's shapes and the data (tests/unit/test_sizing.py)
    cfg = compose(["model=tiny-random", "cluster.keep_roles=true", "rollout.kv_cache_gb=1", "learner.micro_batch_size=16", *overrides])
    return role_keys(cfg, role_plan(cfg, algorithm_preset(cfg.algorithm)), "/models/tiny")


def test_no_keys_without_keep_roles_or_where_roles_share_a_group():
    assert keys()  # keep_roles on
    assert keys("cluster.keep_roles=false") == {}
    assert keys("cluster.mode=colocated", "cluster.weight_sync=ipc") == {}
    assert keys("cluster.weight_sync=nccl") == {}


def test_what_a_reset_sets_leaves_the_keys_alone_and_what_a_process_fixes_changes_them():
    base = keys("algorithm=v05")
    assert set(base) == {"verifier", "rollout", "learner", "value"}
    assert set(keys("algorithm=grpo")) == {"verifier", "rollout", "learner"}  # no value server
    # the learner's model, optimizer, seed and LoRA are rebuilt by its reset; the run's length, data
    # and algorithm are the driver's
    for reset in ("learner.lr=1e-3", "trainer.steps=7", "learner.micro_batch_size=2", "model.lora.rank=4", "weighting=hadw"):
        assert keys("algorithm=v05", reset) == base, reset
    changed = {
        "cluster.zero_stage=2": {"learner"},
        "cluster.num_learners=2": {"learner"},
        "model.max_model_len=1024": {"rollout"},
        "rollout.kv_cache_gb=0.5": {"rollout"},
        "seed=1": {"rollout"},
        "verifier.timeout_s=3": {"verifier"},
        "verifier.terms=[{fn: math}]": {"verifier"},
        "env=calculator": {"verifier"},  # its tool runs in the verifier pool
        "value.backend=none": {"value"},
        "value.regressor=kernel": {"value"},
        "rollout.threads=1": {"verifier", "rollout", "learner", "value"},
        "logging.verbose=true": {"verifier", "rollout", "learner", "value"},
    }
    for override, roles in changed.items():
        other = keys("algorithm=v05", override)
        assert {r for r in base if other.get(r) != base[r]} == roles, override


def test_an_auto_sized_kv_cache_is_left_out_of_the_engine_key(tiny_model):
    from rlvr.runtime.sizing import kv_cache_gb

    def cfg_and_key(*overrides):
        cfg = compose(["model=tiny-random", "algorithm=grpo", "cluster.keep_roles=true", "trainer.eval_every=0", "eval.at_start=false",
                       *overrides])
        return cfg, role_keys(cfg, role_plan(cfg, algorithm_preset(cfg.algorithm)), tiny_model)["rollout"]

    (small, small_key), (large, large_key) = cfg_and_key("trainer.batch_size=1"), cfg_and_key("trainer.batch_size=16")
    assert kv_cache_gb(small, tiny_model) < kv_cache_gb(large, tiny_model)  # auto gives each job its own size
    assert small_key == large_key  # and a kept engine serves both
