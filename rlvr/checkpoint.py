"""Atomic, crash-safe checkpoint directories.

Layout under a run directory::

    run_dir/checkpoints/
        step_00000010/          complete checkpoints (MANIFEST.json + whatever the caller wrote)
        step_00000012/
        latest                  text file holding the name of the newest complete checkpoint

A save writes into a hidden temporary directory, writes ``MANIFEST.json`` (every
file and its size), fsyncs every file and directory, renames the temporary
directory to its final name, fsyncs the parent, and only then replaces the
``latest`` pointer (temp file + fsync + ``os.replace``).  A crash at any point
leaves the previous checkpoint intact and loadable.

Hidden names used by this module inside ``checkpoints/`` (never anything else is
touched, and complete ``step_*`` directories are only ever deleted by ``keep``
pruning):

* ``.tmp-<name>-<pid>-<rand>`` a save in progress (a directory), or
  ``.tmp-latest-<pid>-<rand>`` the new ``latest`` pointer (a file).  Left
  behind by a crashed save; removed by a later save once process ``pid`` no
  longer exists.
* ``.old-<name>-<pid>-<rand>`` an existing checkpoint moved aside while the
  same step is re-saved.  If the process died before the new one was renamed
  in, it is used in its place by :func:`find_latest_checkpoint` and renamed
  back by the next save; otherwise it is removed.
* ``.del-<name>-<pid>-<rand>`` a checkpoint being pruned: renamed first (one
  atomic step), then removed, so an interrupted prune never leaves a partial
  ``step_*`` directory behind.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger("rlvr.checkpoint")

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest"
MANIFEST = "MANIFEST.json"
FORMAT = 1

_STEP_RE = re.compile(r"step_(\d+)")
# .tmp-step_00000012-1234-ab12cd34 / .tmp-latest-1234-ab12cd34 / .old-... / .del-...
_HIDDEN_RE = re.compile(r"\.(tmp|old|del)-(step_\d+|latest)-(\d+)-([0-9a-f]+)")


# -- names ---------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    """``step_00000012`` for step 12 (zero-padded to 8 digits, so names sort by step)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return f"step_{step:08d}"


def _step_of(name: str) -> int | None:
    m = _STEP_RE.fullmatch(name)
    return int(m.group(1)) if m else None


_MADE_HERE: set[str] = set()  # hidden names this process made: a container restarted with our pid left the others


@contextlib.contextmanager
def _hidden_path(ckdir: Path, kind: str, name: str) -> Iterator[Path]:
    """A hidden ``.{kind}-{name}-{pid}-{random}`` path in ``ckdir``, known as ours while the block
    runs (the block renames or removes it; a name kept after would grow the set a save at a time)."""
    hidden = f".{kind}-{name}-{os.getpid()}-{secrets.token_hex(4)}"
    _MADE_HERE.add(hidden)
    try:
        yield ckdir / hidden
    finally:
        _MADE_HERE.discard(hidden)


def _checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


# -- fsync helpers -------------------------------------------------------------


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            if p.is_file():  # skips dangling links, sockets, fifos
                _fsync_file(p)
        _fsync_dir(Path(dirpath))


def pid_alive(pid: int) -> bool:
    """This process, or any other that exists (owned by anyone)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True
    return True


# -- manifest ------------------------------------------------------------------


def _file_sizes(root: Path) -> dict[str, int]:
    files: dict[str, int] = {}
    for dirpath, _dirnames, filenames in os.walk(root):
        for f in filenames:
            p = Path(dirpath) / f
            rel = p.relative_to(root).as_posix()
            if rel == MANIFEST or not p.is_file():
                continue
            files[rel] = p.stat().st_size
    return dict(sorted(files.items()))


def _write_manifest(root: Path, step: int) -> None:
    manifest = {
        "step": step,
        "files": _file_sizes(root),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "format": FORMAT,
    }
    with open(root / MANIFEST, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_manifest(path: str | Path) -> dict:
    """The parsed ``MANIFEST.json`` of a checkpoint directory (``step``, ``files``, ``created``, ``format``)."""
    with open(Path(path) / MANIFEST, encoding="utf-8") as f:
        return json.load(f)


def validate_checkpoint(path: str | Path) -> str | None:
    """``None`` if ``path`` is a complete checkpoint, else the reason it is not."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory" if path.exists() else "directory does not exist"
    if not (path / MANIFEST).is_file():
        return f"missing {MANIFEST} (an incomplete save?)"
    try:
        manifest = read_manifest(path)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return f"unreadable {MANIFEST}: {e}"
    if not isinstance(manifest, dict):
        return f"unreadable {MANIFEST}: not a JSON object"
    if manifest.get("format") != FORMAT:
        return f"unreadable {MANIFEST}: unknown format {manifest.get('format')!r}"
    step, files = manifest.get("step"), manifest.get("files")
    if isinstance(step, bool) or not isinstance(step, int) or not isinstance(files, dict):
        return f"unreadable {MANIFEST}: 'step' (int) and 'files' (object) are required"
    name_step = _step_of(path.name)
    if name_step is not None and name_step != step:
        return f"{MANIFEST} says step {step} but the directory is {path.name}"
    for rel, size in files.items():
        if not isinstance(rel, str) or not Path(rel).parts or Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"unreadable {MANIFEST}: bad file name {rel!r}"
        if isinstance(size, bool) or not isinstance(size, int):
            return f"unreadable {MANIFEST}: bad size for {rel!r}"
        p = path / rel
        if not p.is_file():
            return f"listed file {rel} is missing"
        actual = p.stat().st_size
        if actual != size:
            return f"listed file {rel} has {actual} bytes, expected {size}"
    return None


# -- listing / finding ---------------------------------------------------------


def _step_dirs(ckdir: Path) -> list[tuple[int, Path]]:
    """All ``step_*`` directories (complete or not), oldest first."""
    if not ckdir.is_dir():
        return []
    out = []
    for p in ckdir.iterdir():
        step = _step_of(p.name)
        if step is not None and p.is_dir():
            out.append((step, p))
    return sorted(out)


def _orphaned_aside(ckdir: Path) -> list[tuple[int, Path]]:
    """``.old-step_*`` dirs whose final name is missing: a re-save died between its two renames."""
    if not ckdir.is_dir():
        return []
    out = []
    for p in ckdir.iterdir():
        m = _HIDDEN_RE.fullmatch(p.name)
        if m and m.group(1) == "old" and p.is_dir() and not (ckdir / m.group(2)).exists():
            if pid_alive(int(m.group(3))) and int(m.group(3)) != os.getpid():
                continue  # another live process is in the middle of a re-save
            out.append((_step_of(m.group(2)), p))
    return sorted(out)


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories under ``run_dir/checkpoints``, oldest (lowest step) first."""
    return [p for _, p in _step_dirs(_checkpoints_dir(run_dir)) if validate_checkpoint(p) is None]


def checkpoint_named(target: str | Path) -> Path | None:
    """The checkpoint a command was given: a checkpoint dir, or a run dir's latest complete one;
    None for anything else (a model folder). A run dir with none raises FileNotFoundError."""
    path = Path(target)
    if (path / MANIFEST).exists():
        return path
    if (path / CHECKPOINT_DIR).is_dir():
        latest = find_latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"run dir {str(path)!r} has no complete checkpoint under {CHECKPOINT_DIR}/")
        return latest
    return None


def find_latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint named by ``latest`` if it is complete; else (with a warning) the newest complete one.

    Incomplete or corrupt directories met on the way are skipped with a warning
    naming the directory and the reason.  ``None`` if there is no complete
    checkpoint.
    """
    ckdir = _checkpoints_dir(run_dir)
    if not ckdir.is_dir():
        return None
    pointer = ckdir / LATEST
    reported: set[Path] = set()
    if pointer.is_file():
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            log.warning("checkpoint pointer %s is unreadable (%s); looking for the newest complete checkpoint", pointer, e)
        else:
            if not name or "/" in name or "\\" in name or name in (".", ".."):
                log.warning("checkpoint pointer %s holds %r, not a checkpoint name; looking for the newest complete checkpoint", pointer, name)
            else:
                target = ckdir / name
                reason = validate_checkpoint(target)
                if reason is None:
                    return target
                if not target.exists():
                    for _s, aside in reversed(_orphaned_aside(ckdir)):
                        if aside.name.startswith(f".old-{name}-") and validate_checkpoint(aside) is None:
                            log.warning("using checkpoint %s in place of %s, set aside by an interrupted re-save", aside, target)
                            return aside
                reported.add(target)
                log.warning("skipping checkpoint %s named by %s: %s; looking for the newest complete checkpoint", target, pointer, reason)
    elif _step_dirs(ckdir):
        log.warning("no %s pointer in %s; looking for the newest complete checkpoint", LATEST, ckdir)

    # A re-save that died between moving the old copy aside and renaming the new one in
    # leaves the old copy under a hidden name; it stands in for the missing step dir.
    candidates = _step_dirs(ckdir) + _orphaned_aside(ckdir)
    for _step, p in sorted(candidates, key=lambda sp: sp[0], reverse=True):
        reason = validate_checkpoint(p)
        if reason is None:
            if p.name.startswith(".old-"):
                log.warning("using checkpoint %s, set aside by an interrupted re-save", p)
            return p
        if p not in reported:
            log.warning("skipping checkpoint %s: %s", p, reason)
    return None


def resolve_resume(run_dir: str | Path, resume: str) -> Path | None:
    """Where to resume from: ``"never"`` -> None; ``"auto"`` -> the latest complete checkpoint in
    ``run_dir`` (None if it has no checkpoint; ``FileNotFoundError`` if it has some and none is
    complete); anything else is a checkpoint directory, which must exist and be complete, or a run
    directory, whose latest complete one it names (``FileNotFoundError`` otherwise)."""
    if resume is None or str(resume).strip() == "":
        raise ValueError("resume must be 'auto', 'never' or a checkpoint directory, got an empty value")
    key = str(resume).strip()
    if key.lower() == "never":
        return None
    if key.lower() == "auto":
        found = find_latest_checkpoint(run_dir)
        broken = _step_dirs(_checkpoints_dir(run_dir)) if found is None else []
        if broken:  # starting afresh here trained from step 0 and re-saved over them at their steps
            reasons = "; ".join(f"{p.name}: {validate_checkpoint(p)}" for _s, p in broken[-3:])
            raise FileNotFoundError(
                f"resume=auto: {_checkpoints_dir(run_dir)} holds {len(broken)} checkpoint(s) and none is complete ({reasons}); "
                "nothing was changed. Repair them to resume, or pass resume=never to start again (they are set aside, not deleted)")
        return found
    path = Path(key).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"resume checkpoint {str(path)!r} does not exist")
    if not (path / MANIFEST).exists() and (path / CHECKPOINT_DIR).is_dir():
        path = checkpoint_named(path)  # a run dir: its latest complete checkpoint, as export and eval read it
    else:
        reason = validate_checkpoint(path)
        if reason is not None:
            raise FileNotFoundError(f"resume checkpoint {str(path)!r} is not a complete checkpoint: {reason}")
    own = None if _in_run_dir(run_dir, path) else find_latest_checkpoint(run_dir)
    if own is None:
        return path
    # This run dir has checkpoints of its own. Going back to the other run's trained its steps again and
    # re-saved over them: a run started from there and stopped lost its work on the same command.
    origin = Path(run_dir) / STARTED_FROM
    if origin.is_file() and origin.read_text(encoding="utf-8").strip() == str(Path(key).expanduser().resolve()):
        log.info("resume=%s: this run started from it and has saved %s since: continuing from that", key, own.name)
        return own
    raise ResumeConflict(f"resume={key}: run_dir {str(run_dir)!r} already holds checkpoints of another run (the latest {own.name}), "
                         "which this would train over; pass resume=auto to continue them, or give another run_dir")


STARTED_FROM = "started_from"  # in a run dir: the resume= it started from, where that was another run's


class ResumeConflict(FileExistsError):
    """resume=PATH names another run's checkpoint, and the run dir holds checkpoints of a run not started from it."""


def note_origin(run_dir: str | Path, resume: str, ckpt: Path | None) -> None:
    """Record that this run starts from another run's checkpoint, so that the same command resumes
    its own checkpoints once it has some (`resolve_resume`); a run starting afresh has no origin."""
    if ckpt is None:
        (Path(run_dir) / STARTED_FROM).unlink(missing_ok=True)
    elif not _in_run_dir(run_dir, ckpt) and not find_latest_checkpoint(run_dir):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / STARTED_FROM).write_text(str(Path(resume).expanduser().resolve()) + "\n", encoding="utf-8")


def _in_run_dir(run_dir: str | Path, ckpt: Path) -> bool:
    """Whether ``ckpt`` is one of ``run_dir``'s own checkpoints (however either path is spelt)."""
    return Path(ckpt).resolve().parent == _checkpoints_dir(run_dir).resolve()


def branch_from(run_dir: str | Path, ckpt: Path) -> None:
    """A run resumed from an earlier checkpoint of its own run dir (``resume=PATH``) abandons the
    later ones: ``latest`` names the one it resumed, so a crash before its next save resumes there
    again, not on the abandoned branch (whose records the resume has already rewound)."""
    if not _in_run_dir(run_dir, ckpt):
        return
    ckdir = _checkpoints_dir(run_dir)
    pointer = ckdir / LATEST
    if not pointer.exists() or pointer.read_text(encoding="utf-8").strip() != Path(ckpt).name:
        _write_latest(ckdir, Path(ckpt).name)


# -- saving ----------------------------------------------------------------------


def write_text_whole(path: Path, text: str, tmp: Path | None = None) -> None:
    """``text`` to ``path`` through a temp file (``tmp``, or ``.<name>.tmp`` beside it) fsynced and
    renamed into place, then the directory fsynced: a crash, or a power cut, leaves the old file or the new."""
    tmp = tmp or path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_latest(ckdir: Path, name: str) -> None:
    with _hidden_path(ckdir, "tmp", LATEST) as tmp:
        write_text_whole(ckdir / LATEST, name + "\n", tmp=tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def _delete_checkpoint(ckdir: Path, path: Path) -> None:
    """Rename to a hidden ``.del-*`` name first, so an interrupted delete leaves no partial step dir."""
    with _hidden_path(ckdir, "del", path.name) as doomed:
        os.rename(path, doomed)
        _fsync_dir(ckdir)
        _remove(doomed)


def _clean_hidden(ckdir: Path) -> None:
    """Remove what crashed saves left behind, and put back a checkpoint an interrupted re-save set aside."""
    for p in sorted(ckdir.iterdir()):
        m = _HIDDEN_RE.fullmatch(p.name)
        if not m:
            continue
        kind, name, pid = m.group(1), m.group(2), int(m.group(3))
        if kind == "del":
            _remove(p)  # already committed to deletion
            continue
        if p.name in _MADE_HERE or (pid != os.getpid() and pid_alive(pid)):
            continue  # ours, or a save still running in another process (our pid alone: a previous container's driver)
        if kind == "tmp":
            log.info("removing %s left by an interrupted save (process %d)", p, pid)
            _remove(p)
        elif kind == "old":
            final = ckdir / name
            if final.exists():
                if validate_checkpoint(final) is None:
                    _remove(p)
                continue
            if validate_checkpoint(p) is None:
                log.warning("restoring %s from %s, set aside by an interrupted re-save", final, p)
                os.rename(p, final)
                _fsync_dir(ckdir)


def _prune(ckdir: Path, current: Path, step: int, keep: int) -> None:
    if keep <= 0:
        return
    # Checkpoints at later steps than this one (left from before a resume at an earlier step) are
    # neither counted nor deleted; of the earlier ones, the newest keep-1 stay beside the new one.
    older = [(s, p) for s, p in _step_dirs(ckdir) if s < step and p != current and validate_checkpoint(p) is None]
    doomed = older[: max(0, len(older) - (keep - 1))]
    for _s, p in doomed:
        log.info("pruning checkpoint %s (keep=%d)", p, keep)
        _delete_checkpoint(ckdir, p)


class CheckpointSaveError(RuntimeError):
    """A save failed (a full disk, mostly): which, where, how much room is left and what is still kept."""


def save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None], keep: int = 2,
                    passes_through: tuple[type[BaseException], ...] = ()) -> Path:
    """Save atomically to ``run_dir/checkpoints/step_XXXXXXXX`` and return that path.

    ``write(tmp)`` fills the (existing, empty) temporary directory ``tmp`` with
    whatever the checkpoint holds.  If it raises, the temporary directory is
    removed; the previous checkpoint and ``latest`` are untouched.  Then: manifest,
    fsync, rename, ``latest``, pruning to the newest ``keep`` complete checkpoints
    (``keep <= 0`` keeps all).  A failure is a :class:`CheckpointSaveError` naming the
    disk's free space and the checkpoint a resume would load (torch and safetensors
    drop ENOSPC's errno: a full disk read as "unexpected pos 2770304 vs 2770192"),
    except a ``BaseException`` or one of ``passes_through``, which the caller handles.
    """
    try:
        return _save_checkpoint(run_dir, step, write, keep)
    except passes_through:
        raise
    except Exception as e:
        raise CheckpointSaveError(_save_failed(run_dir, step, e)) from e


def write_failure(where: Path, error: BaseException) -> str:
    """"(ExcType: its last line; N MiB free there)": what a failed write says, the free space beside
    the error because torch's and safetensors' messages drop ENOSPC's errno."""
    from rlvr.runtime.faults import last_line  # here: Ray is imported only when a write fails

    disk = next((p for p in (where, *where.parents) if p.is_dir()), Path("/"))
    try:
        free = f"{shutil.disk_usage(disk).free / 2**20:,.1f} MiB free there"
    except OSError:
        free = "its free space unknown"
    return f"({type(error).__name__}: {last_line(error)}; {free})"


def _save_failed(run_dir: str | Path, step: int, error: BaseException) -> str:
    where = _checkpoints_dir(run_dir)
    kept = find_latest_checkpoint(run_dir)
    then = (f"the last complete checkpoint, {kept.name}, is intact: make room and run the same command to resume from it"
            if kept is not None else "no complete checkpoint is kept: make room and run the same command to start again")
    return f"saving checkpoint {checkpoint_name(step)} under {where} failed {write_failure(where, error)}; {then}"


def _save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None], keep: int) -> Path:
    name = checkpoint_name(step)
    ckdir = _checkpoints_dir(run_dir)
    if not ckdir.is_dir():
        ckdir.mkdir(parents=True, exist_ok=True)
        _fsync_dir(ckdir.parent)
    final = ckdir / name
    with _hidden_path(ckdir, "tmp", name) as tmp:
        tmp.mkdir()
        try:
            write(tmp)
            if not tmp.is_dir():
                raise RuntimeError(f"checkpoint writer removed its directory {tmp}")
            _write_manifest(tmp, step)
            _fsync_tree(tmp)
            if final.exists() or final.is_symlink():
                # Re-saving a step (e.g. after resuming from an earlier one): move the old copy aside,
                # rename the new one in, then delete the old copy.
                with _hidden_path(ckdir, "old", name) as aside:
                    os.rename(final, aside)
                    try:
                        os.rename(tmp, final)
                    except BaseException:
                        os.rename(aside, final)  # put the old copy back
                        raise
                    _fsync_dir(ckdir)
                    _remove(aside)
            else:
                os.rename(tmp, final)
                _fsync_dir(ckdir)
        except BaseException:
            _remove(tmp)
            raise
    _write_latest(ckdir, name)
    _clean_hidden(ckdir)
    _prune(ckdir, final, step, keep)
    return final
