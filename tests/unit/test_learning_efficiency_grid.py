"""benchmarks/experiments/learning_efficiency.py's settings, without training (the quick mode's runs
are tests/e2e/test_learning_efficiency.py)."""


def test_the_long_learning_efficiency_grid_is_issue_28s():
    """`--long` (issue 28 part 2): the grid's configs, 40 steps, the oracle on the runs whose baselines
    it measures and on no other, the bf16 learner; the short grid keeps its settings and its records."""
    from benchmarks.experiments import learning_efficiency as le

    args = le.parse_args(["--long"])
    assert (args.steps, args.eval_every, args.out.name) == (40, 10, "learning_efficiency_long")
    assert args.configs == ["grpo", "grpo-n6", "v05@grpo-agg", "v05", "v05+focal", "grpo+focal", "grpo+hadw", "dapo", "cispo"]
    grpo, dapo = le.budget(args, "grpo"), le.budget(args, "dapo")
    assert "eval.oracle.samples=32" in grpo and "eval.oracle.every=5" in grpo and "trainer.steps=40" in grpo
    assert not any(o.startswith("eval.oracle") for o in dapo)
    assert "eval.oracle.samples=32" in le.budget(args, "grpo+hadw")  # HA-DW's bias, with and without its weights
    assert not any(o.startswith("model.train_dtype") for o in grpo)
    assert "model.rollout_dtype=float32" in grpo  # the engine its records were sampled with
    assert le.GRID["grpo-n6"][-1] == "algorithm.n=6"
    short = le.parse_args([])
    assert (short.steps, short.out.name, "grpo-n6" in short.configs) == (12, "learning_efficiency", False)
    assert "model.train_dtype=float32" in le.budget(short, "grpo") and not any("oracle" in o for o in le.budget(short, "grpo"))
    assert le.parse_args(["--long", "--steps", "44"]).steps == 44


def test_the_gpu_grid_is_the_long_one_on_a_larger_model(tmp_path):
    """`--gpu MODEL_DIR`: the long grid's configs and oracle, on the single-node GPU cluster with a local
    model in bf16, a bigger batch and longer answers; every override is a key the config tree has."""
    from benchmarks.experiments import learning_efficiency as le
    from rlvr.config import compose

    args = le.parse_args(["--gpu", str(tmp_path)])
    assert args.long and args.configs == le.LONG["configs"]
    assert (args.steps, args.batch_size, args.max_tokens, args.out.name) == (100, 32, 512, "learning_efficiency_gpu")
    grpo = le.budget(args, "grpo")
    assert {"cluster=single_node_gpu", "model=local", f"model.path={tmp_path}", "eval.oracle.samples=32", "eval.oracle.every=10"} <= set(grpo)
    assert not any(o.startswith(("model.rollout_dtype", "model.train_dtype")) for o in grpo)  # model=local's bf16
    cfg = compose([*le.GRID["v05"], *le.budget(args, "v05"), "seed=0", f"run_dir={tmp_path / 'run'}"])
    assert (cfg.cluster.accelerator, cfg.trainer.batch_size, cfg.rollout.max_tokens, cfg.model.dtype) == ("GPU", 32, 512, "bfloat16")
    assert le.parse_args(["--gpu", str(tmp_path), "--batch-size", "16"]).batch_size == 16
    assert le.parse_args(["--long"]).batch_size == 8
