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
