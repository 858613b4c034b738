"""The command line as a Hydra user expects it: --help everywhere, --cfg, validated sweeps, -m runs."""

import fcntl
import logging
import os
import signal
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
        assert "== Config groups ==" in out and "algorithm: cispo, dapo, drgrpo, grpo, gspo, rloo, v05" in out


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
    grpo = tmp_path / "grpo"  # a run without V0.5 decisions: a message, not a traceback
    grpo.mkdir()
    (grpo / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    (grpo / "decisions.jsonl").write_text("")
    (grpo / "config.yaml").write_text(yaml.safe_dump({"algorithm": {"name": "grpo"}, "value": {"backend": "embedded"}}))
    capsys.readouterr()
    assert run_main(["value-report", str(grpo)]) == 2
    assert capsys.readouterr().err.startswith("rlvr value-report: ")




def test_console_filter_keeps_rlvr_lines_and_real_warnings():
    from rlvr.runtime.logs import ConsoleFilter

    def record(name: str, level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    quiet, verbose = ConsoleFilter(), ConsoleFilter(verbose=True)
    assert quiet.filter(record("rlvr", logging.INFO, "step 0 held-out accuracy 0.3"))
    assert quiet.filter(record("rlvr.data", logging.WARNING, "skipping bad row"))
    assert not quiet.filter(record("ray", logging.INFO, "Started a local Ray instance."))
    assert quiet.filter(record("ray", logging.WARNING, "a node died"))
    assert not quiet.filter(record("ray", logging.WARNING, "Token authentication is enabled for this Ray cluster."))
    assert all(verbose.filter(record("ray", logging.INFO, m)) for m in ("Started a local Ray instance.", "Setting accelerator to CPU"))


def test_actor_output_goes_to_the_log_file_and_rlvr_warnings_to_the_console(tmp_path):
    """What an actor does first: fd-level redirection, so C-level writes are captured too."""
    log = tmp_path / "logs" / "rollout-0.log"
    code = (
        "import logging, os; from rlvr.runtime.logs import redirect_actor_output; redirect_actor_output(); "
        "os.write(1, b'engine chatter from C\\n'); print('a library print'); "
        "logging.getLogger('rlvr.rollout.pool').info('an rlvr info line'); logging.getLogger('rlvr.rollout.pool').warning('an rlvr warning')"
    )
    env = dict(os.environ, RLVR_ACTOR_LOG=str(log), PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    assert all(s in text for s in ("engine chatter from C", "a library print", "an rlvr info line", "an rlvr warning"))
    assert proc.stdout == "" and "an rlvr warning" in proc.stderr and "chatter" not in proc.stderr and "info line" not in proc.stderr


def test_the_rlvr_script_finds_a_user_s_module_in_the_current_directory(tmp_path):
    """The README's `my_rewards:brevity` beside the user failed from the `rlvr` script ("no module
    'my_rewards' on this process's path (the current directory and PYTHONPATH)"): a console
    script's path starts at its bin/, not the current directory as `python -m` does."""
    from pathlib import Path

    (tmp_path / "my_rewards.py").write_text("def brevity(completions, **kwargs):\n    return [0.0 for _ in completions]\n")
    script = Path(sys.executable).with_name("rlvr")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(script), "config", "verifier.terms=[{fn: math}, {fn: 'my_rewards:brevity', style: trl, weight: 0.1}]"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "my_rewards:brevity" in done.stdout


def test_a_sweep_with_cfg_is_a_message(capsys):
    assert main(["train", "-m", "seed=0,1", "--cfg", "job"]) == 2  # Hydra's ValueError, as a traceback
    assert "cannot be combined with --cfg" in capsys.readouterr().err


def test_rlvr_answers_in_a_folder_deleted_under_the_shell(tmp_path):
    from pathlib import Path

    gone = tmp_path / "gone"
    gone.mkdir()
    script = Path(sys.executable).with_name("rlvr")
    done = subprocess.run(f"cd {gone} && rmdir {gone} && {script} --help", shell=True, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "train" in done.stdout, done.stderr[-2000:]


def test_a_run_dir_that_cannot_be_made_is_a_config_error(tmp_path, capsys):
    """Hydra makes run_dir before the run starts: a file there (or a folder that cannot be written)
    was a FileExistsError traceback, exit 1."""
    from rlvr.cli import run_dir_problem

    (tmp_path / "afile").write_text("mine")
    assert main(["train", "model=tiny-random", f"run_dir={tmp_path / 'afile'}"]) == 2
    assert "run_dir: " in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"
    assert "is a file, so" in run_dir_problem(tmp_path / "afile" / "run")
    assert run_dir_problem(tmp_path / "new" / "run") is None
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        assert "not writable" in run_dir_problem(tmp_path / "ro" / "run")


def test_a_stopped_run_exits_128_plus_the_signal_and_a_failed_role_exits_1(tmp_path, monkeypatch, capsys):
    import rlvr.train.loop as loop
    from rlvr.checkpoint import CheckpointSaveError
    from rlvr.runtime.faults import RoleFailed
    from rlvr.train.state import RunStopped

    full = CheckpointSaveError("saving checkpoint step_00000004 under X failed (...; 2.8 MiB free there); ...")
    for error, code in ((RunStopped(signal.SIGTERM, 3), 128 + signal.SIGTERM), (RoleFailed("learner died"), 1), (full, 1)):
        def fake_train(cfg, keep_history=False, _e=error):
            raise _e
        monkeypatch.setattr(loop, "train", fake_train)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["train", f"run_dir={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'hydra'}"])
        assert exc.value.code == code
        assert capsys.readouterr().err.strip() == f"rlvr: {error}"  # the message alone: no traceback


def test_a_forced_run_dir_override_in_a_sweep_is_checked_before_any_job(tmp_path, monkeypatch, capsys):
    import rlvr.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("a job started"))
    (tmp_path / "f").write_text("")
    assert main(["train", "-m", f"++run_dir={tmp_path / 'f' / 'run'}", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"]) == 2
    assert "run_dir" in capsys.readouterr().err


def test_train_command_gives_back_sys_argv(capsys):
    before = list(sys.argv)
    assert main(["train", "--cfg", "job"]) == 0
    assert sys.argv == before


def refused_before_training(monkeypatch) -> None:
    import rlvr.train.loop as loop

    monkeypatch.setattr(loop, "train", lambda *a, **k: pytest.fail("training started"))


def test_sweep_jobs_that_share_one_run_dir_are_refused_before_any_runs(tmp_path, monkeypatch, capsys):
    """Each job would have resumed the one before it (resume=auto; learner.lr is not guarded), trained
    nothing and reported the first job's model as its own."""
    refused_before_training(monkeypatch)
    assert run_main(["train", "-m", "model=tiny-random", "learner.lr=1e-6,1e-5", f"run_dir={tmp_path / 'sweep'}",
                     f"hydra.sweep.dir={tmp_path / 'hydra'}"]) == 2
    assert "is more than one job's run dir" in capsys.readouterr().err


def test_a_refused_train_leaves_the_run_s_hydra_record_alone(tmp_path, capsys):
    """The run dir's lock was checked after Hydra had rewritten run_dir/.hydra/ with the refused command's overrides."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
    with open(run / ".lock", "a+") as lock:  # the run's own trainer holds it
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 4242 on host\n")
        lock.flush()
        assert run_main(["train", f"run_dir={run}", "model=tiny-random", "seed=7"]) == 2
    assert "is in use by pid 4242 on host" in capsys.readouterr().err
    assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=1\n"


@pytest.mark.parametrize("run_dir", ["", "' '", "'~/myrun'", "'~nobody/run'"])
def test_an_empty_or_tilde_run_dir_is_refused(run_dir, tmp_path, monkeypatch, capsys):
    """`run_dir=` (an unset variable) wrote into the current folder; `run_dir='~/x'` made a folder named ~ there."""
    refused_before_training(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert run_main(["train", "model=tiny-random", f"run_dir={run_dir}"]) == 2
    assert "run_dir" in capsys.readouterr().err and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--info", "config"]])
def test_cfg_and_info_with_an_unknown_key_exit_2_naming_it(flags, capsys):
    assert run_main(["train", *flags, "learner.micro_batchsize=4"]) == 2
    err = capsys.readouterr().err
    assert "learner.micro_batchsize" in err and "Traceback" not in err
    if flags[0] == "--cfg":  # (--info would set up Hydra's logging on this test's captured stream, closed after it)
        assert run_main(["train", *flags, "learner.lr=0"]) == 0  # a bad value composes: one looks at the config to see it


def test_eval_of_a_checkpoint_whose_config_is_cut_short_is_a_message(tmp_path, capsys):
    from rlvr.checkpoint import _write_manifest, checkpoint_name

    ckpt = tmp_path / "run" / "checkpoints" / checkpoint_name(2)
    (ckpt / "learner").mkdir(parents=True)
    (ckpt / "learner" / "weights.pt").write_bytes(b"x" * 10)
    (ckpt / "config.yaml").write_text("model:\n  path: tiny-random\nalgorithm: {name: grpo}\n")
    _write_manifest(ckpt, 2)
    (ckpt / "config.yaml").write_text("model:\n  path: tiny-random\nalgorithm: {name: grpo\n")  # a YAML traceback, exit 1
    assert run_main(["eval", str(ckpt)]) == 2
    assert f"{ckpt} is not a complete checkpoint" in capsys.readouterr().err


def test_value_report_of_a_run_whose_config_does_not_load_is_a_message(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("algorithm: {name: v05\nvalue: [\n")
    (tmp_path / "decisions.jsonl").write_text('{"step": 1, "uid": "a", "k": 1, "n": 4, "prior": 0.3}\n')
    assert run_main(["value-report", str(tmp_path), "--predictors", "logged"]) == 2
    assert "config.yaml does not load" in capsys.readouterr().err


def test_plot_into_a_file_or_of_a_run_without_records_is_a_message(tmp_path, capsys):
    """--out naming a file was a FileExistsError traceback; a metrics.jsonl with no whole record gave five empty PNGs, exit 0."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    (tmp_path / "afile").write_text("mine")
    assert run_main(["plot", str(run), "--out", str(tmp_path / "afile")]) == 2
    assert "afile is a file" in capsys.readouterr().err and (tmp_path / "afile").read_text() == "mine"
    (run / "metrics.jsonl").write_text('{"step": 1, "rew')  # the only line, cut short
    assert run_main(["plot", str(run)]) == 2
    assert "holds no complete record" in capsys.readouterr().err and not (run / "plots").exists()
    good = tmp_path / "good"
    good.mkdir()
    (good / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    assert run_main(["plot", str(good), str(run)]) == 2  # every run is checked, not the first alone
    assert f"{run / 'metrics.jsonl'} holds no complete record" in capsys.readouterr().err


def test_ray_init_s_own_sigterm_exit_is_a_stop_of_rlvr_eval(tmp_path, monkeypatch, capsys):
    """Until the run's handler is back, ray.init's own SIGTERM handler calls sys.exit(15): a silent exit 15."""
    import rlvr.train.evaluate as evaluate

    monkeypatch.setattr(evaluate, "evaluate_model", lambda *args: sys.exit(signal.SIGTERM))
    assert run_main(["eval", str(tmp_path)]) == 128 + signal.SIGTERM
    assert "rlvr eval: stopped by SIGTERM" in capsys.readouterr().err
