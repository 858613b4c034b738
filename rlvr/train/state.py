"""What a run leaves and resumes from: its records (metrics, decisions, per-prompt evaluation;
TensorBoard and wandb when asked), the console line, the checkpoint's driver state and RNGs, and
the signals that stop it after a checkpoint."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import random
import signal
import socket
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import ray
import torch
from omegaconf import DictConfig, OmegaConf

from rlvr.checkpoint import CHECKPOINT_DIR, resolve_resume, save_checkpoint, write_text_whole
from rlvr.config import ConfigError
from rlvr.lora import BEFORE_LORA
from rlvr.models import model_location
from rlvr.runtime.faults import last_line

if TYPE_CHECKING:  # the roles module starts actors; this one only reads their handles
    from rlvr.runtime.roles import Roles

log = logging.getLogger("rlvr")


WARMUP_RECORDS = "warmup.jsonl"  # V0.5's warm-up pairs (uid, prior, k, n): the value context before step 1
RECORDS = ("metrics.jsonl", "decisions.jsonl", "eval.jsonl", "oracle.jsonl", WARMUP_RECORDS)


def write_records(path: Path, records: list[dict]) -> None:
    """``records`` as JSON lines, written whole (a temp file renamed into place)."""
    write_text_whole(path, "".join(json.dumps(r) + "\n" for r in records))


def set_aside_records(run_dir: Path) -> list[Path]:
    """A fresh start in a run dir that holds an earlier start's records (`resume=never`, or a run that
    failed before its first checkpoint): each, its summary.json and config.yaml move to
    ``<name>.before-<time>.<suffix>``, and its
    checkpoints to ``checkpoints.before-<time>``, kept, so the new run's files hold only its own
    steps. (They were appended to: two step-0 records, and eval.jsonl held both starts' prompts,
    which bootstrap intervals would count twice.)"""
    import time

    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    # summary.json too (it says a run finished: a failed fresh start beside it read as done), and
    # config.yaml, which the new start writes (a user's own file in that folder was overwritten)
    for name in (*RECORDS, "summary.json", "config.yaml"):
        path = run_dir / name
        if path.exists() and path.stat().st_size:
            moved.append(path.rename(path.with_name(f"{path.stem}.before-{stamp}{path.suffix}")))
    checkpoints = run_dir / CHECKPOINT_DIR
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        # kept, but out of `resume=auto`'s way: a fresh start that died before its first save was
        # resumed from the earlier run's checkpoint, and the records mixed the two runs
        moved.append(checkpoints.rename(run_dir / f"{CHECKPOINT_DIR}.before-{stamp}"))
    if moved:
        log.warning("starting fresh in %s: an earlier start's records moved aside to %s", run_dir, ", ".join(p.name for p in moved))
    return moved


class MetricsLog:
    """metrics.jsonl in the run directory, plus TensorBoard / wandb when configured."""

    def __init__(self, run_dir: Path, cfg: DictConfig):
        self.file = open(run_dir / "metrics.jsonl", "a", buffering=1) if cfg.logging.jsonl else None
        self.decisions = open(run_dir / "decisions.jsonl", "a", buffering=1)
        self.eval = open(run_dir / "eval.jsonl", "a", buffering=1)  # per held-out prompt, for bootstrap CIs
        self.oracle = open(run_dir / "oracle.jsonl", "a", buffering=1) if cfg.eval.oracle.samples else None  # per training prompt
        self.tb = self.wandb = None
        if cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if cfg.logging.wandb:
            import wandb

            self.wandb = wandb.init(
                project=cfg.logging.wandb_project,
                dir=str(run_dir),
                mode=cfg.logging.wandb_mode,
                config=OmegaConf.to_container(cfg, resolve=True),
            )

    def write(self, step: int, metrics: dict, decisions: list[dict] = (), eval_records: list[dict] = (), oracle_records: list[dict] = ()) -> None:
        # A NaN or inf (no clipped token, an empty batch) is left out like None: json.dumps wrote them
        # as NaN/Infinity, which strict JSON readers (jq's older builds, JavaScript) refuse.
        record = {"step": step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}}
        if self.file:
            self.file.write(json.dumps(record, allow_nan=False) + "\n")
        for d in decisions:
            self.decisions.write(json.dumps({"step": step, **d}) + "\n")
        for r in eval_records:
            self.eval.write(json.dumps({"step": step, **r}) + "\n")
        for r in oracle_records:
            self.oracle.write(json.dumps({"step": step, **r}) + "\n")
        if self.tb:
            for k, v in record.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb:
            self.wandb.log(record, step=step)

    def rewind(self, step: int) -> None:
        """Drop every record of ``step`` or later from the JSONL files: a run that goes back to a
        checkpoint (resume, a learner restart) trains those steps again, and their first records
        would be counted twice by a reader that does not keep the last record of each step (the
        oracle report did). A line a crash cut short goes too. TensorBoard and wandb keep theirs."""
        for name in ("file", "decisions", "eval", "oracle"):
            f = getattr(self, name)
            if f is None:
                continue
            path = Path(f.name)
            f.close()
            kept = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", -1) < step:
                        kept.append(line + "\n")
                except json.JSONDecodeError:
                    continue
            write_text_whole(path, "".join(kept))
            setattr(self, name, open(path, "a", buffering=1))

    def close(self) -> None:
        for f in (self.file, self.decisions, self.eval, self.oracle):
            if f:
                f.close()
        if self.tb:
            self.tb.close()
        if self.wandb:
            self.wandb.finish()


def console_line(step: int, total: int, m: dict) -> str:
    t = lambda k: m.get(f"time/{k}", 0.0)  # noqa: E731
    parts = [
        f"step {step}/{total}",
        f"reward {m['reward']:.3f}",
        f"acc {m['accuracy']:.3f}",
    ]
    if "eval/accuracy" in m:
        parts.append(f"heldout {m['eval/accuracy']:.3f}")
    parts += [
        f"rollouts {int(m.get('rollouts', 0))}",
        f"len {m['response_length']:.0f}",
        f"time gen {t('generate'):.1f}s verify {t('verify'):.1f}s value {t('value'):.1f}s "
        f"learn {t('learn'):.1f}s sync {t('sync'):.1f}s",
    ]
    if "v05/accepted" in m:
        parts.append(f"v05 acc/shr/rej {m['v05/accepted']}/{m['v05/shrunk']}/{m['v05/rejected']}")
    if m.get("learner/optimizer_steps", 1) > 1:
        parts.append(f"updates {m['learner/optimizer_steps']} clip lo/hi {m['learner/clip_frac_low']:.3f}/{m['learner/clip_frac_high']:.3f}")
    if m.get("async/stale_dropped"):
        parts.append(f"stale dropped {m['async/stale_dropped']}")
    restarts = {k.split("/")[1].removesuffix("_restarts"): v for k, v in m.items() if k.startswith("faults/") and k.endswith("_restarts") and v}
    if restarts:
        parts.append("restarts " + " ".join(f"{r} {n}" for r, n in restarts.items()) + f" ({m['faults/seconds_lost']:.1f}s lost)")
    return " | ".join(parts)


GUARDED_KEYS = ("model.path", "model.dtype", "model.lora.rank", "model.lora.target_modules", "model.lora.alpha", "algorithm.name", "algorithm.estimator", "algorithm.loss", "weighting.name",
                "cluster.zero_stage")  # DeepSpeed's optimizer files differ by stage: another failed in the learners, after every role started


def check_resume_config(ckpt: Path, cfg: DictConfig) -> None:
    """Refuse to resume a checkpoint into a different model or algorithm, unless allowed."""
    saved = OmegaConf.load(ckpt / "config.yaml")
    saved_value = lambda k: OmegaConf.select(saved, k, default=BEFORE_LORA.get(k))  # noqa: E731
    def same(key: str) -> bool:
        if key == "model.path":  # one model spelt two ways (a built-in's name, its folder) is the same model
            return model_location(saved_value(key), saved.get("cache_dir")) == model_location(cfg.model.path, cfg.get("cache_dir"))
        if key.startswith("model.lora.") and key != "model.lora.rank" and saved_value("model.lora.rank") == cfg.model.lora.rank == 0:
            return True  # no adapters either side: their settings change nothing
        return saved_value(key) == OmegaConf.select(cfg, key)

    changed = [f"{k}: {saved_value(k)!r} -> {OmegaConf.select(cfg, k)!r}" for k in GUARDED_KEYS if not same(k)]
    ranks = saved_value("cluster.num_learners"), cfg.cluster.num_learners
    if (saved_value("cluster.zero_stage") or 0) >= 1 and ranks[0] is not None and ranks[0] != ranks[1]:  # optimizer state is per rank
        changed.append(f"cluster.num_learners under ZeRO-{saved_value('cluster.zero_stage')}: {ranks[0]} -> {ranks[1]}")
    if changed and not cfg.resume.allow_config_change:
        raise ConfigError(
            f"resume: checkpoint {ckpt} was written with a different config ({'; '.join(changed)}). "
            "Pass resume.allow_config_change=true to resume anyway, or resume=never to start fresh."
        )


def check_resume_data(ckpt: Path, stream) -> None:
    """Refuse, before any role starts, to resume a checkpoint into different training prompts (a
    different dataset, data settings, seed or held-out warm-up prompts): its stream position would
    point into other data."""
    saved = trainer_state(ckpt)["stream"]
    problem = stream.mismatch(saved)
    if problem is not None:
        raise ConfigError(f"resume: checkpoint {ckpt}: {problem}. Resume with the checkpoint's data settings, or pass "
                          "resume=never (or another run_dir) to start fresh.")


def save_training_state(run_dir: Path, step: int, roles: Roles, state: dict, cfg: DictConfig) -> Path:
    """`state["value"]`, when given, is the value server's state as of the trained batch (async runs:
    the server has already seen the batches generated ahead); otherwise it is read from the server."""

    def write(tmp: Path) -> None:
        ray.get([l.save_checkpoint.remote(str(tmp / "learner"), "policy") for l in roles.learners], timeout=cfg.trainer.role_timeout_s)
        value_state = state.get("value")
        if value_state is None and roles.value is not None:
            value_state = roles.value.call("state_dict")
        torch.save({**state, "value": value_state}, tmp / "trainer_state.pt")
        (tmp / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    from rlvr.runtime.faults import RoleFailed
    from rlvr.runtime.roles import LEARNER_LOSS_ERRORS

    # a learner lost mid-save sends the run back to its last checkpoint (the loop's restart), not out
    return save_checkpoint(run_dir, step, write, keep=cfg.trainer.keep_checkpoints, passes_through=(RoleFailed, *LEARNER_LOSS_ERRORS))


def unloadable(ckpt: Path, what: str, e: BaseException) -> ConfigError:
    """A checkpoint whose sizes match its manifest but whose bytes do not load (a disk or copy fault)."""
    return ConfigError(f"resume: checkpoint {ckpt}: {what} does not load ({last_line(e)}); pass resume=<an earlier checkpoint> "
                       "(its checkpoints/step_*), or resume=never to start fresh")


def trainer_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "trainer_state.pt", weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch.load raises RuntimeError, EOFError, UnpicklingError, ...
        raise unloadable(ckpt, "trainer_state.pt", e) from e


def load_training_state(ckpt: Path, roles: Roles) -> dict:
    try:
        ray.get([l.load_checkpoint.remote(str(ckpt / "learner"), "policy") for l in roles.learners])
    except ray.exceptions.RayTaskError as e:  # the actor lives: it was its load that failed
        raise unloadable(ckpt, "the learner's state (learner/)", e) from e
    state = trainer_state(ckpt)
    if roles.value is not None and state.get("value") is not None:
        roles.value.load(state["value"])
    return state


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _lock_or_refuse(handle, run_dir: Path) -> None:
    """Take the run dir's lock on ``handle`` (its open ``.lock``), or close it and refuse, naming the holder."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"run_dir {run_dir} is in use by {holder}: two trainers in one run dir overwrite each other's "
                          "checkpoints and records; wait for it or stop it, or pick another run_dir") from None


def refuse_before_start(cfg: DictConfig) -> None:
    """What `train` would refuse in an existing run dir, asked before anything is written there: a
    run dir another trainer holds, a checkpoint to resume that is missing or of another config.
    (`rlvr train` asks before Hydra writes ``run_dir/.hydra/``, which a refused command replaced.)"""
    run_dir = Path(str(cfg.run_dir))
    if (run_dir / ".lock").exists():
        with open(run_dir / ".lock", "a+", encoding="utf-8") as handle:  # writable, as NFS's emulated flock needs
            _lock_or_refuse(handle, run_dir)  # released as the file closes
    ckpt = resolve_resume(run_dir, str(cfg.resume.mode))
    if ckpt is not None:
        check_resume_config(ckpt, cfg)


@contextlib.contextmanager
def hold_run_dir(run_dir: Path):
    """One trainer per run dir, for as long as it trains: a second (the same command run twice, a
    requeued job while the first still runs) is refused, naming the first. Two at once re-saved the
    same checkpoints, pruned each other's, and one's metrics went to a file the other had replaced."""
    handle = open(run_dir / ".lock", "a+", encoding="utf-8")
    _lock_or_refuse(handle, run_dir)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # the lock goes with the descriptor, and with the process however it ends


class RunStopped(KeyboardInterrupt):
    """The run stopped on SIGTERM/SIGINT: at ``step``'s checkpoint, or (``step`` None) before training.
    No summary.json is written, and `rlvr train` exits 128 + the signal, so a sweep or a script
    stops with it (a stopped run returned as if finished: exit 0, the sweep's next job started)."""

    def __init__(self, signum: int, step: int | None, aborted: bool = False):
        self.signum, self.step = signum, step
        if aborted:  # a second signal: whatever the run was doing (saving, stopping) was cut short
            where = "again, aborting; the same command resumes from the last complete checkpoint"
        else:
            where = (f"at step {step}'s checkpoint" if step is not None else "before its first step") + "; the same command resumes"
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}")


class StopRequest:
    """SIGTERM/SIGINT from the start of a run to its end. While the loop trains (``deferring``) a
    signal asks it to checkpoint after the current step and stop, and a second one aborts; before
    (Ray and the roles starting, the warm start, the step-0 evaluation) it raises RunStopped at
    once, so the roles and Ray are torn down (SIGTERM there reached Ray's own handler, which
    aborted the driver and left Ray's agents running). A RunStopped raised inside a Ray call comes out
    of it as a plain KeyboardInterrupt: ``stopped`` keeps what was raised, for the caller to raise again."""

    def __init__(self):
        self.signal: int | None = None
        self.stopped: RunStopped | None = None
        self.deferring = False
        self.previous = {}
        self.install()

    def install(self) -> None:
        """Take SIGTERM and SIGINT (again after `ray.init`, which puts its own SIGTERM handler in:
        it aborted the driver with no checkpoint). `restore` gives back the handlers from before the run."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous.setdefault(sig, signal.signal(sig, self.handle))

    def handle(self, signum, frame):
        if self.signal is not None:
            self.stopped = RunStopped(signum, None, aborted=True)
            raise self.stopped
        self.signal = signum
        if not self.deferring:
            self.stopped = RunStopped(signum, None)
            raise self.stopped
        log.warning("received %s: saving a checkpoint after this step, then stopping", signal.Signals(signum).name)

    def stop_behind(self, e: BaseException) -> RunStopped | None:
        """The stop an exception out of a run stands for, or None: the RunStopped raised, which Ray's
        get/wait give back as a plain KeyboardInterrupt, or ray.init's own SIGTERM handler's exit(15),
        in place until `install` runs again (it exited silently, 15 and not 143)."""
        if isinstance(e, KeyboardInterrupt):
            return self.stopped
        if isinstance(e, SystemExit) and e.code == signal.SIGTERM and self.signal is None:
            return RunStopped(signal.SIGTERM, None)
        return None

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
