"""The roles' parts that run in one process, without Ray: engine and learner settings translated from
the config tree, the rollout engine's bookkeeping (weight version, truncation, sleep) on the real HF
engine, the engine backends' registry, DeepSpeed's config, fault metrics, and the heap's mmap threshold."""

import math

import psutil
import pytest
import torch
from helpers import tiny_engine_config, tiny_learner_config

from rlvr.config import compose
from rlvr.rollout.engines import SamplingConfig, initial_weights, make_engine
from rlvr.types import GenerationRequest


# ---- rlvr/rollout/engines.py ------------------------------------------------------------------
def test_make_engine_builds_the_named_backend_and_rejects_others(tiny_model):
    from rlvr.rollout.hf_engine import HFEngine

    assert isinstance(make_engine(tiny_engine_config(tiny_model, "rollout=hf")), HFEngine)
    with pytest.raises(ValueError, match="unknown rollout backend 'nope'; known: vllm, hf"):
        make_engine(tiny_engine_config(tiny_model, "rollout=hf", backend="nope"))


def test_initial_weights_reads_every_tensor_and_names_an_empty_folder(tiny_model, tmp_path):
    from pathlib import Path

    from safetensors import safe_open

    names = dict(initial_weights(tiny_model))
    expected = set()
    for f in Path(tiny_model).glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            expected |= set(st.keys())
    assert expected and set(names) == expected
    assert all(isinstance(t, torch.Tensor) for t in names.values())
    with pytest.raises(FileNotFoundError, match="no .safetensors file"):
        list(initial_weights(str(tmp_path)))


# ---- rlvr/rollout/pool.py: RolloutEngine's logic in this process, on the real HF engine --------
def _engine(tiny_model):
    """The actor's class without its __init__, which would set this test process's thread count and
    kernel-cache environment as it does an actor's."""
    from rlvr.rollout.pool import RolloutEngine

    cls = RolloutEngine.__ray_metadata__.modified_class
    e = cls.__new__(cls)
    e.engine = make_engine(tiny_engine_config(tiny_model, "rollout=hf"))
    e.model_path, e.version, e.asleep = tiny_model, 0, False
    e.device = torch.device("cpu")
    return e


def test_resident_mb_is_the_resident_set():
    from rlvr.rollout.pool import resident_mb

    rss = psutil.Process().memory_info().rss / 2**20
    assert abs(resident_mb() - rss) < 0.2 * rss


def test_engine_samples_record_version_truncation_and_prompt(tiny_model):
    e = _engine(tiny_model)
    stats = e._load(3, initial_weights(tiny_model))
    assert e.version == 3 and e.weight_version() == 3
    assert set(stats) == {"load_s", "rss_mb", "peak_rss_mb"} and stats["load_s"] >= 0
    reqs = [GenerationRequest(7, "What is 2 + 3?", 2), GenerationRequest(4, "Compute 45 + 12.", 1)]
    samples = e.generate(reqs, SamplingConfig(1.0, 1.0, 3), seed=0)
    assert [s.prompt_index for s in samples] == [7, 7, 4]
    assert all(s.weight_version == 3 for s in samples)
    assert all(s.truncated == (s.finish_reason == "length") for s in samples)
    assert any(s.truncated for s in samples)
    # the same seed draws the same samples
    again = e.generate(reqs, SamplingConfig(1.0, 1.0, 3), seed=0)
    assert [torch.as_tensor(s.response_ids).tolist() for s in again] == [torch.as_tensor(s.response_ids).tolist() for s in samples]


def test_engine_refuses_work_while_asleep(tiny_model):
    e = _engine(tiny_model)
    e.sleep()
    assert e.asleep
    e.sleep()  # twice: still asleep, no error
    with pytest.raises(RuntimeError, match="asked to generate while asleep"):
        e.generate([GenerationRequest(0, "hi", 1)], SamplingConfig(1.0, 1.0, 2), seed=0)
    with pytest.raises(RuntimeError, match="asked to load weights while asleep"):
        e._load(1, initial_weights(tiny_model))
    e.wake_up()
    assert not e.asleep
    assert len(e.generate([GenerationRequest(0, "hi", 1)], SamplingConfig(1.0, 1.0, 2), seed=0)) == 1


def test_pool_without_requests_asks_no_engine():
    from rlvr.rollout.pool import RolloutPool

    pool = RolloutPool([])
    assert pool.generate([], SamplingConfig(1.0, 1.0, 2), seed=0) == []
    assert pool.policy.max_restarts == 0  # no start: nothing to restart with
    assert RolloutPool([], start=lambda i: None, max_restarts=2).policy.max_restarts == 2
    assert RolloutPool([], max_restarts=2).policy.max_restarts == 0  # budget without a way to restart: none


# ---- rlvr/runtime/roles.py --------------------------------------------------------------------
def _cfg(*overrides):
    return compose(["model=tiny-random", "rollout.kv_cache_gb=1", "learner.micro_batch_size=16", *overrides])


def test_engine_config_translates_the_config_tree(tiny_model):
    from rlvr.runtime.roles import engine_config

    cfg = _cfg("seed=11")
    base = engine_config(cfg, tiny_model)
    assert base.seed == 11 and base.model_path == tiny_model and base.kv_cache_gb == 1.0
    assert base.sleep_mode is False and base.tensor_parallel == cfg.cluster.tensor_parallel
    assert base.dtype == cfg.model.rollout_dtype and base.threads == cfg.rollout.threads
    assert engine_config(_cfg("cluster.mode=colocated", "cluster.weight_sync=ipc"), tiny_model).sleep_mode is True
    assert engine_config(_cfg("rollout=hf"), tiny_model).kv_cache_gb == 0.0  # not sized for HF
    assert engine_config(_cfg("rollout.kv_cache_gb=auto"), tiny_model, size_auto_cache=False).kv_cache_gb == 0.0
    assert engine_config(_cfg("rollout.kv_cache_gb=0.5"), tiny_model, size_auto_cache=False).kv_cache_gb == 0.5
    assert engine_config(_cfg("rollout.kv_cache_gb=auto"), tiny_model).kv_cache_gb > 0


def test_learner_config_translates_the_config_tree(tiny_model):
    from rlvr.runtime.roles import learner_config

    lc = learner_config(_cfg("cluster.zero_stage=2", "rollout.threads=3", "seed=5", "learner.lr=0.25"), tiny_model)
    assert (lc.zero_stage, lc.threads, lc.seed, lc.lr, lc.model_path) == (2, 3, 5, 0.25, tiny_model)


def test_actor_env_adds_torch_threads_only_to_computing_roles(tmp_path):
    from rlvr.runtime.roles import actor_env

    cfg = _cfg("rollout.threads=3", f"run_dir={tmp_path}")
    assert actor_env(cfg, "rollout", 1, True)["env_vars"]["OMP_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in actor_env(cfg, "verifier")["env_vars"]


def test_environment_tools():
    from rlvr.runtime.roles import environment_tools

    assert environment_tools(_cfg("env=none")) == []
    assert environment_tools(_cfg("env=calculator"))


def test_verifier_start_error_names_the_cause():
    from rlvr.runtime.roles import verifier_start_error
    from rlvr.sandbox.messages import VerifierStartError

    err = verifier_start_error(RuntimeError("Traceback...\nVerifierStartError: no module named foo"))
    assert isinstance(err, VerifierStartError) and "no module named foo" in str(err)
    assert verifier_start_error(RuntimeError("an engine died")) is None


def test_nccl_refuses_replacements_before_touching_any_actor():
    from rlvr.runtime.faults import RestartPolicy, RoleFailed
    from rlvr.runtime.roles import Roles, reload_engine, restart_learners

    with pytest.raises(RoleFailed, match="nccl group cannot take a new member"):
        reload_engine("nccl", [], None, 1, 1.0)
    roles = Roles(None, RestartPolicy("learner", 5, None), {})
    with pytest.raises(RoleFailed, match="nccl group with the engines"):
        restart_learners(_cfg("cluster.weight_sync=nccl"), roles, "/nowhere", RuntimeError("x"))
    assert roles.learner_restarts.restarts == 0


def test_fault_metrics_sum_every_role():
    from rlvr.runtime.faults import RestartPolicy
    from rlvr.runtime.roles import Roles, fault_metrics

    roles = Roles(None, RestartPolicy("learner", 5, None), {})
    roles.learner_restarts.restarts, roles.learner_restarts.seconds_lost = 2, 3.0
    roles.rollout.policy.restarts, roles.rollout.policy.seconds_lost = 1, 4.0
    assert fault_metrics(roles) == {"faults/rollout_restarts": 1, "faults/learner_restarts": 2, "faults/seconds_lost": 7.0}


def test_restart_policy_adds_up_each_fault_s_seconds_and_refuses_past_its_budget():
    """Several failure rounds in one step: each one's seconds add to the role's total (one overwriting
    the last under-reported the loss); the budget's last death names the budget and the error."""
    import time

    from rlvr.runtime.faults import RestartPolicy, RoleFailed

    policy = RestartPolicy("rollout", 1, None)
    now = time.perf_counter()
    policy.lost(now - 10.0)
    policy.spans_lost[-1] = (now - 10.0, now - 7.0)  # a first round 10 s ago, 3 s long
    policy.lost(now - 4.0)
    assert 7.0 <= policy.seconds_lost < 7.5
    policy.lost(now - 5.0)  # a wait that overlapped the second round (another thread's) adds what it did not cover
    assert 8.0 <= policy.seconds_lost < 8.5
    policy.charge("engine 0", "10.0.0.1", RuntimeError("gone"))
    assert policy.restarts == 1
    with pytest.raises(RoleFailed, match=r"died 2 times in this run, more than trainer.max_restarts=1 allows; "
                                         r"the last was engine 1 on 10.0.0.2 \(RuntimeError\): again"):
        policy.charge("engine 1", "10.0.0.2", RuntimeError("again"))


def test_roles_kept_in_an_earlier_ray_session_are_not_claimed(monkeypatch):
    """After ray.shutdown and a new ray.init (the simulated-cluster tests, a notebook) the handles kept
    from the old session point at actors that are gone: a run with the same keys must start its own."""
    from rlvr.runtime import roles

    monkeypatch.setattr(roles.ray, "is_initialized", lambda: True)
    monkeypatch.setattr(roles, "ray_session", lambda: "session_now")
    key = ("rollout-key",)
    monkeypatch.setitem(roles._kept, "rollout", roles.KeptRole(key, None, [], "session_before"))
    assert roles.claim_kept({"rollout": key}) == {} and roles._kept == {}
    kept = roles.KeptRole(key, None, [], "session_now")
    monkeypatch.setitem(roles._kept, "rollout", kept)
    assert roles.claim_kept({"rollout": key}) == {"rollout": kept}


# ---- rlvr/learner/schedule.py and actor.py ----------------------------------------------------------------
def test_lr_schedules_are_hugging_face_s_and_verl_s():
    """W = 2 warm-up steps of T = 6: 0, ½, then constant 1; linear and cosine fall from 1 to m = 0.1
    over the 4 steps after the warm-up (HF's linear and cosine at m = 0, verl's cosine with min_lr_ratio)."""
    from rlvr.learner.schedule import lr_factor

    def curve(schedule, m=0.1):
        return [lr_factor(s, 2, 6, schedule, m) for s in range(7)]

    assert curve("constant") == [0.0, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert curve("linear") == pytest.approx([0.0, 0.5, 1.0, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.25, 0.1])
    cosine = [0.0, 0.5] + [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)) for p in (0, 0.25, 0.5, 0.75, 1)]
    assert curve("cosine") == pytest.approx(cosine)
    assert lr_factor(9, 2, 6, "cosine", 0.1) == pytest.approx(0.1)  # past T (trainer.steps raised on resume): it stays at m
    assert [lr_factor(s, 0, 4, "linear", 0.0) for s in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]  # no warm-up: HF's linear
    assert lr_factor(9, 2, 6, "linear", 0.1) == pytest.approx(0.1) and lr_factor(12, 0, 6, "linear", 0.0) == 0.0  # past T: not below m


def test_a_constant_lr_without_warm_up_has_no_scheduler_and_the_others_do(tiny_model):
    """Checkpoints from before the schedules hold no scheduler state: a scheduler there would fail to
    load them, so the default has none; any other setting is DeepSpeed's to step and to checkpoint."""
    from torch.optim import SGD

    from rlvr.learner.actor import lr_scheduler

    assert lr_scheduler(tiny_learner_config(tiny_model)) is None
    assert lr_scheduler(tiny_learner_config(tiny_model, "learner.lr_warmup_steps=2")) is not None  # a warm-up alone
    assert lr_scheduler(tiny_learner_config(tiny_model, "learner.lr_schedule=linear")) is not None  # a decay alone
    overrides = ["learner.lr_warmup_steps=2", "learner.lr_schedule=cosine", "learner.min_lr_ratio=0.1", "trainer.steps=3", "algorithm=gspo"]
    cfg = tiny_learner_config(tiny_model, *overrides)
    tree = compose(["model=tiny-random", *overrides])
    assert cfg.total_optimizer_steps == 3 * tree.learner.mini_batches * tree.learner.epochs == 12  # GSPO: 4 mini-batches a batch
    optimizer = SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = lr_scheduler(cfg)(optimizer)
    lrs = []
    for _ in range(cfg.total_optimizer_steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:2] == [0.0, 0.5] and lrs[2] == 1.0 and lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (len(lrs) - 3) / (len(lrs) - 2))))


# ---- rlvr/learner/actor.py --------------------------------------------------------------------
def test_deepspeed_config_clipping_and_optimizer(tiny_model):
    from rlvr.learner.actor import _clips_itself, deepspeed_config

    fp32 = tiny_learner_config(tiny_model, zero_stage=0, dtype="float32", grad_clip=0.7, lr=0.01, weight_decay=0.2)
    assert _clips_itself(fp32)
    assert deepspeed_config(fp32)["gradient_clipping"] == 0.0
    assert not _clips_itself(tiny_learner_config(tiny_model, zero_stage=1, dtype="float32"))
    bf16 = tiny_learner_config(tiny_model, zero_stage=0, dtype="bfloat16", grad_clip=0.7)
    assert not _clips_itself(bf16)
    ds = deepspeed_config(bf16)
    assert ds["gradient_clipping"] == 0.7 and ds["bf16"]["enabled"] is True
    z2 = deepspeed_config(tiny_learner_config(tiny_model, zero_stage=2, dtype="float32", grad_clip=0.7, lr=0.01, weight_decay=0.2))
    assert z2["gradient_clipping"] == 0.7 and z2["zero_optimization"]["stage"] == 2 and z2["bf16"]["enabled"] is False
    p = z2["optimizer"]["params"]
    assert (p["lr"], p["weight_decay"], p["betas"]) == (0.01, 0.2, [0.9, 0.999])


def test_padding_share_only_on_shared_prompt_paths(tiny_model):
    from rlvr.learner.actor import PolicyLearner

    cls = PolicyLearner.__ray_metadata__.modified_class
    learner = cls.__new__(cls)
    learner.cfg = tiny_learner_config(tiny_model, share_prompts=False, gradient_checkpointing=False)
    assert math.isnan(learner._padding_share([]))
    learner.cfg = tiny_learner_config(tiny_model, share_prompts=True, gradient_checkpointing=True)
    assert math.isnan(learner._padding_share([]))
    learner.cfg = tiny_learner_config(tiny_model, share_prompts=True, gradient_checkpointing=False)
    assert learner._padding_share([]) == 0.0  # the shared-prompt path computes a share


# ---- rlvr/learner/actor.py: the threshold set is glibc's mmap threshold (not another mallopt knob) --
MAPPED_BELOW = '''
import sys, torch
from rlvr.learner.actor import map_large_allocations

map_large_allocations(4 << 20)
before = heap_info().hblkhd
block = torch.empty(1 << 20, dtype=torch.uint8)  # 1 MiB: above glibc's 128 KiB start, below the 4 MiB set
print((heap_info().hblkhd - before) >> 10)
'''


def test_blocks_below_the_threshold_stay_on_the_heap():
    import subprocess
    import sys

    from helpers import MALLINFO2

    from rlvr.learner.actor import _glibc

    if _glibc() is None:
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", MALLINFO2 + MAPPED_BELOW], check=True, capture_output=True, text=True).stdout
    assert int(out.split()[-1]) == 0, out


def test_one_replacement_waited_out_by_two_threads_is_lost_once():
    """An async run's weight sync and its generating thread both wait for one engine's replacement,
    and each added its wait: 17 s lost in a run 9 s long after the kill. Spans already counted are not
    counted again; spans apart add up."""
    import time

    from rlvr.runtime.faults import RestartPolicy

    policy = RestartPolicy("rollout", 5, None)
    start = time.perf_counter()
    time.sleep(0.05)
    policy.lost(start)  # the sync's wait
    policy.lost(start + 0.01)  # the generator's, inside the same span
    elapsed = time.perf_counter() - start
    assert 0.05 <= policy.seconds_lost <= elapsed
    later = time.perf_counter()
    time.sleep(0.02)
    policy.lost(later)  # a second fault later on
    assert 0.07 <= policy.seconds_lost <= time.perf_counter() - start


def test_a_wait_that_began_before_an_earlier_counted_one_counts_to_its_own_end():
    """The newer span sorts first; merging kept the older span's end instead of the later of the two."""
    import time

    from rlvr.runtime.faults import RestartPolicy

    policy = RestartPolicy("rollout", 5, None)
    t1 = time.perf_counter()
    policy.lost(t1 - 1.0)
    time.sleep(0.3)
    policy.lost(t1 - 5.0)  # another thread's wait, begun earlier, ended now: it covers the first
    assert policy.seconds_lost >= 5.25
