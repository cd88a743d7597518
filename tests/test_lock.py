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


def _start_run_after(barrier, directory, pipeline_name, run_id, results):
    from pipeline import metadata as meta

    store = meta.MetadataStore(directory)
    barrier.wait()
    try:
        store.start_run(pipeline_name, run_id, {"kind": meta.SCORING_RUN})
        results.put("ok")
    except Exception as e:  # noqa: BLE001  (reported to the test)
        results.put(f"{type(e).__name__}: {e}")


def test_runs_that_share_a_store_without_a_lock_start_together(tmp_path):
    """Scoring runs into different outputs share the pushing pipeline's store but no lock:
    several starting at the same moment under a parent context that does not exist yet all
    start (MLMD refuses the second insert of the same context or type)."""
    import multiprocessing

    from pipeline import metadata as meta

    directory = str(tmp_path / "store")
    meta.MetadataStore(directory)
    context = multiprocessing.get_context("fork")
    failures = []
    for trial in range(6):
        barrier, results = context.Barrier(4), context.Queue()
        processes = [context.Process(target=_start_run_after, args=(
            barrier, directory, f"scoring-{trial}", f"run-{trial}-{i}", results))
            for i in range(4)]
        for p in processes:
            p.start()
        outcomes = [results.get(timeout=120) for _ in processes]
        for p in processes:
            p.join()
        failures += [o for o in outcomes if o != "ok"]
    assert not failures, failures
    runs = meta.MetadataStore(directory).runs()
    assert len(runs) == 24
