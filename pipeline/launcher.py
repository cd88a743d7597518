"""Training on several workers for the Trainer stage of `run` (`[trainer] workers = N`).

A `Launcher` starts the N workers of one training, each running `components.trainer.run_trainer`
with a TF_CONFIG that names the cluster and its own task (MultiWorkerMirroredStrategy), waits
for them, and returns the chief's result; the chief writes the stage's output directory. A
worker that exits with an error, or a training that outlives its timeout, fails the stage: every
worker still running is stopped (SIGTERM, then SIGKILL) and the error names the failed worker's
log. `LocalLauncher` runs the workers as processes of this machine on free local ports; it is
the only launcher this project runs and tests. A cluster launcher (a Kubernetes TFJob, a Vertex
AI custom job) implements the same `train` by submitting one job whose workers each run

    python -m pipeline.launcher --transform-dir DIR --output DIR --settings FILE --result FILE

with the TF_CONFIG its platform sets, and reading the chief's result file when it has finished
(see the README, "Training on several workers").
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from components.trainer import TrainerSettings

POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 10  # after SIGTERM, before SIGKILL
LOG_TAIL = 2000  # characters of the failed worker's log shown in the error
PIDS_FILE = "workers.json"


class WorkerFailedError(RuntimeError):
    """A worker of the Trainer stage failed or the training outlived its timeout (exit code 1)."""

    exit_code = 1


class Launcher:
    """Starts the workers of one training and waits for them (see the module's docstring)."""

    def train(self, transform_dir: str, output_dir: str, settings: TrainerSettings,
              log_dir: str) -> Dict[str, Any]:
        """Trains on `settings.workers` workers; returns the chief's `run_trainer` result."""
        raise NotImplementedError


def free_ports(n: int) -> List[int]:
    """`n` distinct ports free on this machine now (bound to port 0, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("", 0))  # every interface, as the workers' gRPC servers bind
        return [s.getsockname()[1] for s in sockets]


class LocalLauncher(Launcher):
    """The workers as processes of this machine, each in its own process group."""

    def train(self, transform_dir: str, output_dir: str, settings: TrainerSettings,
              log_dir: str) -> Dict[str, Any]:
        os.makedirs(log_dir, exist_ok=True)
        settings_file = os.path.join(log_dir, "settings.json")
        with open(settings_file, "w") as f:
            json.dump(dataclasses.asdict(settings), f)
        addresses = [f"localhost:{port}" for port in free_ports(settings.workers)]
        workers: List[subprocess.Popen] = []
        logs, results = [], []
        try:
            for index in range(settings.workers):
                logs.append(os.path.join(log_dir, f"worker-{index}.log"))
                results.append(os.path.join(log_dir, f"worker-{index}.json"))
                env = dict(os.environ, TF_CONFIG=json.dumps({
                    "cluster": {"worker": addresses}, "task": {"type": "worker",
                                                               "index": index}}))
                with open(logs[-1], "wb") as log:
                    workers.append(subprocess.Popen(
                        [sys.executable, "-m", "pipeline.launcher", "--transform-dir",
                         transform_dir, "--output", output_dir, "--settings", settings_file,
                         "--result", results[-1]],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                        start_new_session=True,
                        preexec_fn=functools.partial(_die_with_parent, os.getpid())))
            with open(os.path.join(log_dir, PIDS_FILE), "w") as f:
                json.dump([w.pid for w in workers], f)
            _wait(workers, logs, settings.worker_timeout_seconds)
        finally:
            _stop(workers)
        with open(results[0]) as f:  # worker 0 is the chief
            return json.load(f)


def _die_with_parent(driver: int) -> None:
    """In a worker, before it runs: Linux sends it SIGKILL when the driver dies, however it dies
    (kill -9, out of memory), so no worker outlives the run that started it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() != driver:  # the driver died before the setting took
            os._exit(1)
    except (OSError, AttributeError):  # not Linux: the driver's `finally` still stops them
        pass


def _wait(workers: List[subprocess.Popen], logs: List[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        codes = [w.poll() for w in workers]
        for index, code in enumerate(codes):
            if code is not None and code != 0:
                how = (f"was killed by signal {-code}" if code < 0 else f"exited with {code}")
                raise WorkerFailedError(
                    f"Trainer worker {index} of {len(workers)} {how}; the other workers were "
                    f"stopped. Its log: {logs[index]}\n{_tail(logs[index])}")
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            raise WorkerFailedError(
                f"the Trainer's {len(workers)} workers did not finish within "
                f"trainer.worker_timeout_seconds = {timeout:g}; they were stopped. Their logs: "
                + ", ".join(logs))
        time.sleep(POLL_SECONDS)


def _stop(workers: List[subprocess.Popen]) -> None:
    """Stops every worker still running, and whatever it started (its process group). A second
    Ctrl-C while it waits skips the grace period, not the stopping."""
    try:
        _stop_gracefully(workers)
    except KeyboardInterrupt:
        for w in workers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(w.pid, signal.SIGKILL)
        raise


def _stop_gracefully(workers: List[subprocess.Popen]) -> None:
    running = [w for w in workers if w.poll() is None]
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5)):
        for w in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(w.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(w.poll() is None for w in running):
            time.sleep(0.1)
        running = [w for w in running if w.poll() is None]
        if not running:
            break
    for w in workers:  # a worker that ended by itself may have left children in its group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(w.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.wait(timeout=5)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - LOG_TAIL))
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""


def settings_from_dict(values: Dict[str, Any]) -> TrainerSettings:
    """The TrainerSettings `dataclasses.asdict` made `values` from (JSON turns tuples into
    lists; the dataclasses validate the rest)."""
    from components.model import ModelSettings

    model = {k: tuple(v) if isinstance(v, list) else v
             for k, v in (values.get("model") or {}).items()}
    rest = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k != "model"}
    return TrainerSettings(model=ModelSettings(**model), **rest)


def _worker_main(argv: Optional[List[str]] = None) -> int:
    """One worker: TF_CONFIG from the environment, the settings from a file."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = argparse.ArgumentParser(prog="python -m pipeline.launcher")
    for flag in ("--transform-dir", "--output", "--settings", "--result"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)

    import logging

    from components import PROGRESS_LOGGER, fileio
    from components.trainer import run_trainer

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger(PROGRESS_LOGGER).setLevel(logging.INFO)
    # Local paths or object storage alike (a cluster's workers share no disk).
    settings = settings_from_dict(fileio.read_json(args.settings))
    cluster_spec = json.loads(os.environ["TF_CONFIG"])
    result = run_trainer(args.transform_dir, args.output, settings, cluster_spec)
    fileio.replace_text(args.result, json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    code = _worker_main()
    # As the CLI does: TensorFlow's teardown would print spurious tracebacks (TF 2.16).
    logging_module = sys.modules.get("logging")
    if logging_module is not None:
        logging_module.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
