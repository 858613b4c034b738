"""data=code in a training run: the code family's prompts, code_tests through the Ray verifier
pool, every completion run in the bubblewrap sandbox (tests/unit/test_code_sandbox.py checks the
walls, tests/unit/test_code_data.py the data)."""

import pytest


@pytest.mark.slow
def test_a_step_trains_on_code_tasks_with_sandboxed_rewards(tmp_path, ray_session, tiny_model):
    from rlvr.config import compose
    from rlvr.train.loop import train

    cfg = compose([
        "model=tiny-random", "data=code", "eval.size=2", "trainer.steps=1", "trainer.batch_size=2",
        "trainer.eval_every=1", "trainer.save_every=0", "trainer.progress=false", "rollout.max_tokens=8",
        "algorithm=grpo", f"run_dir={tmp_path / 'run'}", "cluster.keep_roles=true",
        # the random model writes no fenced block: run its whole completion, so each one meets the sandbox
        "verifier.terms=[{fn: code_tests, kwargs: {timeout_s: 1.0, program: whole}}]",
    ])
    history = train(cfg)["history"]
    assert [h["step"] for h in history] == [0, 1]
    last = history[-1]
    assert last["verifier_error"] == 0 and last["verifier_timeout"] == 0 and last["verifier_crash"] == 0
    outcomes = {k: v for k, v in last.items() if k.startswith("verifier_outcome_")}
    assert sum(outcomes.values()) == last["rollouts"] > 0, outcomes
    assert set(outcomes) <= {f"verifier_outcome_{o}" for o in ("passed", "compile_error", "runtime_error", "wrong_answer", "timeout")}
    assert 0.0 <= last["eval/accuracy"] <= 1.0
