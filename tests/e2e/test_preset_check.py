"""benchmarks/preset_check.py quick mode, and DAPO's accuracy filter, on real Ray, vLLM, DeepSpeed
and the verifier pool with the tiny model: each preset's defining mechanism acts."""

import pytest

from benchmarks import preset_check
from rlvr.config import compose
from rlvr.trainer import train


@pytest.mark.slow
def test_every_presets_mechanism_acts_on_the_tiny_model(tmp_path, ray_session, tiny_model):
    configs = [c for c in preset_check.CONFIGS if c != "grpo"]  # grpo's one check (TIS logged) is every run's
    results = preset_check.run(configs, preset_check.base_overrides(True, 2), tmp_path, quick=True)
    checks = {name: r["checks"] for name, r in results.items()}
    # On the tiny model an odd-length answer counts as correct, whatever the prompt: a prior read
    # from the prompt's text has nothing to find there, so V0.5 may rightly reject every prior.
    # Its acceptance is checked on the default job (docs/benchmarks.md); here the warm start is.
    not_here = {("v05", "first_steps_accepted_or_shrunk")}
    failed = [(n, c, v) for n, cs in checks.items() for c, v in cs.items() if not v["ok"] and (n, c) not in not_here]
    assert not failed, failed
    assert checks["dapo"]["clip_high_frac"]["value"] > 0
    assert checks["dapo"]["overlong_penalised"]["value"] > 0  # answers past the soft start paid, and only those
    assert checks["cispo"]["cap_frac"]["value"] > 0 and checks["cispo"]["capped_tokens_keep_gradient"]["value"] == 1.0
    assert checks["v05"]["warmup_window"]["value"] == 8
    assert all("tis_logged" in cs for cs in checks.values())
    assert set(checks["grpo+focal"]) >= {"focal_weights_in_0_1"} and set(checks["grpo+hadw"]) >= {"hadw_weights_vary"}
    assert not any((tmp_path / name / "checkpoints").exists() for name in results)  # only the records stay
    table = preset_check.table(results)
    assert table.count("\n") == sum(len(cs) for cs in checks.values()) + 1


@pytest.mark.slow
def test_dapo_filters_on_correctness_not_on_the_shaped_reward(tmp_path, ray_session, tiny_model):
    """Correctness is the strict math term, which a random model never earns; a second term splits
    every group by answer length. On accuracy every group is uniform and dropped (and the step
    trains on nothing, without failing); on the shaped reward the same groups would be kept."""
    terms = "verifier.terms=[{fn: math, weight: 1.0}, {fn: format, weight: 1.0, kwargs: {pattern: '(?:.{2})*.', mode: fullmatch, bonus: 1.0}}]"
    base = preset_check.QUICK + ["algorithm=dapo", "trainer.steps=1", "trainer.eval_every=0", "eval.at_start=false",
                                 "trainer.save_every=0", "trainer.progress=false", "algorithm.max_rounds=2", terms]
    kept = {}
    for metric in ("acc", "reward"):
        history = train(compose(base + [f"algorithm.filter_metric={metric}", f"run_dir={tmp_path / metric}"]))["history"]
        (step,) = [h for h in history if h["step"] == 1]
        kept[metric] = step
    acc, reward = kept["acc"], kept["reward"]
    assert acc["accuracy"] != acc["accuracy"] or acc["dapo/kept_groups"] == 0  # nan accuracy: no group left
    assert acc["dapo/dropped_groups"] == acc["dapo/rounds"] * 4 and acc["dapo/dropped_reward_mixed"] > 0
    assert acc["dapo/dropped_acc_mixed"] == 0 and "learner/tokens" not in acc
    assert reward["dapo/kept_groups"] > 0 and reward["learner/tokens"] > 0


@pytest.mark.slow
def test_v05_and_focal_read_correctness_under_shaped_rewards(tmp_path, ray_session, tiny_model):
    """V0.5's test and fusion count correct rollouts, not reward mass: with a strict math term no
    random answer is correct (k = 0), though a second term and the overlong penalty give every
    rollout a nonzero shaped reward. The baseline estimates success; the shaping stays in A = r − b.
    Focal's p̂ is the success rate too: 0 here, so every weight is (1 − 0)^γ = 1."""
    import json

    terms = "verifier.terms=[{fn: math, weight: 1.0}, {fn: format, weight: 1.0, kwargs: {pattern: '(?:.{2})*.', mode: fullmatch, bonus: 1.0}}]"
    cfg = compose(preset_check.QUICK + ["algorithm=v05", "weighting=focal", "algorithm.overlong=true", "algorithm.warmup_prompts=8", "trainer.steps=1",
                                        "trainer.eval_every=0", "eval.at_start=false", "trainer.save_every=0", "trainer.progress=false",
                                        terms, f"run_dir={tmp_path / 'v05'}"])
    history = train(cfg)["history"]
    (step,) = [h for h in history if h["step"] == 1]
    decisions = [json.loads(line) for line in (tmp_path / "v05" / "decisions.jsonl").read_text().splitlines()]
    assert step["accuracy"] == 0 and step["reward"] != 0  # shaped rewards, no success
    assert all(d["k"] == 0 for d in decisions) and all(0 <= d["baseline"] < 0.5 for d in decisions)
    assert history[0]["warmup/success"] == 0 and history[0]["v05/window"] == 8
    assert step["weighting/min"] == step["weighting/max"] == 1.0  # the shaped mean would give < 1 wherever it is above 0
