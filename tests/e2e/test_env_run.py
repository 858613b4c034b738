"""`env=calculator` in training runs: multi-turn episodes through every role (the tiny model on vLLM,
the calculate tool in the verifier pool's sandboxed workers, DeepSpeed learners), with GRPO, DAPO
and V0.5, and a resumed run that draws the same episodes as the run that went straight through."""

import json
import shutil

import pytest

# The tool's description and the two worked examples take 875 of the tiny tokenizer's tokens.
TINY_CALCULATOR = ["env=calculator", "model=tiny-random", "model.max_model_len=1024", "env.max_tokens=48", "rollout.max_tokens=12",
                   "trainer.batch_size=2", "trainer.progress=false", "eval.size=2", "cluster.keep_roles=true"]
EPISODE_KEYS = ["rollouts", "gen_tokens", "reward", "env/episodes", "env/turns", "env/tool_calls", "env/turns_per_episode"]


def step_records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["dapo", "v05"])
def test_two_steps_of_calculator_episodes_train(algorithm, tmp_path, ray_session, tiny_model):
    from rlvr.config import compose
    from rlvr.train.loop import train

    cfg = compose([*TINY_CALCULATOR, f"algorithm={algorithm}", "trainer.steps=2", "trainer.eval_every=0", "eval.at_start=false",
                   "trainer.save_every=0", *(["algorithm.warmup_prompts=4"] if algorithm == "v05" else []), f"run_dir={tmp_path / 'run'}"])
    steps = [h for h in train(cfg)["history"] if h["step"] >= 1]  # V0.5 logs its warm start as step 0
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        assert h["env/episodes"] == h["rollouts"] > 0 and h["env/turns_per_episode"] >= 1
        assert sum(v for k, v in h.items() if k.startswith("env/ended_share/")) == pytest.approx(1.0)
        assert h["verifier_error"] == 0 and h["verifier_timeout"] == 0


@pytest.mark.slow
def test_calculator_episodes_train_evaluate_and_resume_to_the_same_episodes(tmp_path, ray_session, tiny_model):
    from rlvr.config import compose
    from rlvr.train.loop import train

    def run(run_dir):
        return train(compose([*TINY_CALCULATOR, "algorithm=grpo", "trainer.steps=2", "trainer.eval_every=2", "trainer.save_every=1",
                              f"run_dir={run_dir}"]))

    straight = tmp_path / "straight"
    history = run(straight)["history"]
    assert [h["step"] for h in history] == [0, 1, 2]
    assert history[-1]["learner/tokens"] > 0
    assert "eval/accuracy" in history[-1] and history[-1]["eval/env/turns_per_episode"] >= 1

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_00000002")
    run(resumed)  # from the step-1 checkpoint: step 2 again
    a, b = step_records(straight)[2], step_records(resumed)[2]
    assert {k: b[k] for k in EPISODE_KEYS} == {k: a[k] for k in EPISODE_KEYS}
