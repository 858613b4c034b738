"""A process's own temp dir (`rlvr.runtime.scratch`): the next owner removes those of dead processes,
however they died, and leaves live ones alone."""

import os
import signal
import subprocess
import sys
import time

from rlvr.runtime.scratch import LOCK, own_tempdir

HOLD = """
import sys, time
from pathlib import Path
from rlvr.runtime.scratch import own_tempdir
d = own_tempdir("rlvr-t-", sys.argv[1])
(Path(d) / "vllm_dist_0").write_bytes(b"x")  # what vLLM leaves there
print(d, flush=True)
time.sleep(600)
"""


def holder(base):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(base)], stdout=subprocess.PIPE, text=True)
    return p, p.stdout.readline().strip()


def test_a_sigkilled_owner_s_dir_goes_with_the_next_owner_and_a_live_one_stays(tmp_path):
    dead, dead_dir = holder(tmp_path)
    live, live_dir = holder(tmp_path)
    try:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
        assert os.path.exists(os.path.join(dead_dir, "vllm_dist_0"))  # a SIGKILL cleans nothing up
        lockless_old, lockless_new = tmp_path / "rlvr-t-old", tmp_path / "rlvr-t-new"
        lockless_old.mkdir(), lockless_new.mkdir()  # owners that died before they locked it, or are locking it now
        os.utime(lockless_old, (time.time() - 7200, time.time() - 7200))
        (tmp_path / "other").mkdir()

        mine = own_tempdir("rlvr-t-", str(tmp_path))
        assert not os.path.exists(dead_dir) and not lockless_old.exists()
        assert os.path.exists(os.path.join(live_dir, "vllm_dist_0")) and lockless_new.exists() and (tmp_path / "other").exists()
        assert os.path.exists(os.path.join(mine, LOCK)) and own_tempdir("rlvr-t-", str(tmp_path)) == mine  # one per process
    finally:
        live.kill()
        live.wait()
    own_tempdir("rlvr-t2-", str(tmp_path))  # another owner's start sweeps only its own prefix
    assert os.path.exists(live_dir)


def test_an_owned_dir_removed_under_its_owner_is_made_anew_where_the_first_was(tmp_path):
    """The engine points tempfile at its own dir; a temp cleaner that removed it made the next engine
    of the same process (a kept one, rebuilt) look for a base inside the removed dir."""
    import shutil
    import tempfile

    first = own_tempdir("rlvr-gone-", str(tmp_path))
    saved, tempfile.tempdir = tempfile.tempdir, first
    try:
        shutil.rmtree(first)
        again = own_tempdir("rlvr-gone-")
        assert again != first and os.path.dirname(again) == str(tmp_path) and os.path.exists(os.path.join(again, LOCK))
    finally:
        tempfile.tempdir = saved
