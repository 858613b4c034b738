"""The `ipc` backend's CPU buckets: files in /dev/shm whose life the learner owns."""

import os
import subprocess
import sys
import time
import types
import uuid

import pytest
import torch

from rlvr.weight_sync import ipc

RECEIVER = """
import sys
from rlvr.weight_sync.ipc import open_shared
print(int(open_shared(sys.stdin.buffer.read()).view(__import__('torch').int64).sum()))
"""


def receive(handle: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RECEIVER], input=handle, capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_another_process_reads_the_bucket_and_release_removes_it():
    flat = torch.arange(1000, dtype=torch.int64).view(torch.uint8)
    bucket = ipc.share(flat)
    assert bucket.path.exists()
    out = receive(bucket.handle)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == sum(range(1000))
    ipc.release([bucket])
    assert not bucket.path.exists()


def test_a_bucket_no_engine_opened_leaves_nothing_in_shm():
    """The leak this layout fixes: torch's shared-memory files kept a count for a receiver that
    never came (an engine stopped or dead before its load), so they outlived the run."""
    bucket = ipc.share(torch.ones(4096, dtype=torch.uint8))
    ipc.release([bucket])
    assert not bucket.path.exists()
    out = receive(bucket.handle)
    assert out.returncode != 0 and b"is gone" in out.stderr  # a late engine gets a message, not garbage


def test_a_mapped_bucket_stays_readable_after_release():
    bucket = ipc.share(torch.full((64,), 7, dtype=torch.uint8))
    opened = ipc.open_shared(bucket.handle)
    ipc.release([bucket])
    del bucket
    assert int(opened.sum()) == 7 * 64


def test_orphans_of_dead_learners_are_removed_and_live_ones_kept():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = ipc.SHM_DIR / f"{ipc.FILE_PREFIX}{int(dead.stdout)}-test"
    orphan.write_bytes(b"x")
    mine = ipc.share(torch.zeros(8, dtype=torch.uint8))
    try:
        removed = ipc.remove_orphans()
        assert orphan in removed and not orphan.exists()
        assert mine.path.exists()
    finally:
        orphan.unlink(missing_ok=True)
        ipc.release([mine])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bucket_holds_the_packed_bytes(dtype):
    t = torch.randn(33, dtype=torch.float32).to(dtype)
    bucket = ipc.share(t.view(torch.uint8))
    try:
        assert torch.equal(ipc.open_shared(bucket.handle).view(dtype), t)
    finally:
        ipc.release([bucket])


BLOCK_ROLES = """
import sys
class NoRoles:  # the device machine has torch and transformers only
    def find_spec(self, name, path, target=None):
        if name.split('.')[0] in ('ray', 'vllm', 'deepspeed'):
            raise ImportError('not on the device machine: ' + name)
sys.meta_path.insert(0, NoRoles())
import benchmarks.profiles.gpu_check, rlvr.weight_sync.ipc
"""


def test_the_gpu_check_and_the_ipc_ends_import_without_ray():
    out = subprocess.run([sys.executable, "-c", BLOCK_ROLES], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert out.returncode == 0, out.stderr[-2000:]


def test_remove_orphans_skips_a_file_whose_name_holds_no_pid():
    """A file `rlvr-weights-<not a pid>` in /dev/shm (kills dropping `pid.isdigit() and`: int() raised
    ValueError and every learner's share_weights failed)."""
    odd = ipc.SHM_DIR / f"{ipc.FILE_PREFIX}notapid-{uuid.uuid4().hex}"  # unique: another run on this host may hold one
    odd.write_bytes(b"x")
    try:
        assert odd not in ipc.remove_orphans()
        assert odd.exists()
    finally:
        odd.unlink(missing_ok=True)


def test_sync_weights_reports_gigabytes_per_second_and_names_unknown_backends(monkeypatch):
    """A backend registered through BACKENDS (the documented extension point); kills `1e9` -> `1e6` in
    `sync/gb_per_s`, and dropping the unknown-backend ValueError."""
    import rlvr.weight_sync as ws

    def sync(learners, engines, version, bucket_mb, deadlines, on_failure, start):
        time.sleep(0.05)
        return 2 * 10**8, {"sync/load_s": 0.01}

    module = types.ModuleType("rlvr.weight_sync._kill_test_backend")
    module.sync = sync
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(ws.BACKENDS, "killtest", "_kill_test_backend")
    m = ws.sync_weights("killtest", [], [], version=1)
    assert m["sync/bytes"] == 2 * 10**8 and m["sync/load_s"] == 0.01
    assert m["sync/gb_per_s"] == pytest.approx(0.2 / m["time/sync"])
    assert m["sync/gb_per_s"] < 4  # 0.2 GB in >= 0.05 s
    with pytest.raises(ValueError, match="unknown weight sync backend"):
        ws.backend_module("nope")
