"""Running things for bench/speed.py: the subprocess runner, reading a run's summary through
the typed stage results, and the constants every part shares.
"""
from __future__ import annotations

import csv
import glob
import json
import os
import re
import shlex
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, TREC, cli, log_tail, mib, run_measured
from pipeline import configs, results  # noqa: E402  (the stages and their typed results)


BENCH = os.path.dirname(os.path.abspath(__file__))
PLAIN = os.path.join(BENCH, "plain_textcnn.py")
DIRECT = os.path.join(BENCH, "direct_score.py")
STAGES = configs.STAGES  # a stage a run did not run (the Tuner, off) reads as "-"
SCALE_MODES = {
    "mp1": ["--direct_running_mode=multi_processing", "--direct_num_workers=1"],
    "mp2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    "in_memory": ["--direct_running_mode=in_memory", "--direct_num_workers=1"],
}
MODE_NAMES = {"mp1": "multi_processing, 1 worker", "mp2": "multi_processing, 2 workers",
              "in_memory": "in_memory"}
GIB = 1 << 30
SIDES = ("pipeline", "plain", "plain_fast")  # part 1's three processes
FAST_FLAG = "--skip-autograph-keras"
TARGETS = {"ratio1": 1.0, "ratio1_floor": 1.5, "ratio2": 0.95, "ratio3": 0.8,
           "ratio4_workers": 1.7, "peak_16x_bytes": 4 * GIB, "ratio5": 3.0,
           "accuracy_tolerance": 0.01}


class BenchError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# Running things.


class Runner:
    def __init__(self, work_dir: str, poll: float, timeout: float):
        self.work_dir = work_dir
        self.poll = poll
        self.timeout = timeout
        self.logs = os.path.join(work_dir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self._n = 0

    def run(self, name: str, cmd: List[str], check: bool = True) -> Dict[str, Any]:
        self._n += 1
        log = os.path.join(self.logs, f"{self._n:03d}-{name}.log")
        print(f"  [{time.strftime('%H:%M:%S')}] {name}: {' '.join(shlex.quote(c) for c in cmd)}",
              flush=True)
        measured = run_measured(cmd, self.poll, log, timeout=self.timeout)
        measured["log"] = log
        print(f"    exit {measured['returncode']}, {measured['wall_s']:.1f} s, peak "
              f"{mib(measured['peak_rss_bytes'])} MiB", flush=True)
        if check and measured["returncode"] != 0:
            raise BenchError(f"{name} failed (exit {measured['returncode']}; log {log}):\n"
                             f"{error_lines(log)}")
        return measured


def last_json_line(path: str) -> Dict[str, Any]:
    with open(path, errors="replace") as f:
        for line in reversed(f.read().splitlines()):
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                return json.loads(line)
    raise BenchError(f"no JSON result line in {path}:\n{log_tail(path)}")


def read_summary(root: str) -> Dict[str, Any]:
    found = sorted(glob.glob(os.path.join(root, "runs", "*", "summary.json")))
    if not found:
        raise BenchError(f"no runs/*/summary.json under {root}")
    with open(found[-1]) as f:
        return json.load(f)


def run_facts(summary: Dict[str, Any]) -> Dict[str, Any]:
    """Stage seconds, accuracy, epochs, training documents of a run's summary.json."""
    stages = {s["name"]: s for s in summary.get("stages", [])}
    facts: Dict[str, Any] = {
        "run_id": summary.get("run_id"), "status": summary.get("status"),
        "exit_code": summary.get("exit_code"),
        "stage_seconds": {name: s.get("seconds") for name, s in stages.items()},
        "stage_status": {name: s.get("status") for name, s in stages.items()},
    }
    typed = results.stage_results(summary)
    eg = typed.get("ExampleGen") or results.ExampleGenResult()
    facts["split_rows"] = eg.splits or None
    transform = typed.get("Transform") or results.TransformResult()
    train_lengths = transform.token_lengths.get("train") or {}
    facts["train_examples"] = train_lengths.get("documents") or eg.splits.get("train")
    facts["max_len"] = transform.max_len
    facts["vocabulary_size"] = transform.vocabulary_size
    trainer = typed.get("Trainer")
    if trainer is not None:
        facts.update({
            "test_accuracy": trainer.metrics.get("test_accuracy"),
            "eval_accuracy": trainer.metrics.get("eval_accuracy"),
            "epochs_run": trainer.epochs_run, "best_epoch": trainer.best_epoch,
            "train_seconds": trainer.train_seconds,
        })
        if facts["train_examples"] and trainer.train_seconds:
            facts["train_examples_per_second"] = (facts["train_examples"] * trainer.epochs_run
                                                  / trainer.train_seconds)
    evaluator = typed.get("Evaluator") or results.EvaluatorResult()
    facts["evaluator_accuracy"] = evaluator.accuracy
    pusher = typed.get("Pusher") or results.PusherResult()
    facts["pushed_version"] = pusher.version
    facts["stages_total_seconds"] = sum(v for v in facts["stage_seconds"].values() if v)
    return facts


EPOCH_LINE = re.compile(r"^\s*epoch (\d+)/\d+: .*, ([\d.]+)s$")


def epoch_seconds_from_log(path: str) -> List[float]:
    """Per-epoch seconds of the Trainer's progress lines (`  epoch 3/50: ..., 2.4s`)."""
    seconds: List[float] = []
    with open(path, errors="replace") as f:
        for line in f:
            match = EPOCH_LINE.match(line.rstrip())
            if match:
                seconds.append(float(match.group(2)))
    return seconds


def steady_rate(examples: Optional[int], epoch_seconds: Sequence[float]) -> Optional[float]:
    """Examples/s over epochs 2.. (the first traces the step and fills the caches)."""
    if not examples or len(epoch_seconds) < 2 or not sum(epoch_seconds[1:]):
        return None
    return examples * (len(epoch_seconds) - 1) / sum(epoch_seconds[1:])


def error_lines(path: str) -> str:
    """The `error: ...` lines of a log (and what follows them), else its tail."""
    text = log_tail(path, 200_000)
    at = text.find("\nerror: ")
    return text[at + 1:at + 1500] if at >= 0 else text[-1500:]


def trec_rows() -> List[Dict[str, str]]:
    with open(TREC, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def ensure_trec(runner: Runner) -> None:
    if not os.path.exists(TREC):
        print(f"{TREC} is missing: fetching it", flush=True)
        runner.run("data-trec", cli("data", "trec", "--out", os.path.join(REPO, "data")))


def pipeline_cmd(inputs: str, root: str, *extra: str) -> List[str]:
    return cli("run", "--input", inputs, "--pipeline-root", root, *extra)


def remove(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None
