"""data=file in a training run: verl's parquet to train on, TRL's jsonl to evaluate on, the peers'
reward signatures through the verifier pool (tests/unit/test_data_formats.py checks the readers)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


@pytest.mark.slow
def test_a_step_trains_on_verl_parquet_and_evaluates_on_trl_jsonl(tmp_path, ray_session, tiny_model):
    """One run covers both readers end to end (one actor start-up instead of two), and sampled
    pass@k in evaluation and the TensorBoard and (offline) wandb loggers."""
    from rlvr.config import compose
    from rlvr.train.loop import train

    train_path, eval_path = tmp_path / "train.parquet", tmp_path / "eval.jsonl"
    pq.write_table(pa.Table.from_pylist([
        {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"What is {i} + {i}?"}],
         "reward_model": {"ground_truth": str(2 * i)}, "data_source": "arith", "extra_info": {"index": i}}
        for i in range(12)
    ]), train_path)
    eval_path.write_text("".join(
        json.dumps({"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "solution": f"\\boxed{{{i + 1}}}"}) + "\n"
        for i in range(12, 16)
    ))
    cfg = compose([
        "model=tiny-random", "data=file", f"data.train.path={train_path}", f"data.eval.path={eval_path}", "eval.size=4",
        "trainer.steps=1", "trainer.batch_size=2", "trainer.eval_every=1", "trainer.save_every=0",
        "trainer.progress=false", "rollout.max_tokens=8", "algorithm=grpo", f"run_dir={tmp_path / 'run'}", "cluster.keep_roles=true",
        "eval.n_samples=3", "logging.tensorboard=true", "logging.wandb=true",
        # the peers' reward signatures, through the Ray verifier pool, reading the verl row's fields
        "verifier.terms=[{fn: math}, {fn: 'reward_fns_for_tests:trl_style', style: trl}, {fn: 'reward_fns_for_tests:verl_style', style: verl}]",
    ])
    history = train(cfg)["history"]
    assert [h["step"] for h in history] == [0, 1]
    assert history[-1]["verifier_error"] == 0
    assert history[-1]["rollouts"] == 2 * 4 and 0 <= history[-1]["eval/accuracy"] <= 1
    records = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert {r["uid"] for r in records} == {f"file:eval.jsonl:{i}" for i in range(4)}
    last = history[-1]
    assert 0.0 <= last["eval/pass@1"] <= last["eval/pass@2"] <= last["eval/pass@3"] <= 1.0
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


