"""rlvr.checkpoint: atomic saves, the latest pointer, pruning, crash safety, corrupt-checkpoint fallback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlvr import checkpoint as ck
from rlvr.checkpoint import (
    CHECKPOINT_DIR,
    checkpoint_name,
    find_latest_checkpoint,
    list_checkpoints,
    read_manifest,
    resolve_resume,
    save_checkpoint,
    validate_checkpoint,
)

ROOT = Path(__file__).resolve().parents[2]
LOGGER = "rlvr.checkpoint"


def writer(tag: str, size: int = 1000):
    """A checkpoint writer: a binary shard, a file in a subdirectory, and an empty file."""

    def write(d: Path) -> None:
        (d / "model.bin").write_bytes(tag.encode() * size)
        (d / "shards").mkdir()
        (d / "shards" / "rank0.pt").write_text(json.dumps({"tag": tag}))
        (d / "empty").write_bytes(b"")

    return write


def tag_of(path: Path) -> str:
    return json.loads((path / "shards" / "rank0.pt").read_text())["tag"]


def step_of(path: Path) -> int:
    return read_manifest(path)["step"]


def hidden(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / CHECKPOINT_DIR).iterdir() if p.name.startswith("."))


# -- basics ----------------------------------------------------------------------


def test_checkpoint_name():
    assert checkpoint_name(12) == "step_00000012"
    assert checkpoint_name(0) == "step_00000000"
    assert checkpoint_name(123456789) == "step_123456789"
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError):
            checkpoint_name(bad)


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path, 12, writer("a"))
    assert path == tmp_path / "checkpoints" / "step_00000012"
    assert path.is_dir()
    assert validate_checkpoint(path) is None
    assert find_latest_checkpoint(tmp_path) == path
    assert (path / "model.bin").read_bytes() == b"a" * 1000
    assert tag_of(path) == "a"
    m = read_manifest(path)
    assert m["step"] == 12 and m["format"] == 1 and isinstance(m["created"], str)
    assert m["files"] == {"empty": 0, "model.bin": 1000, "shards/rank0.pt": len(json.dumps({"tag": "a"}))}
    assert hidden(tmp_path) == []  # no temporary leftovers
    assert list_checkpoints(tmp_path) == [path]


def test_latest_pointer(tmp_path):
    p1 = save_checkpoint(tmp_path, 1, writer("a"), keep=0)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == p1.name
    p2 = save_checkpoint(tmp_path, 2, writer("b"), keep=0)
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == p2.name
    assert find_latest_checkpoint(tmp_path) == p2
    # latest is what counts, not the highest step: a complete step dir that was never
    # pointed to (crash after its rename, before the pointer update) is not preferred.
    (tmp_path / "checkpoints" / "latest").write_text(p1.name + "\n")
    assert find_latest_checkpoint(tmp_path) == p1


def test_empty_run_dir(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) is None
        assert find_latest_checkpoint(tmp_path / "missing") is None
        (tmp_path / CHECKPOINT_DIR).mkdir()
        assert find_latest_checkpoint(tmp_path) is None
    assert list_checkpoints(tmp_path) == []
    assert caplog.records == []


def test_keep_pruning(tmp_path):
    for s in range(1, 6):
        save_checkpoint(tmp_path, s, writer(str(s)), keep=2)
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [4, 5]
    assert hidden(tmp_path) == []
    save_checkpoint(tmp_path, 6, writer("6"), keep=1)
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [6]


def test_keep_zero_keeps_all(tmp_path):
    for s in range(1, 5):
        save_checkpoint(tmp_path, s, writer(str(s)), keep=0)
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [1, 2, 3, 4]
    save_checkpoint(tmp_path, 5, writer("5"), keep=-1)
    assert len(list_checkpoints(tmp_path)) == 5


def test_pruning_leaves_other_data_alone(tmp_path):
    ckdir = tmp_path / CHECKPOINT_DIR
    save_checkpoint(tmp_path, 1, writer("1"), keep=1)
    (ckdir / "step_00000000").mkdir()  # incomplete: no manifest
    (ckdir / "notes.txt").write_text("mine")
    (ckdir / "my_backup").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    for s in range(2, 5):
        save_checkpoint(tmp_path, s, writer(str(s)), keep=1)
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [4]
    assert (ckdir / "step_00000000").is_dir()
    assert (ckdir / "notes.txt").read_text() == "mine"
    assert (ckdir / "my_backup").is_dir()
    assert (tmp_path / "metrics.jsonl").exists()


def test_later_steps_are_not_pruned_after_resuming_earlier(tmp_path):
    """Resuming from step 2 while step 5 exists: saving step 3 never deletes step 5."""
    for s in (1, 2, 5):
        save_checkpoint(tmp_path, s, writer(str(s)), keep=0)
    save_checkpoint(tmp_path, 3, writer("3"), keep=1)
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [3, 5]
    assert find_latest_checkpoint(tmp_path).name == "step_00000003"


def test_resave_same_step(tmp_path):
    save_checkpoint(tmp_path, 1, writer("a"))
    p2 = save_checkpoint(tmp_path, 2, writer("old", size=10))
    p2b = save_checkpoint(tmp_path, 2, writer("new", size=5000))
    assert p2b == p2
    assert tag_of(p2) == "new" and (p2 / "model.bin").stat().st_size == 15000
    assert validate_checkpoint(p2) is None
    assert find_latest_checkpoint(tmp_path) == p2
    assert [step_of(p) for p in list_checkpoints(tmp_path)] == [1, 2]
    assert hidden(tmp_path) == []


def test_resave_rename_failure_puts_old_copy_back(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path, 2, writer("old"))
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-step_"):
            raise OSError("disk on fire")
        return real_rename(src, dst)

    monkeypatch.setattr(ck.os, "rename", rename)
    with pytest.raises(ck.CheckpointSaveError, match="OSError: disk on fire"):
        save_checkpoint(tmp_path, 2, writer("new"))
    monkeypatch.undo()
    assert tag_of(p) == "old" and validate_checkpoint(p) is None
    assert find_latest_checkpoint(tmp_path) == p
    assert hidden(tmp_path) == []


# -- crashes ---------------------------------------------------------------------


def test_write_raises_leaves_previous(tmp_path):
    p1 = save_checkpoint(tmp_path, 1, writer("a"))

    def bad(d: Path) -> None:
        (d / "model.bin").write_bytes(b"partial")
        raise RuntimeError("OOM while saving")

    with pytest.raises(RuntimeError, match="OOM"):
        save_checkpoint(tmp_path, 2, bad)
    assert find_latest_checkpoint(tmp_path) == p1
    assert tag_of(p1) == "a"
    assert not (tmp_path / "checkpoints" / "step_00000002").exists()
    assert hidden(tmp_path) == []  # our own temporary dir is cleaned up
    assert list_checkpoints(tmp_path) == [p1]


def test_sigkill_during_save_leaves_previous(tmp_path, caplog):
    """A real SIGKILL of a process in the middle of writing a checkpoint."""
    p1 = save_checkpoint(tmp_path, 1, writer("a"))
    ready = tmp_path / "ready"
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from rlvr.checkpoint import save_checkpoint

        def write(d):
            with open(d / "model.bin", "wb") as f:
                f.write(b"x" * 100000)
                f.flush()
                # written whole, then renamed: the test must never read a half-written (empty) file
                Path({str(ready) + ".part"!r}).write_text(str(d))
                Path({str(ready) + ".part"!r}).rename({str(ready)!r})
                time.sleep(60)

        save_checkpoint({str(tmp_path)!r}, 2, write)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 15
        while not ready.exists():
            assert proc.poll() is None, "the saving process died early"
            assert time.monotonic() < deadline, "the saving process never started writing"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    partial = Path(ready.read_text())
    assert partial.is_dir() and partial.name.startswith(".tmp-step_00000002-")  # the crash left it behind

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) == p1
        assert resolve_resume(tmp_path, "auto") == p1
    assert caplog.records == []  # nothing was wrong with the pointer or step dirs
    assert tag_of(p1) == "a" and list_checkpoints(tmp_path) == [p1]

    # The next save (a new process after the restart) removes the dead process's leftovers.
    p2 = save_checkpoint(tmp_path, 2, writer("b"))
    assert not partial.exists()
    assert hidden(tmp_path) == []
    assert find_latest_checkpoint(tmp_path) == p2


_FS_OPS = [("os", "rename"), ("os", "replace"), ("os", "fsync"), ("os", "unlink"), ("shutil", "rmtree"), ("os", "mkdir")]


def _crash_after(n: int | None, fn) -> int:
    """Run fn in a forked child that hard-exits (no cleanup, like a kill) before its n-th filesystem
    operation; n=None just counts the operations. Returns the count (n=None) or the exit code."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(r)
            calls = [0]
            mods = {"os": os, "shutil": shutil}
            for mod, name in _FS_OPS:
                real = getattr(mods[mod], name)

                def wrapped(*a, _real=real, **k):
                    if calls[0] == n:
                        os._exit(17)
                    calls[0] += 1
                    return _real(*a, **k)

                setattr(mods[mod], name, wrapped)
            fn()
            os.write(w, str(calls[0]).encode())
        except BaseException:
            code = 1
        os._exit(code)
    os.close(w)
    out = b""
    while chunk := os.read(r, 64):
        out += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if n is None:
        assert code == 0
        return int(out)
    return code


@pytest.mark.parametrize("resave", [False, True], ids=["new-step", "resave-step"])
def test_crash_at_every_point_of_a_save(tmp_path, resave, monkeypatch, caplog):
    """Kill a save before each of its filesystem operations in turn: a complete checkpoint is always
    found (the previous one or the new one), and the next save cleans up after the crash."""
    # A process kill (not a power cut) is simulated, so fsync's durability is not under test here;
    # a no-op keeps this fast.  fsync calls are still crash points.
    monkeypatch.setattr(os, "fsync", lambda fd: None)

    def setup(d: Path) -> None:
        save_checkpoint(d, 1, writer("s1"), keep=1)
        save_checkpoint(d, 2, writer("s2"), keep=1)  # keep=1: step 2 is the only copy

    new_step = 2 if resave else 3
    doomed_save = lambda d: (lambda: save_checkpoint(d, new_step, writer("new"), keep=1))  # noqa: E731

    probe = tmp_path / "probe"
    setup(probe)
    n_ops = _crash_after(None, doomed_save(probe))
    assert n_ops >= 6
    outcomes = set()
    for i in range(n_ops):
        d = tmp_path / f"crash{i}"
        setup(d)
        assert _crash_after(i, doomed_save(d)) == 17
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            found = find_latest_checkpoint(d)
        # The pointer always names a complete checkpoint, except in the one window of a re-save
        # where the old copy is set aside (it is then found under its hidden name).
        for r in caplog.records:
            assert resave and "interrupted re-save" in r.getMessage(), (i, r.getMessage())
        assert found is not None, f"no checkpoint after a crash at operation {i}"
        assert validate_checkpoint(found) is None
        outcome = (step_of(found), tag_of(found))
        assert outcome in {(2, "s2"), (new_step, "new")}, (i, outcome)
        outcomes.add(outcome)
        # the next save recovers: everything consistent, no leftovers
        p4 = save_checkpoint(d, 4, writer("s4"), keep=2)
        assert find_latest_checkpoint(d) == p4
        assert hidden(d) == [], (i, hidden(d))
        steps = [step_of(p) for p in list_checkpoints(d)]
        assert steps[-1] == 4 and len(steps) == 2, (i, steps)
    assert outcomes == {(2, "s2"), (new_step, "new")}  # crashes both before and after the commit point


# -- corrupt checkpoints -----------------------------------------------------------


def _two(tmp_path) -> tuple[Path, Path]:
    p1 = save_checkpoint(tmp_path, 1, writer("a"), keep=0)
    p2 = save_checkpoint(tmp_path, 2, writer("b"), keep=0)
    return p1, p2


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: (p / "shards" / "rank0.pt").unlink(), "listed file shards/rank0.pt is missing"),
        (lambda p: (p / "model.bin").write_bytes(b"b" * 10), "listed file model.bin has 10 bytes, expected 1000"),
        (lambda p: (p / "MANIFEST.json").write_text("{not json"), "unreadable MANIFEST.json"),
        (lambda p: (p / "MANIFEST.json").write_bytes(b"\xff\xfe\x00garbage"), "unreadable MANIFEST.json"),
        (lambda p: (p / "MANIFEST.json").write_text("[1, 2]"), "unreadable MANIFEST.json"),
        (lambda p: (p / "MANIFEST.json").unlink(), "missing MANIFEST.json"),
        (lambda p: shutil.rmtree(p), None),
    ],
    ids=["deleted-file", "truncated-file", "garbage-manifest", "binary-manifest", "manifest-not-object", "no-manifest", "dir-gone"],
)
def test_corrupt_latest_is_skipped_with_warning(tmp_path, caplog, damage, reason):
    p1, p2 = _two(tmp_path)
    damage(p2)
    if reason is not None:
        assert reason in validate_checkpoint(p2)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) == p1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == LOGGER]
    assert len(warnings) == 1, warnings
    assert str(p2) in warnings[0]
    assert (reason or "does not exist") in warnings[0]
    assert list_checkpoints(tmp_path) == [p1]
    assert resolve_resume(tmp_path, "auto") == p1


def test_all_corrupt_returns_none(tmp_path, caplog):
    p1, p2 = _two(tmp_path)
    (p1 / "model.bin").unlink()
    (p2 / "MANIFEST.json").write_text("")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) is None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert str(p1) in text and str(p2) in text


def test_corrupt_older_checkpoint_skipped_in_fallback(tmp_path, caplog):
    p1 = save_checkpoint(tmp_path, 1, writer("a"), keep=0)
    p2 = save_checkpoint(tmp_path, 2, writer("b"), keep=0)
    p3 = save_checkpoint(tmp_path, 3, writer("c"), keep=0)
    (p3 / "model.bin").unlink()
    (p2 / "model.bin").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) == p1
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert str(p3) in text and str(p2) in text


def test_latest_points_at_missing_dir(tmp_path, caplog):
    p1, p2 = _two(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000099\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) == p2  # newest valid by step number
    assert any("step_00000099" in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("content", ["", "../../etc", "/tmp", "\n\n"])
def test_latest_pointer_garbage(tmp_path, caplog, content):
    p1, p2 = _two(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text(content)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) == p2
    assert any("latest" in r.getMessage() for r in caplog.records)


def test_latest_missing(tmp_path, caplog):
    p1, p2 = _two(tmp_path)
    (tmp_path / "checkpoints" / "latest").unlink()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert find_latest_checkpoint(tmp_path) == p2
    assert any("no latest pointer" in r.getMessage() for r in caplog.records)


def test_manifest_step_mismatch_and_bad_names(tmp_path):
    p = save_checkpoint(tmp_path, 3, writer("a"))
    m = read_manifest(p)
    (p / "MANIFEST.json").write_text(json.dumps({**m, "step": 4}))
    assert "says step 4" in validate_checkpoint(p)
    (p / "MANIFEST.json").write_text(json.dumps({**m, "files": {"../escape": 1}}))
    assert "bad file name" in validate_checkpoint(p)
    (p / "MANIFEST.json").write_text(json.dumps({**m, "format": 99}))
    assert "format" in validate_checkpoint(p)
    assert validate_checkpoint(tmp_path / "nope") == "directory does not exist"


# -- stale leftovers -----------------------------------------------------------------


def test_stale_tmp_removed_only_for_dead_processes(tmp_path):
    ckdir = tmp_path / CHECKPOINT_DIR
    save_checkpoint(tmp_path, 1, writer("a"))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = ckdir / f".tmp-step_00000005-{dead.pid}-deadbeef"
    stale.mkdir()
    (stale / "x").write_text("partial")
    stale_ptr = ckdir / f".tmp-latest-{dead.pid}-0badf00d"
    stale_ptr.write_text("step_00000005\n")
    live = ckdir / f".tmp-step_00000005-{os.getppid()}-cafebabe"  # a live process (our parent)
    live.mkdir()
    odd = ckdir / ".tmp-something-else"  # not our naming: left alone
    odd.mkdir()
    save_checkpoint(tmp_path, 2, writer("b"))
    assert not stale.exists() and not stale_ptr.exists()
    assert live.exists() and odd.exists()


def test_orphaned_aside_copy_is_used_and_restored(tmp_path, caplog):
    """A re-save killed between moving the old copy aside and renaming the new one in."""
    ckdir = tmp_path / CHECKPOINT_DIR
    p = save_checkpoint(tmp_path, 2, writer("old"), keep=1)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    aside = ckdir / f".old-{p.name}-{dead.pid}-12345678"
    os.rename(p, aside)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = find_latest_checkpoint(tmp_path)
    assert found == aside and tag_of(found) == "old"
    assert any("interrupted re-save" in r.getMessage() for r in caplog.records)
    save_checkpoint(tmp_path, 3, writer("s3"), keep=2)
    assert tag_of(p) == "old"  # renamed back, and kept by keep=2
    assert [step_of(q) for q in list_checkpoints(tmp_path)] == [2, 3]
    assert hidden(tmp_path) == []


# -- resolve_resume --------------------------------------------------------------------


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, "auto") is None  # nothing saved yet
    p1, p2 = _two(tmp_path)
    assert resolve_resume(tmp_path, "never") is None
    assert resolve_resume(tmp_path, "auto") == p2
    assert resolve_resume(tmp_path, str(p1)) == p1
    assert resolve_resume(tmp_path / "elsewhere", str(p1)) == p1  # a checkpoint from another run

    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        resolve_resume(tmp_path, str(tmp_path / "does-not-exist"))
    # a run dir names its latest complete checkpoint, as `rlvr export` and `rlvr eval` read it (a Hydra traceback before)
    assert resolve_resume(tmp_path / "elsewhere", str(tmp_path)) == p2
    (p1 / "model.bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"step_00000001.*listed file model.bin is missing"):
        resolve_resume(tmp_path, str(p1))
    with pytest.raises(ValueError):
        resolve_resume(tmp_path, "")


def test_a_run_started_from_another_run_s_checkpoint_resumes_its_own_on_the_same_command(tmp_path):
    """Run B started from run A's step 2 (resume=A/...), stopped at its own step 3: the same command
    went back to A's step 2, trained step 3 again and re-saved over B's."""
    from rlvr.checkpoint import ResumeConflict, note_origin

    a2 = _two(tmp_path / "A")[1]
    b = tmp_path / "B"
    assert resolve_resume(b, str(a2)) == a2  # B has nothing yet: start from A's
    note_origin(b, str(a2), a2)
    b3 = save_checkpoint(b, 3, writer("b"), keep=0)
    assert resolve_resume(b, str(a2)) == b3  # the same command: B's own
    assert resolve_resume(b, "auto") == b3 and resolve_resume(b, str(b3)) == b3
    # A's run dir, or a run dir whose checkpoints are not from A: refused, naming them
    for given in (str(tmp_path / "A"), str(a2)):
        if given == str(a2):
            note_origin(b, "never", None)  # B started afresh since: no origin
        with pytest.raises(ResumeConflict, match="already holds checkpoints of another run.*step_00000003.*resume=auto"):
            resolve_resume(b, given)


def test_resume_auto_over_checkpoints_none_of_which_is_complete_is_refused(tmp_path):
    """Every checkpoint corrupt, resume=auto started afresh with only warnings: the user who reran to
    resume got a new run from step 0, whose saves replaced the broken folders at their steps."""
    p1, p2 = _two(tmp_path)
    (p1 / "model.bin").unlink()
    (p2 / "MANIFEST.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"resume=auto: .*checkpoints holds 2 checkpoint\(s\) and none is complete "
                                                r"\(step_00000001: .*model.bin is missing; step_00000002: .*\); nothing was changed.*resume=never"):
        resolve_resume(tmp_path, "auto")
    assert resolve_resume(tmp_path, "never") is None


def test_resuming_an_earlier_checkpoint_of_the_run_dir_points_latest_at_it(tmp_path):
    """resume=PATH to step 1 while step 2 exists rewinds the records past step 1, but `latest` kept
    naming step 2 until the next save: a crash in between resumed the abandoned branch."""
    from rlvr.checkpoint import branch_from

    p1, p2 = _two(tmp_path)
    branch_from(tmp_path, p1)
    assert resolve_resume(tmp_path, "auto") == p1
    branch_from(tmp_path / "another_run", p2)  # a checkpoint of another run dir moves nothing here
    assert resolve_resume(tmp_path, "auto") == p1


def test_a_run_that_goes_back_keeps_one_record_per_step(tmp_path):
    """Resuming at step 3 (or restarting the learners back to it) trains steps 3 and on again: their
    first records go, with a line a crash cut short, so every step has one record in each file."""
    import json

    from rlvr.config import compose
    from rlvr.train.state import MetricsLog

    log = MetricsLog(tmp_path, compose(["eval.oracle.samples=4"]))
    for step in range(5):
        log.write(step, {"reward": step / 10}, decisions=[{"prior": 0.5}], eval_records=[{"correct": 1}], oracle_records=[{"p_star": 0.2}])
    log.file.write('{"step": 5, "rew')  # killed mid-line
    log.rewind(3)
    log.write(3, {"reward": 0.33})
    log.close()
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3] and json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])["reward"] == 0.33
    for name in ("decisions", "eval", "oracle"):
        assert [json.loads(line)["step"] for line in (tmp_path / f"{name}.jsonl").read_text().splitlines()] == [0, 1, 2], name


def test_metrics_jsonl_is_strict_json_without_nan_or_infinity(tmp_path):
    """clipped_grad_frac is NaN on every step with no clipped token, and json.dumps wrote it as NaN, which
    JSON.parse and other strict readers refuse; a non-finite value is left out now, as None was."""
    import json

    from rlvr.config import compose
    from rlvr.train.state import MetricsLog

    log = MetricsLog(tmp_path, compose([]))
    log.write(1, {"reward": float("nan"), "accuracy": 0.5, "learner/grad_norm": float("inf"), "eval/accuracy": None, "tag": "x"})
    log.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}")) == {"step": 1, "accuracy": 0.5}


def test_the_summary_of_a_finished_run_is_written_whole(tmp_path, monkeypatch):
    """summary.json was written in place and read back when the finished run is resumed: a file cut
    short by a crash made every later resume fail with JSONDecodeError. A rename with no fsync
    before it can still leave an empty file after a power cut, so the file and then its directory
    are synced."""
    import os

    from rlvr.train.state import write_text_whole

    path = tmp_path / "summary.json"
    path.write_text('{"steps": 20}')

    def disk_full(fd):  # the write a crash (or a full disk) stops before it is durable
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError):
        write_text_whole(path, '{"steps": 21}')
    monkeypatch.undo()
    assert path.read_text() == '{"steps": 20}' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]

    synced, real_fsync = [], os.fsync

    def spy(fd):
        synced.append((os.path.realpath(f"/proc/self/fd/{fd}"), path.read_text()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_text_whole(path, '{"steps": 21}')
    assert path.read_text() == '{"steps": 21}' and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    # the new text is synced while the old file is still in place, then the directory after the rename
    assert synced == [(str(tmp_path / ".summary.json.tmp"), '{"steps": 20}'), (str(tmp_path), '{"steps": 21}')]


def test_a_fresh_start_sets_an_earlier_start_s_records_aside(tmp_path):
    """A fresh start in a run dir with records (resume=never, or a run that died before its first
    checkpoint) appended to them: two step-0 records, and eval.jsonl held both starts' prompts."""
    from rlvr.train.state import set_aside_records

    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n')
    (tmp_path / "eval.jsonl").write_text('{"step": 0, "uid": "a"}\n')
    (tmp_path / "decisions.jsonl").write_text("")  # empty: left where it is
    moved = set_aside_records(tmp_path)
    assert sorted(p.name.split(".")[0] for p in moved) == ["eval", "metrics"]
    assert not (tmp_path / "metrics.jsonl").exists() and (tmp_path / "decisions.jsonl").exists()
    assert [p.read_text() for p in sorted(moved)] == ['{"step": 0, "uid": "a"}\n', '{"step": 0}\n']  # kept, whole
    assert set_aside_records(tmp_path) == []
    # an earlier run's summary.json (a failed fresh start beside it read as finished) and a
    # config.yaml the new start would overwrite (a user's own, in a folder used as run_dir)
    (tmp_path / "summary.json").write_text('{"steps": 1}')
    (tmp_path / "config.yaml").write_text("my: own config\n")
    moved = set_aside_records(tmp_path)
    assert sorted(p.name.split(".before-")[0] + p.suffix for p in moved) == ["config.yaml", "summary.json"]
    assert not (tmp_path / "summary.json").exists() and "my: own config\n" in [p.read_text() for p in moved]


def test_a_fresh_start_sets_the_earlier_run_s_checkpoints_aside_too(tmp_path):
    """resume=never kept the old checkpoints resumable: a fresh run that died before its first save
    was then resumed, by the next default command, from the earlier run's checkpoint."""
    from rlvr.checkpoint import resolve_resume
    from rlvr.train.state import set_aside_records

    _two(tmp_path)
    moved = set_aside_records(tmp_path)
    assert [p.name.split(".")[0] for p in moved] == ["checkpoints"] and resolve_resume(tmp_path, "auto") is None
    assert sorted(q.name for q in moved[0].iterdir() if q.name.startswith("step_")) == ["step_00000001", "step_00000002"]


def test_one_trainer_holds_a_run_dir_and_names_itself_to_a_second(tmp_path):
    """Two trainers in one run dir pruned each other's checkpoints and lost one's records."""
    from rlvr.config import ConfigError
    from rlvr.train.state import hold_run_dir

    second = textwrap.dedent(f"""
        from pathlib import Path
        from rlvr.train.state import hold_run_dir
        try:
            with hold_run_dir(Path({str(tmp_path)!r})):
                print("held")
        except Exception as e:
            print(e)
    """)
    with hold_run_dir(tmp_path):
        # another process (a subprocess, waited for: the sandbox tests count this process's children)
        out = subprocess.run([sys.executable, "-c", second], capture_output=True, text=True, timeout=120).stdout
        assert f"is in use by pid {os.getpid()}" in out
        with pytest.raises(ConfigError, match="in use by"):
            with hold_run_dir(tmp_path):
                pass
    with hold_run_dir(tmp_path):  # released at the end
        pass


def test_a_signal_before_the_loop_stops_at_once_and_in_the_loop_at_the_step_boundary():
    """SIGTERM while Ray and the roles started reached Ray's handler, which aborted the driver and
    left Ray's agents running; in the loop it asks for a checkpoint first."""
    import signal

    from rlvr.train.state import RunStopped, StopRequest

    stop = StopRequest()
    try:
        with pytest.raises(RunStopped, match="SIGTERM before its first step"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        stop.signal, stop.deferring = None, True
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert stop.signal == signal.SIGTERM  # recorded; the loop saves and stops at the step's end
        assert RunStopped(signal.SIGINT, 4).signum == signal.SIGINT and "at step 4's checkpoint" in str(RunStopped(signal.SIGINT, 4))
    finally:
        stop.restore()


def test_what_a_crashed_save_under_our_own_pid_left_is_cleaned(tmp_path):
    """A container's driver often gets the same pid at every start: a save it crashed in left a
    full-size `.tmp-` dir with this process's pid, which was taken for a save still running."""
    import os

    from rlvr.checkpoint import _clean_hidden, _hidden_path

    left = tmp_path / f".tmp-step_00000003-{os.getpid()}-deadbeef"
    left.mkdir()
    (left / "weights.bin").write_bytes(b"x" * 1024)
    with _hidden_path(tmp_path, "tmp", "step_00000004") as ours:
        ours.mkdir()
        _clean_hidden(tmp_path)
        assert not left.exists() and ours.exists()


def test_the_hidden_names_a_process_made_do_not_pile_up_over_saves(tmp_path):
    """Each save, pruning and failed save added names to the set of hidden paths this process made
    and none left it: about 3 per save, for the life of the driver."""
    from rlvr.checkpoint import _MADE_HERE, save_checkpoint

    before = set(_MADE_HERE)

    def fail(tmp):
        raise OSError("disk full")

    for step in range(1, 13):
        save_checkpoint(tmp_path, step, lambda tmp: (tmp / "w.bin").write_bytes(b"1"), keep=2)
        save_checkpoint(tmp_path, step, lambda tmp: (tmp / "w.bin").write_bytes(b"2"), keep=2)  # a re-save sets the old aside
        with pytest.raises(ck.CheckpointSaveError, match="OSError: disk full"):
            save_checkpoint(tmp_path, step + 100, fail)
    assert _MADE_HERE == before


def test_a_command_given_a_run_dir_takes_its_latest_checkpoint(tmp_path):
    """`rlvr export` and `rlvr eval` share one reading of what they were given."""
    from rlvr.checkpoint import checkpoint_named, save_checkpoint

    run = tmp_path / "run"
    first = save_checkpoint(run, 1, lambda tmp: (tmp / "w.bin").write_bytes(b"1"))
    latest = save_checkpoint(run, 2, lambda tmp: (tmp / "w.bin").write_bytes(b"2"))
    assert checkpoint_named(run) == latest and checkpoint_named(first) == first
    assert checkpoint_named(tmp_path / "model-folder") is None
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint_named(tmp_path / "empty")


def test_a_checkpoint_whose_driver_state_does_not_load_is_a_message_naming_it(tmp_path):
    """Bytes changed but the size kept (the manifest's check passes): resume ended in a
    PytorchStreamReader traceback."""
    from rlvr.checkpoint import save_checkpoint
    from rlvr.config import ConfigError
    from rlvr.train.state import check_resume_data

    ckpt = save_checkpoint(tmp_path, 2, lambda tmp: (tmp / "trainer_state.pt").write_bytes(bytes(512)))
    with pytest.raises(ConfigError, match=r"resume: checkpoint .*step_00000002: trainer_state.pt does not load .*resume=never"):
        check_resume_data(ckpt, stream=None)


# ---- found surviving mutants (2026-12-07) -------------------------------------------------------------


def _write_a_checkpoint(d: Path) -> None:
    (d / "model.bin").write_bytes(b"w" * 4096)
    (d / "shards").mkdir()
    (d / "shards" / "rank0.pt").write_bytes(b"r" * 100)


def test_every_checkpoint_file_is_fsynced_before_the_directory_is_renamed_into_place(tmp_path, monkeypatch):
    """A mutant of checkpoint.py:446 `_fsync_tree(tmp)` removed, or of checkpoint.py:123 `_fsync_file(p)` skipped:
    the rename (metadata) can reach the disk before the data, so a power cut leaves step_N with a manifest
    and empty/short files, after `latest` moved to it and pruning deleted the previous checkpoint."""
    from rlvr import checkpoint as ck

    events, real_fsync, real_rename = [], os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    final = ck.save_checkpoint(tmp_path, 3, _write_a_checkpoint, keep=1)
    (i, (_, tmp, dst)), = [(i, e) for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(final.resolve())]
    synced_before = {e[1] for e in events[:i] if e[0] == "fsync"}
    for rel in ("model.bin", "shards/rank0.pt", "MANIFEST.json"):
        assert os.path.join(tmp, rel) in synced_before, rel


def test_an_interrupted_prune_leaves_no_partial_step_directory(tmp_path, monkeypatch):
    """A mutant of checkpoint.py:380 rename-to-.del-then-remove -> remove in place: a prune killed inside rmtree
    leaves a half-deleted step_00000001 that is then skipped with a warning on every later look-up and
    never pruned again (pruning counts only complete checkpoints)."""
    from rlvr import checkpoint as ck

    ck.save_checkpoint(tmp_path, 1, _write_a_checkpoint, keep=1)

    class Killed(BaseException):
        pass

    def rmtree_killed_midway(path, ignore_errors=False):
        victims = sorted(p for p in Path(path).rglob("*") if p.is_file())
        victims[0].unlink()  # one file gone, then the process dies
        raise Killed

    monkeypatch.setattr(shutil, "rmtree", rmtree_killed_midway)
    with pytest.raises(Killed):
        ck.save_checkpoint(tmp_path, 2, _write_a_checkpoint, keep=1)
    monkeypatch.undo()
    ckdir = tmp_path / ck.CHECKPOINT_DIR
    step_dirs = sorted(p.name for p in ckdir.iterdir() if p.name.startswith("step_"))
    assert step_dirs == [p.name for p in ck.list_checkpoints(tmp_path)] == ["step_00000002"]


def test_a_set_aside_copy_is_not_removed_while_the_step_dir_beside_it_is_incomplete(tmp_path):
    """A mutant of checkpoint.py:403 `if validate_checkpoint(final) is None: _remove(p)` -> `_remove(p)`: the
    complete copy an interrupted re-save set aside is deleted although step_N beside it is broken."""
    from rlvr import checkpoint as ck

    p2 = ck.save_checkpoint(tmp_path, 2, _write_a_checkpoint, keep=0)
    ckdir = p2.parent
    aside = ckdir / ".old-step_00000002-999999999-deadbeef"  # pid 999999999: no such process
    shutil.copytree(p2, aside)
    (p2 / "model.bin").write_bytes(b"short")  # the step dir beside it is broken
    ck.save_checkpoint(tmp_path, 3, _write_a_checkpoint, keep=0)
    assert aside.is_dir() and ck.validate_checkpoint(aside) is None


# -- a full disk -------------------------------------------------------------------


FULL_DISK = """
import resource, signal, sys, torch
from rlvr.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails (EFBIG), as on a full disk
run = sys.argv[1]
save_checkpoint(run, 2, lambda d: torch.save(torch.zeros(1000), d / "model.pt"))
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
save_checkpoint(run, 4, lambda d: torch.save(torch.zeros(1_000_000), d / "model.pt"))
"""


def test_a_save_that_fills_the_disk_says_where_how_much_room_and_what_is_kept(tmp_path):
    """A full disk mid-save ended a run in a 58-line traceback through Ray and DeepSpeed whose last
    line was torch's "unexpected pos 2770304 vs 2770192": no "disk", no path, no word that step 2
    was intact. torch.save drops ENOSPC's errno, so the message gives the free space beside it."""
    done = subprocess.run([sys.executable, "-c", FULL_DISK, str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rlvr.checkpoint.CheckpointSaveError: saving checkpoint step_00000004 under ")
    assert f"{tmp_path / 'run' / CHECKPOINT_DIR} failed (" in last and "MiB free there" in last
    assert "the last complete checkpoint, step_00000002, is intact: make room and run the same command" in last
    assert find_latest_checkpoint(tmp_path / "run").name == "step_00000002" and hidden(tmp_path / "run") == []


def test_a_save_failure_the_caller_handles_passes_through_and_a_first_save_says_none_is_kept(tmp_path):
    class LearnerLost(Exception):
        pass

    def lost(d):
        raise LearnerLost("rank 1 died")

    with pytest.raises(LearnerLost):
        save_checkpoint(tmp_path, 1, lost, passes_through=(LearnerLost,))
    with pytest.raises(ck.CheckpointSaveError, match=r"\(LearnerLost: rank 1 died; .*MiB free there\); no complete checkpoint is kept"):
        save_checkpoint(tmp_path, 1, lost)
    with pytest.raises(KeyboardInterrupt):  # a signal's RunStopped is the loop's, never wrapped
        save_checkpoint(tmp_path, 1, lambda d: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert find_latest_checkpoint(tmp_path) is None and hidden(tmp_path) == []


def test_a_learner_lost_mid_save_passes_through_to_the_loop_s_restart(tmp_path):
    """save_training_state lets the errors the loop restarts learners on through: wrapped as a
    CheckpointSaveError, a learner lost mid-save ended the run instead."""
    from types import SimpleNamespace

    import ray

    from rlvr.config import compose
    from rlvr.train.state import save_training_state

    def died(*a, **k):
        raise ray.exceptions.RayActorError()

    roles = SimpleNamespace(learners=[SimpleNamespace(save_checkpoint=SimpleNamespace(remote=died))], value=None)
    with pytest.raises(ray.exceptions.RayActorError):
        save_training_state(tmp_path, 1, roles, {"step": 1}, compose([]))
    assert find_latest_checkpoint(tmp_path) is None and hidden(tmp_path) == []
