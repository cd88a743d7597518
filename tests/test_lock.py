"""One run at a time per pipeline root: refusal naming the holder, and stale-lock takeover."""
import json
import logging
import os
import signal
import socket
import subprocess
import sys

import pytest

from conftest import IN_MEMORY, REPO, run_cli
from pipeline.lock import LOCK_FILE, RootLock, RootLockedError

HOLD = ("import sys, time; sys.path.insert(0, {repo!r}); from pipeline.lock import RootLock\n"
        "with RootLock({root!r}, 'holder-run'):\n"
        "    print('held', flush=True); time.sleep(120)\n")


@pytest.fixture
def holder(tmp_path):
    """Another process holding the root's lock; yields (root, process)."""
    root = str(tmp_path / "root")
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=REPO, root=root)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield root, proc
    proc.kill()
    proc.wait()


def test_a_second_run_is_refused_naming_the_holder(holder):
    root, proc = holder
    with pytest.raises(RootLockedError, match=rf"pid {proc.pid} on {socket.gethostname()}, "
                                              r"started .* \(run holder-run\)"):
        with RootLock(root, "second"):
            pass


def test_the_cli_refuses_at_once_with_exit_2(holder, tmp_path):
    root, proc = holder
    data = tmp_path / "q.csv"
    data.write_text("text,label\nhow far is it ?,NUM\n")
    refused = run_cli("run", "--input", str(data), "--pipeline-root", root, *IN_MEMORY,
                      timeout=120)
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"pid {proc.pid}" in refused.stderr and "in use by another run" in refused.stderr
    assert not os.path.exists(os.path.join(root, "runs"))  # the refused run wrote nothing


def test_a_lock_left_by_a_killed_run_is_taken_over(holder, caplog):
    root, proc = holder
    proc.send_signal(signal.SIGKILL)  # dies holding the lock: the kernel releases it
    proc.wait()
    with caplog.at_level(logging.WARNING):
        with RootLock(root, "next") as lock:
            with open(lock.path) as f:
                assert json.load(f)["run_id"] == "next"
    assert f"pid {proc.pid}" in caplog.text and "took over" in caplog.text
    with open(os.path.join(root, LOCK_FILE)) as f:
        assert f.read() == ""  # released normally: no holder named
    with RootLock(root, "again"):  # and free again
        pass
