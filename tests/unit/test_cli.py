"""The command line as a Hydra user expects it: --help everywhere, --cfg, validated sweeps, -m runs."""

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
    from rlvr.runtime.faults import RoleFailed
    from rlvr.train.state import RunStopped

    for error, code in ((RunStopped(signal.SIGTERM, 3), 128 + signal.SIGTERM), (RoleFailed("learner died"), 1)):
        def fake_train(cfg, keep_history=False, _e=error):
            raise _e
        monkeypatch.setattr(loop, "train", fake_train)
        with pytest.raises(SystemExit) as exc:
            main(["train", f"run_dir={tmp_path / 'run'}", f"hydra.run.dir={tmp_path / 'hydra'}"])
        assert exc.value.code == code


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
