"""The command line as a Hydra user expects it: --help everywhere, --cfg, validated sweeps, -m runs."""

import json
import os
import subprocess
import sys

import pytest
import yaml


@pytest.mark.slow
def test_multirun_makes_one_run_dir_per_job_and_compare_tabulates_them(tmp_path, tiny_model):
    """`rlvr train -m seed=0,1` on the tiny model: two complete runs, each in its own dir under
    multirun/ with Hydra's record of its config and the run's log file."""
    tiny = [
        "model=tiny-random", "trainer.steps=1", "trainer.batch_size=2", "trainer.eval_every=1", "eval.size=4",
        "rollout.max_tokens=8", "data.train.size=8", "trainer.save_every=0", "trainer.progress=false", "algorithm=grpo",
        "cluster.keep_roles=true",  # the second job resets the first one's learner and verifier pool (the seed is the engine's)
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "train", "-m", "seed=0,1", *tiny],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_dirs = sorted(p.parent for p in (tmp_path / "multirun").glob("*/*/*/summary.json"))
    assert [d.name.split("_", 1)[0] for d in run_dirs] == ["0", "1"]
    # every override in the name was 213 bytes: cut to a file name's length (rlvr.config.schema.job_dir_name)
    assert all(d.name.endswith("...") and len(d.name.encode()) <= 160 for d in run_dirs), run_dirs
    for seed, d in enumerate(run_dirs):
        assert f"seed={seed}" in d.name
        summary = json.loads((d / "summary.json").read_text())
        assert summary["steps"] == 1 and 0 <= summary["heldout_after"] <= 1  # the CLI keeps no history; the summary's figure stays
        assert yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["seed"] == seed
        assert "step 0 held-out accuracy" in (d / "train.log").read_text()
        assert "vllm" in (d / "logs" / "rollout-0.log").read_text().lower()  # the engine's chatter went here
    console = proc.stdout + proc.stderr
    assert "(RolloutEngine" not in console and "(PolicyLearner" not in console and "Failed to load weights" not in console
    assert console.count("INFO rlvr: step 0 held-out accuracy") == 2 and console.count("step 1/1 |") == 2
    compare = subprocess.run(
        # the sweep's glob, as its help says (multirun/<date>/<time>/*): Hydra's multirun.yaml is among them
        [sys.executable, "-m", "rlvr.cli", "compare", "--json", *sorted(map(str, run_dirs[0].parent.glob("*")))],
        env=env, capture_output=True, text=True, timeout=120,
    )
    rows = json.loads(compare.stdout)
    assert [r["steps"] for r in rows] == [1, 1] and all(r["rollouts"] > 0 for r in rows)
    assert all(0 <= r["heldout_final"] <= 1 for r in rows)
    assert [r["run_dir"] for r in rows] == [str(d) for d in run_dirs]


