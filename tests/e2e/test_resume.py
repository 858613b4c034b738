"""Exact resume: a run killed with SIGKILL and resumed matches a run that went straight through.

Real processes: `rlvr train` runs as a subprocess (Ray, vLLM, DeepSpeed, math-verify inside), is
SIGKILLed once its step-2 checkpoint exists, and is started again with the same run_dir (here, in
this process, on the actors the straight run kept: `cluster.keep_roles`).
Step 2 is also the end of the first epoch (8 training problems once V0.5's 4 warm-up prompts are held out, 4 per step), so the resumed run must train
the next epoch rather than stop.
"""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from helpers import rlvr_train, run_cli, train_in_process


def per_step(run_dir: Path) -> dict[int, dict]:
    records = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        records[r["step"]] = r  # a step re-run after the kill: the resumed record wins
    return records


def final_weights(run_dir: Path) -> dict:
    path = run_dir / "checkpoints" / "step_00000004" / "learner" / "policy" / "mp_rank_00_model_states.pt"
    return torch.load(path, weights_only=False)["module"]


DETERMINISTIC = [
    "reward", "accuracy", "rollouts", "response_length", "learner/loss", "learner/pg_loss", "learner/entropy", "learner/grad_norm",
    "learner/clip_frac", "learner/ratio_max", "learner/optimizer_steps", "learner/lr",
    "v05/prior_err_sd", "v05/invalid_rate", "v05/window", "v05/extra_mean",
    "oracle/p_star_mean", "oracle/se_v05", "oracle/se_prior", "oracle/sign_disagree",
]


@pytest.mark.slow
def test_sigkill_and_resume_matches_straight_run(tmp_path, ray_session, tiny_model, caplog, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight.mkdir(), resumed.mkdir()
    train_in_process(straight)
    rlvr_train(resumed, kill_at_step=2)
    # A partial checkpoint from a crash during a later save must be skipped, not loaded.
    (resumed / "checkpoints" / "step_00000003").mkdir()
    (resumed / "checkpoints" / "step_00000003" / "trainer_state.pt").write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="rlvr"):
        train_in_process(resumed)

    a, b = per_step(straight), per_step(resumed)
    assert sorted(k for k in a if k > 0) == sorted(k for k in b if k > 0) == [1, 2, 3, 4]
    for step in (1, 2, 3, 4):
        for key in DETERMINISTIC:
            # The learner on CPU is not bitwise run to run (MKL/oneDNN may vary how it splits a GEMM
            # under load): a CI run measured 1-ulp differences already at step 1, before any kill.
            expected = pytest.approx(a[step][key], rel=1e-5) if key.startswith("learner/") else a[step][key]
            assert b[step][key] == expected, (step, key, a[step][key], b[step][key])
    assert b[3]["learner/tokens"] > 0 and b[4]["learner/tokens"] > 0  # the epoch after the boundary trained
    # the cosine schedule over 4 steps x 2 mini-batches, warmed up over the first step; resumed in its place
    assert [b[s]["learner/lr"] for s in (1, 2, 3, 4)] == pytest.approx([0.0, 1e-3, 1e-3 * 0.5 * (1 + math.cos(math.pi * 2 / 6)),
                                                                      1e-3 * 0.5 * (1 + math.cos(math.pi * 4 / 6))])
    # V0.5's calibration window came back with the checkpoint: every decision after the resume is the same
    from rlvr.analysis.plots import load_decisions

    da, db = load_decisions(straight), load_decisions(resumed)
    assert list(da) == list(db) == [1, 2, 3, 4]
    assert b[3]["v05/window"] == 16  # the warm start's 4 and steps 1-2 (8 prompts) restored, plus step 3's own
    assert a[0]["v05/window"] == 4 and a[0]["warmup/rollouts"] == 4 * 4  # the warm start filled the window before step 1
    step0 = [line for line in (resumed / "metrics.jsonl").read_text().splitlines() if json.loads(line)["step"] == 0]
    assert len(step0) == 1  # a resumed run does not warm up (or evaluate step 0) again
    for step in (3, 4):
        assert da[step] == db[step], step
    wa, wb = final_weights(straight), final_weights(resumed)
    assert wa.keys() == wb.keys()
    gap = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert gap <= 1e-5, f"final weights differ by {gap:.2e} (1-ulp noise is about 1e-7)"
    resumed_from = [r.getMessage() for r in caplog.records if r.getMessage().startswith("resumed from")]
    assert len(resumed_from) == 1 and "step_00000002" in resumed_from[0], resumed_from  # not the partial step_00000003
    # the same command on the finished run trains nothing and keeps its summary
    summary = (straight / "summary.json").read_text()
    # eval_every=0 evaluated before training only: the trained model's figure is unknown, not step 0's again
    assert json.loads(summary)["heldout_before"] is not None and json.loads(summary)["heldout_after"] is None
    train_in_process(straight)
    assert (straight / "summary.json").read_text() == summary


    # The same checkpoint, exported, evaluated and plotted through the command line.
    out = tmp_path / "exported"
    run_cli("export", str(straight / "checkpoints" / "step_00000004"), str(out))
    from transformers import AutoModelForCausalLM

    exported = dict(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).named_parameters())
    assert all(torch.equal(exported[k].detach(), wa[k]) for k in exported)
    # `rlvr eval` in this process (its Ray is up; a subprocess would start another): the command's parser and output
    from rlvr.cli import main as rlvr_main

    capsys.readouterr()
    assert rlvr_main(["eval", str(straight / "checkpoints" / "step_00000004"), "model=tiny-random", "eval.size=4", "rollout.max_tokens=8"]) == 0
    report = capsys.readouterr().out
    assert 0.0 <= float(report.split("eval/accuracy:")[1].split()[0]) <= 1.0
    plots = run_cli("plot", str(straight), str(resumed), "--out", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "reward_vs_step.png").stat().st_size > 1000, plots




def test_resume_refuses_a_different_algorithm(tmp_path, tiny_model):
    from rlvr.config import ConfigError, compose
    from rlvr.train.state import check_resume_config

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    from omegaconf import OmegaConf

    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(compose(["algorithm=grpo"]), resolve=True))
    with pytest.raises(ConfigError, match="algorithm.name"):
        check_resume_config(ckpt, compose(["algorithm=dapo"]))
    check_resume_config(ckpt, compose(["algorithm=dapo", "resume.allow_config_change=true"]))
    check_resume_config(ckpt, compose(["algorithm=grpo"]))
    # DeepSpeed's optimizer files differ by ZeRO stage, and under ZeRO >= 1 by rank: refused before any role starts
    with pytest.raises(ConfigError, match="cluster.zero_stage: 0 -> 2"):
        check_resume_config(ckpt, compose(["algorithm=grpo", "cluster.zero_stage=2"]))
    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(compose(["algorithm=grpo", "cluster.zero_stage=2"]), resolve=True))
    with pytest.raises(ConfigError, match="cluster.num_learners under ZeRO-2: 1 -> 2"):
        check_resume_config(ckpt, compose(["algorithm=grpo", "cluster.zero_stage=2", "cluster.num_learners=2"]))
    # one model spelt two ways (a built-in's name, its folder in the cache, a trailing slash) resumes
    from rlvr.models import model_location

    (ckpt / "config.yaml").write_text(OmegaConf.to_yaml(compose(["model=tiny-random"]), resolve=True))
    folder = model_location("tiny-random", compose([]).cache_dir)
    check_resume_config(ckpt, compose(["model=tiny-random", f"model.path={folder}/"]))
    with pytest.raises(ConfigError, match="model.path"):
        check_resume_config(ckpt, compose(["model=tiny-random", "model.path=smollm2-135m"]))
