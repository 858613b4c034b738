"""Two training steps through every role: real Ray, vLLM (CPU), DeepSpeed and math-verify."""

import json
from pathlib import Path

import pytest

from rlvr.config import compose
from rlvr.trainer import train

TINY = [
    "model=tiny-random",
    "trainer.steps=2",
    "trainer.batch_size=4",
    "trainer.eval_every=2",
    "eval.size=4",
    "rollout.max_tokens=16",
    "algorithm.overlong_buffer=4",
    "learner.lr=1e-3",
    "learner.micro_batch_size=8",
    "verifier.timeout_s=10",
    # the first term decides correctness: odd_length, since a random model never earns the strict math
    # term and DAPO's filter (on correctness) would drop every group
    "verifier.terms=[{fn: 'e2e_rewards:odd_length', weight: 1.0}, {fn: math, weight: 1.0}]",
]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "cispo", "v05"])
def test_two_steps_every_role(algorithm, tmp_path, ray_session, tiny_model):
    # grpo also covers sampled pass@k in evaluation and the TensorBoard and (offline) wandb loggers.
    extra = ["eval.n_samples=3", "logging.tensorboard=true", "logging.wandb=true"] if algorithm == "grpo" else []
    cfg = compose(TINY + extra + [f"algorithm={algorithm}", f"run_dir={tmp_path / algorithm}"])
    result = train(cfg)
    history = result["history"]
    steps = [h for h in history if h["step"] >= 1]
    assert [h["step"] for h in steps] == [1, 2]
    for h in steps:
        assert h["rollouts"] >= 4 * 4 if algorithm != "dapo" else h["rollouts"] >= 4
        assert h["sync/bytes"] > 1_000_000  # the whole tiny model went to the engines
        assert h["learner/tokens"] > 0
        assert h["learner/grad_norm"] > 0  # odd_length splits groups: advantages are nonzero
        assert h["verifier_timeout"] == 0 and h["verifier_crash"] == 0
        assert 0.0 <= h["accuracy"] <= 1.0
    # Step 2 samples come from the weights the learner produced at step 1, so the learner's
    # recomputed log-probs match the engine's (a missed sync would leave a gap of lr-sized steps).
    assert steps[1]["learner/rollout_logprob_diff"] < 0.05
    if algorithm == "v05":
        assert all(h["v05/accepted"] + h["v05/shrunk"] + h["v05/rejected"] == 4 for h in steps)
        assert all(h["rollouts"] <= 1.5 * 16 for h in steps)
        decisions = [json.loads(l) for l in (Path(cfg.run_dir) / "decisions.jsonl").read_text().splitlines()]
        assert len(decisions) == 8 and {"prior", "k", "n", "z2", "lam", "baseline", "extra"} <= set(decisions[0])
    if algorithm == "dapo":
        assert all(h["dapo/rounds"] >= 1 for h in steps)
    lines = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and "eval/accuracy" in json.loads(lines[-1])
    if algorithm == "grpo":
        last = json.loads(lines[-1])
        assert 0.0 <= last["eval/pass@1"] <= last["eval/pass@2"] <= last["eval/pass@3"] <= 1.0
        assert list((Path(cfg.run_dir) / "tensorboard").glob("events.out.tfevents.*"))
        assert list((Path(cfg.run_dir) / "wandb").glob("offline-run-*"))
