"""An Apache Airflow DAG for the pipeline: a task per stage, one pipeline run per DAG run.

A team's DAG file (in its dags folder, read by Airflow's own Python) calls `make_dag`:

    import sys
    sys.path.insert(0, "/srv/textcnn")                # the project checkout
    from pipeline.airflow_dag import make_dag

    dag = make_dag("textcnn_retraining", project_dir="/srv/textcnn",
                   python="/srv/textcnn/.venv/bin/python", inputs=["/data/incoming/"],
                   pipeline_root="/srv/textcnn/root", serving_dir="/srv/serving",
                   start_date=datetime.datetime(2026, 12, 1, tzinfo=datetime.timezone.utc))

Airflow lives in a virtualenv of its own (it needs protobuf 7, the pinned TensorFlow family
protobuf 4): this module imports only the standard library and Airflow, never the modules that
import TensorFlow, and the tasks run the pipeline with the project's Python:

    <python> <project_dir>/local_runner.py run --input ... --pipeline-root ... --serving-dir ...
        --run-id <the DAG run's id> --until <Stage>

Every task of a DAG run names the same pipeline run (`pipeline_run_id`, from the DAG run's id,
so stable across retries), which each task continues: the stages done by the tasks before are
kept, this task's stage runs (README, "Airflow"). So a DAG run is one pipeline run in ML
Metadata, with an execution per stage; between tasks it is "partial (up to STAGE)".

The tasks are Python operators that run the command in a subprocess rather than BashOperators:
the exit code must become Airflow's outcome, and only Python can raise the exceptions that say
"skip" or "fail without retrying" (`outcome_of_exit`); the command's output goes to the task's
log line by line.
"""
from __future__ import annotations

import collections
import datetime
import json
import os
import re
import shlex
import subprocess
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Union

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException, AirflowSkipException
from airflow.models.baseoperator import BaseOperator

# pipeline/configs.py's STAGES, spelled again here: that module imports TensorFlow (the test,
# tests/test_airflow.py, checks that the DAG's tasks are these stages).
STAGES = ("ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Tuner",
          "Trainer", "Evaluator", "Pusher")
TUNER = "Tuner"

# local_runner.py's exit codes (pipeline/api.py).
BAD_INPUT_OR_BUSY, ANOMALIES, NOT_BLESSED = 2, 3, 4

# What a failure callback's command or callable gets.
Alert = Union[str, Sequence[str], Callable[[Dict[str, Any]], None]]


def pipeline_run_id(dag_run_id: str) -> str:
    """The pipeline run of a DAG run: its id made a safe directory name, the same for every
    task and retry of the DAG run ("manual__2026-12-06T10:00:00+00:00" ->
    "manual__2026-12-06T100000_0000")."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", dag_run_id.replace(":", "")).lstrip("._-")
    return safe[:128] or "run"


def _with_exit_code(error: Exception, exit_code: int) -> Exception:
    error.exit_code = exit_code  # read by `alert_payload`
    return error


def outcome_of_exit(exit_code: int, stage: str, output: Sequence[str] = ()) -> None:
    """Turns the pipeline's exit code into the task's outcome: 0 success; 4 (not blessed) a
    skipped task, not a failure (the model was judged, retrying cannot change the decision);
    3 (blocking anomalies) a failure that is not retried (the data must change); 2 (the root
    held by another run, or bad input) and anything else a failure that Airflow retries.
    The message ends with the command's error (from `output`, its last lines)."""
    if exit_code == 0:
        return
    said = _error_lines(output)
    if exit_code == NOT_BLESSED:
        raise _with_exit_code(AirflowSkipException(
            f"{stage}: the model was not blessed (exit 4): not pushed; the run is recorded "
            f"'not blessed'{said}"), exit_code)
    if exit_code == ANOMALIES:
        raise _with_exit_code(AirflowFailException(
            f"{stage}: blocking data anomalies (exit 3): not retried{said}"), exit_code)
    what = ("the pipeline root is held by another run, or the input or config is bad"
            if exit_code == BAD_INPUT_OR_BUSY else "failed")
    raise _with_exit_code(AirflowException(f"{stage}: {what} (exit {exit_code}){said}"),
                          exit_code)


def _error_lines(output: Sequence[str]) -> str:
    """The command's error as it printed it (from its last `error:` line on), or its last
    lines; "" when it printed nothing."""
    lines = [line.rstrip("\n") for line in output]
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    lines = lines[starts[-1]:] if starts else lines[-5:]
    return "".join(f"\n{line}" for line in lines)


class PipelineStageOperator(BaseOperator):
    """Runs the pipeline up to `stage` in the DAG run's pipeline run: `command` followed by
    `--run-id <pipeline_run_id> --until <stage>` (and `--date <the logical date>` with
    `date_argument`), in a subprocess started in `cwd`."""

    ui_color = "#e8f0fe"

    def __init__(self, *, stage: str, command: Sequence[str], cwd: str,
                 date_argument: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.stage = stage
        self.command = list(command)
        self.cwd = cwd
        self.date_argument = date_argument
        self._process: Optional[subprocess.Popen] = None

    def argv(self, context) -> List[str]:
        argv = self.command + ["--run-id", pipeline_run_id(context["run_id"]),
                               "--until", self.stage]
        if self.date_argument:
            argv += ["--date", context["ds"]]
        return argv

    def execute(self, context) -> None:
        argv = self.argv(context)
        self.log.info("running: %s", shlex.join(argv))
        self._process = subprocess.Popen(argv, cwd=self.cwd, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True, errors="replace")
        tail: Deque[str] = collections.deque(maxlen=40)
        for line in self._process.stdout:
            self.log.info("%s", line.rstrip("\n"))
            tail.append(line)
        exit_code = self._process.wait()
        self.log.info("%s: exit code %d", self.stage, exit_code)
        outcome_of_exit(exit_code, self.stage, tail)

    def on_kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()  # the run records itself failed, then releases the root


def alert_payload(context, outcome: str = "failed") -> Dict[str, Any]:
    """What an alert says about a task: the DAG and its run, the pipeline run, the stage, the
    try, the pipeline's exit code (None when the task failed before it ran), the log's URL."""
    ti = context["task_instance"]
    error = context.get("exception")
    return {"outcome": outcome, "dag_id": ti.dag_id, "dag_run_id": ti.run_id,
            "pipeline_run_id": pipeline_run_id(ti.run_id), "task_id": ti.task_id,
            "stage": getattr(ti.task, "stage", ti.task_id), "try_number": ti.try_number,
            "max_tries": ti.max_tries, "exit_code": getattr(error, "exit_code", None),
            "error": None if error is None else str(error), "logical_date": context.get("ds"),
            "log_url": ti.log_url}


def send_alert(alert: Alert, payload: Dict[str, Any], timeout: float = 120) -> None:
    """Hands `payload` to `alert`: a callable gets the dict; a command (a shell line, or an
    argv list, e.g. the project's Python running its alerts) gets it as JSON on its stdin.
    A failing alert is logged, never raised: the task's outcome stays the one to see."""
    import logging

    log = logging.getLogger(__name__)
    try:
        if callable(alert):
            alert(payload)
            return
        proc = subprocess.run(alert, shell=isinstance(alert, str), input=json.dumps(payload),
                              text=True, capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            log.error("the alert command exited %d: %s", proc.returncode, proc.stderr[-2000:])
    except Exception:  # noqa: BLE001  (an alert must not change the task's outcome)
        log.exception("the alert failed")


def alert_callback(alert: Alert, outcome: str = "failed") -> Callable[[Any], None]:
    """A task callback (on_failure_callback, on_skipped_callback) that sends `alert_payload`."""
    def callback(context) -> None:
        send_alert(alert, alert_payload(context, outcome))

    return callback


def make_dag(dag_id: str, *, project_dir: str, python: str, inputs: Union[str, Sequence[str]],
             pipeline_root: str, serving_dir: str, start_date: datetime.datetime,
             config: Optional[str] = None, metadata_dir: Optional[str] = None,
             schedule: Any = "@daily", retries: int = 2,
             retry_delay: datetime.timedelta = datetime.timedelta(minutes=5),
             beam_args: Sequence[str] = (), date_argument: bool = False,
             on_failure: Optional[Alert] = None, on_not_blessed: Optional[Alert] = None,
             tune: bool = False, catchup: bool = False, max_active_runs: int = 1,
             tags: Sequence[str] = ("textcnn",), **dag_kwargs) -> DAG:
    """The pipeline as an Airflow 2.10 DAG: a task per stage, in order (the Tuner's only with
    `tune`), each running `<python> <project_dir>/local_runner.py run ...` up to its stage in
    the DAG run's pipeline run (see the module's docstring).

    `inputs`, `pipeline_root`, `serving_dir`, `config`, `metadata_dir`, `tune` and
    `beam_args` are the `run` command's flags. `retries` and `retry_delay` apply to each task
    (a retry continues the same pipeline run: the failed stage runs again, the others are
    kept). `date_argument`: each task also passes `--date <the DAG run's logical date>`.
    `on_failure`: a shell command (JSON on its stdin), an argv list, or a callable (a dict),
    told about a task that failed for good (`alert_payload`); by default, with a `config`,
    `local_runner.py alert`, which sends the config's `[alerts]` "failure" for a task that
    died without the pipeline's own alert (each run alerts its own ending, on every try;
    `api.alert_task_failure`); `on_not_blessed` likewise
    about a model not blessed (the Pusher's task skipped). `max_active_runs` is 1: DAG runs
    share the pipeline root, which holds one run at a time. Other keyword arguments go to
    `DAG`.
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    command = [python, os.path.join(project_dir, "local_runner.py"), "run"]
    for path in inputs:
        command += ["--input", path]
    command += ["--pipeline-root", pipeline_root, "--serving-dir", serving_dir]
    if config:
        command += ["--config", config]
    if metadata_dir:
        command += ["--metadata-dir", metadata_dir]
    if tune:
        command.append("--tune")
    command += list(beam_args)
    default_args = {"retries": retries, "retry_delay": retry_delay}
    if on_failure is None and config:
        # The config's [alerts], for a task that died without the pipeline alerting (killed,
        # out of memory): the pipeline's own endings are alerted by the run itself.
        on_failure = [python, os.path.join(project_dir, "local_runner.py"), "alert",
                      "--config", config, "--pipeline-root", pipeline_root]
    if on_failure is not None:
        default_args["on_failure_callback"] = alert_callback(on_failure)
    dag = DAG(dag_id, schedule=schedule, start_date=start_date, catchup=catchup,
              max_active_runs=max_active_runs, default_args=default_args, tags=list(tags),
              doc_md=__doc__, **dag_kwargs)
    previous = None
    for stage in STAGES:
        if stage == TUNER and not tune:
            continue
        extra = {}
        if on_not_blessed is not None and stage == STAGES[-1]:
            extra["on_skipped_callback"] = alert_callback(on_not_blessed, "not blessed")
        task = PipelineStageOperator(task_id=stage, stage=stage, command=command,
                                     cwd=project_dir, date_argument=date_argument, dag=dag,
                                     **extra)
        if previous is not None:
            previous >> task
        previous = task
    return dag
