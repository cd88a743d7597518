"""Beam's portable runner on this machine: the local job service and an external worker pool.

This is how Flink, Spark and Dataflow Runner v2 execute a Python pipeline: the driver submits a
pipeline proto to a job service, and the job service has SDK workers (separate Python processes
that know nothing of the driver) run it. Here the job service is Beam's own
(`local_job_service_main`) and the workers come from `worker_pool_main`, an EXTERNAL environment.

The worker pool starts `python -c "...SdkHarness(...).run()"` with `python` from PATH, in its own
working directory, with its own environment. So the pool runs with the virtual environment's
`bin` first on PATH, in a scratch directory, and without PYTHONPATH: the workers import the
project only as an installed package would be imported (here the editable install's finder),
never from the driver's working directory or `__main__`.

Each service runs in a process group of its own (the pool's workers are in the pool's group), so
`stop()` kills everything they started.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, Iterator, List, Optional

VENV_BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def worker_environment() -> Dict[str, str]:
    """The environment of the services and of the SDK workers the pool starts."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["VIRTUAL_ENV"] = os.path.dirname(VENV_BIN)
    # The pool's workers run `SdkHarness(...).run()` directly, not sdk_worker_main, so they do
    # not import `--beam_plugin` modules (components.worker_setup, which sets this switch before
    # TensorFlow loads). A real runner's SDK container (boot -> sdk_worker_main) does import it;
    # the environment stands in for that, as a container image's ENV line would. (Every stage
    # also passed without it here: the workers unpickle a `components` DoFn first.)
    env["TF_USE_LEGACY_KERAS"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = env.get("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent(sig: int):
    """A preexec_fn: the child gets `sig` when the process that started it dies, even by
    SIGKILL or an unhandled SIGTERM (a CI timeout), when no finalizer runs (Linux only)."""
    parent = os.getpid()

    def preexec() -> None:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec if sys.platform.startswith("linux") else None


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("localhost", port), 0.5):
        return True
    return False


class PortableServices:
    """The job service on `job_port` and the worker pool on `worker_port`, as subprocesses."""

    def __init__(self, workdir: str, job_port: Optional[int] = None,
                 worker_port: Optional[int] = None):
        self.workdir = str(workdir)
        self.job_port = job_port or free_port()
        self.worker_port = worker_port or free_port()
        self.procs: List[subprocess.Popen] = []
        self.logs: Dict[str, str] = {}

    @property
    def beam_args(self) -> List[str]:
        """The flags that send a pipeline to these services."""
        return ["--runner=PortableRunner", f"--job_endpoint=localhost:{self.job_port}",
                "--environment_type=EXTERNAL",
                f"--environment_config=localhost:{self.worker_port}"]

    def _start(self, name: str, module: str, *args: str) -> subprocess.Popen:
        os.makedirs(self.workdir, exist_ok=True)
        log_path = os.path.join(self.workdir, f"{name}.log")
        self.logs[name] = log_path
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module, *args], cwd=self.workdir,
                env=worker_environment(), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,  # its own process group
                preexec_fn=_die_with_parent(signal.SIGTERM))
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 120.0) -> "PortableServices":
        try:
            self._start("job_service", "apache_beam.runners.portability.local_job_service_main",
                        "--port", str(self.job_port))
            self._start("worker_pool", "apache_beam.runners.worker.worker_pool_main",
                        "--service_port", str(self.worker_port))
            deadline = time.monotonic() + timeout
            for proc, port in zip(self.procs, (self.job_port, self.worker_port)):
                while not _accepts(port):
                    if proc.poll() is not None:
                        raise RuntimeError(f"{proc.args[2]} exited with {proc.returncode}:\n"
                                           + self.log_tail())
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{proc.args[2]} did not listen on port {port} "
                                           f"within {timeout:.0f}s:\n" + self.log_tail())
                    time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def jobs(self) -> List[Dict[str, object]]:
        """The jobs the job service ran: id, state, the URNs of their environments, and the
        names of the pipeline's top-level transforms (which stage's pipeline it was)."""
        import grpc
        from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

        out = []
        with grpc.insecure_channel(f"localhost:{self.job_port}") as channel:
            stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
            for info in stub.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=30).job_info:
                pipeline = stub.GetPipeline(beam_job_api_pb2.GetJobPipelineRequest(
                    job_id=info.job_id), timeout=30).pipeline
                out.append({"job_id": info.job_id,
                            "state": beam_job_api_pb2.JobState.Enum.Name(info.state),
                            "environments": sorted({e.urn for e in
                                                    pipeline.components.environments.values()}),
                            "transforms": sorted(
                                {t.unique_name.split("/")[0]
                                 for t in pipeline.components.transforms.values()})})
        return out

    def pids(self) -> List[int]:
        """Every live process in the services' process groups (workers included)."""
        groups = {p.pid for p in self.procs}
        out = subprocess.run(["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True)
        return [int(pid) for pid, pgid, stat in (line.split() for line in out.stdout.splitlines())
                if int(pgid) in groups and not stat.startswith("Z")]

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM to each group, then SIGKILL to whatever is left; reaps the services."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)  # the group id is the service's pid
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.1)
            for proc in self.procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if not self.pids():
                break

    def log_tail(self, chars: int = 3000) -> str:
        tails = []
        for name, path in self.logs.items():
            with contextlib.suppress(OSError), open(path, errors="replace") as f:
                tails.append(f"--- {name} ---\n{f.read()[-chars:]}")
        return "\n".join(tails)


@contextlib.contextmanager
def portable_services(workdir: str) -> Iterator[PortableServices]:
    services = PortableServices(workdir).start()
    try:
        yield services
    finally:
        services.stop()
