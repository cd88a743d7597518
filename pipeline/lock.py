"""One run at a time per pipeline root: an exclusive OS file lock on `<metadata_dir>/.lock`.

The lock lives beside the root's ML Metadata store, in the pipeline root when that is local,
else in the local directory the config names (`metadata_dir`): object storage has no locks.

The lock is `flock(2)` on an open file, so the kernel releases it when its process dies, however
it dies (SIGKILL included): a lock left by a dead run is simply taken over. The file also names
the holder (pid, host, start time, run id), for the message a refused run prints, and is emptied
when a run ends normally, so a holder still named there when the lock is free was a run that
died. flock works on local filesystems, and on NFS, where Linux maps it to the server's
byte-range locks: machines that share the metadata directory over NFS share the lock.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
from typing import Any, Dict, Optional

from components import PROGRESS_LOGGER, fileio

LOCK_FILE = ".lock"


class RootLockedError(Exception):
    """Another run holds the pipeline root (exit code 2: try again when it has finished)."""

    exit_code = 2


class RootLock:
    """`with RootLock(directory, run_id):` holds the root (or a scoring run's output, `kind`)
    for the block, or raises RootLockedError. `directory` is local: the root's metadata directory (the root itself when
    it is local); `root` names the pipeline root in messages when it is elsewhere."""

    def __init__(self, directory: str, run_id: str, root: Optional[str] = None,
                 kind: str = "pipeline root"):
        self.path = os.path.join(directory, LOCK_FILE)
        self.run_id = run_id
        self.root = root or directory
        self.kind = kind  # what is held, in messages: "pipeline root", "scoring output"
        self._fd: Optional[int] = None

    def __enter__(self) -> "RootLock":
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise _in_use(self.root, self.kind, holder)
        previous = _read_holder(fd)
        if previous:
            logging.getLogger(PROGRESS_LOGGER).warning(
                "warning: took over the lock of a run that ended without releasing it (%s)",
                _describe(previous))
        _write(fd, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "run_id": self.run_id,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds")}))
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        _write(self._fd, "")  # a free lock names no holder
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


def refuse_if_held(directory: str, kind: str = "pipeline root") -> None:
    """Raises RootLockedError when another process holds the lock in the local `directory`
    now (nothing for a URL: object storage has no locks): a quick look, without TensorFlow or
    Beam, that a command takes before its slow imports, so that a second run is refused at
    once. Not a lock: the run still takes `RootLock` (of two runs that start together, one is
    refused there)."""
    if not fileio.is_local(directory):
        return
    directory = fileio.local_path(directory)
    path = os.path.join(directory, LOCK_FILE)
    if not os.path.exists(path):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(directory, kind, _read_holder(fd))
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _in_use(root: str, kind: str, holder: Dict[str, Any]) -> RootLockedError:
    return RootLockedError(f"{root} is in use by another run: {_describe(holder)}. "
                           f"One run at a time per {kind}; try again when it has finished.")


def _read_holder(fd: int) -> Dict[str, Any]:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode("utf-8", "replace").strip()
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {"unreadable": text[:200]}


def _write(fd: int, text: str) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, text.encode("utf-8"))


def _describe(holder: Dict[str, Any]) -> str:
    if not holder:
        return "a run that has not recorded itself yet"
    if "unreadable" in holder:
        return f"unknown holder ({holder['unreadable']!r})"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
            f"(run {holder.get('run_id')})")
