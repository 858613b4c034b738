"""The command line as a Hydra user expects it: --help everywhere, --cfg, validated sweeps, -m runs."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from rlvr.cli import COMMANDS, main, sweep_jobs


def run_main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse and Hydra exit on --help
        return int(e.code or 0)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help(command, capsys):
    assert run_main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"rlvr {command}" in out
    if command == "train":  # Hydra's app help, listing the groups and their options
        assert "== Config groups ==" in out and "algorithm: cispo, dapo, drgrpo, grpo, rloo, v05" in out


def test_cfg_job_prints_the_composed_groups(capsys):
    assert run_main(["train", "algorithm=dapo", "weighting=focal", "trainer.steps=7", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["algorithm"]["name"] == "dapo" and cfg["algorithm"]["eps_high"] == 0.28
    assert cfg["weighting"]["name"] == "focal" and cfg["trainer"]["steps"] == 7
    assert "hydra" not in cfg


def test_sweep_expands_like_hydras_basic_sweeper():
    assert sweep_jobs(["algorithm=grpo,v05", "seed=0,1", "trainer.steps=3"]) == [
        ["algorithm=grpo", "seed=0", "trainer.steps=3"],
        ["algorithm=grpo", "seed=1", "trainer.steps=3"],
        ["algorithm=v05", "seed=0", "trainer.steps=3"],
        ["algorithm=v05", "seed=1", "trainer.steps=3"],
    ]


def test_every_sweep_job_is_validated_before_any_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "-m", "seed=0,1", "learner.lr=1e-6,-1"]) == 2
    assert "learner.lr: must be > 0, got -1" in capsys.readouterr().err
    assert run_main(["train", "-m", "seed=0,1", "trainer.stepz=3"]) == 2
    assert "trainer.stepz" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_command_errors_exit_2(tmp_path, capsys):
    assert run_main(["export"]) == 2  # missing arguments: argparse's usage line
    assert run_main(["compare", str(tmp_path / "nope")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert run_main(["frobnicate"]) == 2


@pytest.mark.slow
def test_multirun_makes_one_run_dir_per_job_and_compare_tabulates_them(tmp_path, tiny_model):
    """`rlvr train -m seed=0,1` on the tiny model: two complete runs, each in its own dir under
    multirun/ with Hydra's record of its config and the run's log file."""
    tiny = [
        "model=tiny-random", "trainer.steps=1", "trainer.batch_size=2", "trainer.eval_every=1", "eval.size=4",
        "rollout.max_tokens=8", "data.train.size=8", "trainer.save_every=0", "trainer.progress=false", "algorithm=grpo",
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "train", "-m", "seed=0,1", *tiny],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run_dirs = sorted(p.parent for p in (tmp_path / "multirun").glob("*/*/*/summary.json"))
    assert [d.name.split("_", 1)[0] for d in run_dirs] == ["0", "1"]
    for seed, d in enumerate(run_dirs):
        assert f"seed={seed}" in d.name
        assert json.loads((d / "summary.json").read_text())["steps"] == 1
        assert yaml.safe_load((d / ".hydra" / "config.yaml").read_text())["seed"] == seed
        assert "step 0 held-out accuracy" in (d / "train.log").read_text()
    compare = subprocess.run(
        [sys.executable, "-m", "rlvr.cli", "compare", "--json", *map(str, run_dirs)], env=env, capture_output=True, text=True, timeout=120
    )
    rows = json.loads(compare.stdout)
    assert [r["steps"] for r in rows] == [1, 1] and all(r["rollouts"] > 0 for r in rows)
    assert all(0 <= r["heldout_final"] <= 1 for r in rows)
    assert [r["run_dir"] for r in rows] == [str(d) for d in run_dirs]
