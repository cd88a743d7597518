"""Helpers shared by the benchmarks in bench/: process-tree peak RSS, medians and spreads, and a
description of the machine and the library versions a result was measured with.

Standard library only (psutil when installed), so that importing it never starts TensorFlow.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Mapping, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TREC = os.path.join(REPO, "data", "trec.csv")
# Every child the benchmarks start gets these (tf.Transform needs Keras 2; no C++ chatter).
ENV = {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
VERSIONED_PACKAGES = ("tensorflow", "tf_keras", "tensorflow-transform", "tfx-bsl",
                      "tensorflow-data-validation", "tensorflow-model-analysis", "apache-beam",
                      "numpy", "pyarrow")

def cli(*args: str) -> List[str]:
    """A `local_runner.py` command line, run with this interpreter."""
    return [sys.executable, os.path.join(REPO, "local_runner.py"), *args]


def write_copies(path: str, rows: Iterable[Mapping[str, str]], copies: int) -> int:
    """JSONL of `rows` (text, label) repeated `copies` times, each with an id `r<copy>-<row>`;
    returns the number of lines written."""
    rows = list(rows)
    with open(path, "w", encoding="utf-8") as f:
        for c in range(copies):
            for i, row in enumerate(rows):
                f.write(json.dumps({"id": f"r{c}-{i}", "text": row["text"],
                                    "label": row["label"]}, ensure_ascii=False) + "\n")
    return copies * len(rows)


try:
    import psutil
except ImportError:  # /proc does the same on Linux
    psutil = None

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


# ----------------------------------------------------------------------------------------------
# Peak memory of a process tree.


def _children_map() -> Dict[int, List[int]]:
    children: Dict[int, List[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone
        # pid (comm) state ppid ...: comm may hold spaces and parentheses
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    return children


def _rss_proc(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(pid: int) -> Dict[int, int]:
    """{pid: RSS bytes} of `pid` and all its descendants, now."""
    if psutil is not None:
        try:
            root = psutil.Process(pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return {}
        out = {}
        for p in procs:
            try:
                out[p.pid] = p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return out
    children = _children_map()
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        out[p] = _rss_proc(p)
        todo += children.get(p, [])
    return out


def run_measured(cmd: List[str], poll: float, log_path: str,
                 env: Optional[Mapping[str, str]] = None, cwd: str = REPO,
                 timeout: Optional[float] = None) -> Dict[str, float]:
    """Runs `cmd` (stdout and stderr to `log_path`); its exit code, wall time and the peak
    summed / single-process RSS of its process tree, sampled every `poll` seconds.

    `env`: extra variables over os.environ and ENV. `timeout`: seconds after which the whole
    process group is killed (returncode then negative).
    """
    full_env = dict(os.environ, **ENV, **(env or {}))
    peak_sum = peak_one = 0
    processes = 0
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=timeout is not None)
        try:
            while proc.poll() is None:
                sizes = tree_rss(proc.pid)
                if sizes:
                    peak_sum = max(peak_sum, sum(sizes.values()))
                    peak_one = max(peak_one, max(sizes.values()))
                    processes = max(processes, len(sizes))
                if timeout is not None and time.monotonic() - start > timeout:
                    break
                time.sleep(poll)
        finally:
            if proc.poll() is None:  # timed out, or this process is being stopped
                if timeout is not None:
                    os.killpg(proc.pid, 9)  # its own session: Beam's workers too
                else:
                    proc.kill()
                proc.wait()
    wall = time.monotonic() - start
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_bytes": peak_sum,
            "peak_single_process_rss_bytes": peak_one, "max_processes": processes}


def log_tail(path: str, chars: int = 3000) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------
# Medians and spreads.


def spread(values: Iterable[float]) -> Dict[str, float]:
    """{median, min, max, n, spread (max - min) / median, values} of the finite values given."""
    vals = [float(v) for v in values if v is not None and v == v]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "spread": None, "values": []}
    median = statistics.median(vals)
    return {"median": median, "min": min(vals), "max": max(vals), "n": len(vals),
            "spread": (max(vals) - min(vals)) / median if median else None, "values": vals}


def fmt_spread(s: Optional[Dict[str, float]], digits: int = 2, unit: str = "") -> str:
    """'1.23 (1.10-1.40)' for a spread() dict; '-' when empty."""
    if not s or s.get("median") is None:
        return "-"
    f = f"{{:.{digits}f}}"
    if s["n"] == 1:
        return f.format(s["median"]) + unit
    return f"{f.format(s['median'])}{unit} ({f.format(s['min'])}-{f.format(s['max'])})"


def mib(n: Optional[float]) -> Optional[float]:
    return None if n is None else round(n / (1 << 20), 1)


# ----------------------------------------------------------------------------------------------
# The machine and the versions.


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_ram_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def package_versions(names: Iterable[str] = VERSIONED_PACKAGES) -> Dict[str, Optional[str]]:
    from importlib import metadata

    out: Dict[str, Optional[str]] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> Optional[str]:
    """The checkout's commit, `git rev-parse --short HEAD` (read only; uncommitted edits are
    not detected: `git status` could rewrite the index under a concurrent git command)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return head.stdout.strip() or None if head.returncode == 0 else None


def machine() -> Dict[str, object]:
    ram = total_ram_bytes()
    return {"cpu_model": cpu_model(), "cpus": os.cpu_count(), "usable_cpus": usable_cpus(),
            "ram_bytes": ram, "ram_gib": round(ram / (1 << 30), 1) if ram else None,
            "platform": platform.platform(), "python": platform.python_version(),
            "python_executable": sys.executable}


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
