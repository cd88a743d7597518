"""Alerts when a run ends (`[alerts]`, pipeline/alerts.py): real runs of local_runner.py POST
their ending to a local webhook and pipe it to a command; a failing alert changes nothing.

One trained root serves the pushed / nothing new / not blessed runs; the blocked runs stop at
the ExampleValidator (a label the schema lacks), a few seconds each.
"""
import datetime
import http.server
import json
import os
import socket
import threading
import time

import pytest

from conftest import IN_MEMORY, REPO, run_cli
from pipeline import alerts, configs
from test_cli import TINY_TRAINER, trec_like, write_csv

FIELDS = {"schema", "text", "pipeline", "run_id", "status", "exit_code", "outcome", "outcomes",
          "failing_stage", "message", "anomalies", "report_path", "summary_path",
          "pushed_version", "pushed_path", "pipeline_root", "host", "time"}


class Hook:
    """A webhook on 127.0.0.1: records each POST (headers, JSON body), answers `status`."""

    def __init__(self):
        self.posts, self.status = [], 200
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.posts.append((dict(self.headers), json.loads(body)))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/secret"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def take(self):
        """The bodies POSTed since the last call."""
        posts, self.posts = self.posts, []
        for headers, _ in posts:
            assert headers["Content-Type"] == "application/json"
        return [body for _, body in posts]


@pytest.fixture(scope="module")
def hook():
    h = Hook()
    yield h
    h.server.shutdown()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/hook"


def write_config(path, alerts_table, trainer=TINY_TRAINER):
    path.write_text(trainer + "\n[alerts]\n" + alerts_table + "\n")
    return str(path)


def run(data, root, serving, config, *extra):
    return run_cli("run", "--input", data, "--pipeline-root", root, "--serving-dir", serving,
                   "--config", config, *IN_MEMORY, *extra)


def summary(path):
    with open(path) as f:
        return json.load(f)


def bad_data(tmp):
    """Data with a label the schema lacks: the ExampleValidator blocks it (exit 3)."""
    return write_csv(tmp / "q.csv", trec_like() + [("What is love ?", "EMOTION", "")])


def check_common(body, root):
    assert set(body) == FIELDS and body["schema"] == alerts.SCHEMA
    assert body["pipeline"] == "textcnn" and body["pipeline_root"] == root
    assert body["host"] == socket.gethostname()
    sent = datetime.datetime.fromisoformat(body["time"])
    assert sent.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.timezone.utc) - sent).total_seconds()) < 600


def test_a_blocked_run_posts_and_pipes_its_ending(tmp_path, hook):
    root = str(tmp_path / "root")
    out = tmp_path / "stdin.json"
    env = tmp_path / "env.json"
    config = write_config(tmp_path / "c.toml", (
        f'webhook = "{hook.url}"\n'
        f'command = "cat > {out}; printf %s \\"$TEXTCNN_ALERT\\" > {env}"\n'))
    proc = run(bad_data(tmp_path), root, str(tmp_path / "serving"), config)
    assert proc.returncode == 3, proc.stderr[-3000:]
    [body] = hook.take()
    check_common(body, root)
    assert (body["outcome"], body["outcomes"], body["exit_code"], body["status"],
            body["failing_stage"]) == ("anomalies", ["anomalies"], 3, "blocked by anomalies",
                                       "ExampleValidator")
    assert "EMOTION" in body["message"] and "--allow-anomalies" in body["message"]
    assert len(body["anomalies"]) == 1 and "EMOTION" in body["anomalies"][0]
    assert body["text"].startswith(f"textcnn run {body['run_id']} on ")
    recorded = summary(body["summary_path"])
    assert recorded["run_id"] == body["run_id"] and recorded["exit_code"] == 3
    assert os.path.exists(body["report_path"])
    assert body["pushed_version"] is None and body["pushed_path"] is None
    # The command got the same body on stdin and in $TEXTCNN_ALERT.
    assert json.loads(out.read_text()) == body and json.loads(env.read_text()) == body
    assert "alert sent (anomalies) to the command" in proc.stderr
    assert "alert sent (anomalies) to the webhook http://127.0.0.1:" in proc.stderr
    # The record keeps the webhook's host, not its secret path.
    assert "secret" not in json.dumps(recorded["config"])
    assert recorded["config"]["alerts"]["webhook"].endswith("/...")


def test_an_outcome_not_in_on_sends_nothing(tmp_path, hook):
    out = tmp_path / "stdin.json"
    config = write_config(tmp_path / "c.toml", (
        f'webhook = "{hook.url}"\ncommand = "cat > {out}"\non = ["not_blessed", "pushed"]\n'))
    proc = run(bad_data(tmp_path), str(tmp_path / "root"), str(tmp_path / "serving"), config)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert hook.take() == [] and not out.exists()
    assert "alert sent" not in proc.stderr and "alert to the" not in proc.stderr


def test_a_run_refused_by_the_roots_lock_is_a_failure_alert(tmp_path, hook):
    from pipeline.lock import RootLock

    root = str(tmp_path / "root")
    config = write_config(tmp_path / "c.toml", f'webhook = "{hook.url}"\n')
    with RootLock(root, "the-other-run"):
        proc = run(bad_data(tmp_path), root, str(tmp_path / "serving"), config)
    assert proc.returncode == 2, proc.stderr[-3000:]
    [body] = hook.take()
    check_common(body, root)
    assert (body["outcome"], body["exit_code"], body["status"], body["summary_path"],
            body["report_path"]) == ("failure", 2, "not started", None, None)
    assert "the-other-run" in body["message"] and body["run_id"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hook):
    """A root whose first run pushed with an anomaly accepted (--allow-anomalies), its webhook
    answering 500 and its command exiting 1; then the same run again (nothing new)."""
    tmp = tmp_path_factory.mktemp("alerts")
    data, root, serving = bad_data(tmp), str(tmp / "root"), str(tmp / "serving")
    out = tmp / "stdin.json"
    failing = write_config(tmp / "failing.toml", (
        f'webhook = "{hook.url}"\non = ["pushed", "not_blessed"]\n'
        f'command = "cat > {out}; echo no mail server >&2; exit 1"\n'))
    hook.take()
    hook.status = 500
    try:
        first = run(data, root, serving, failing, "--allow-anomalies")
    finally:
        hook.status = 200
    first_posts = hook.take()
    table = f'webhook = "{hook.url}"\non = ["pushed", "not_blessed"]\n'
    again = run(data, root, serving, write_config(tmp / "c.toml", table), "--allow-anomalies")
    assert again.returncode == 0 and "nothing new to do" in again.stderr, again.stderr[-3000:]
    return tmp, data, root, serving, table, (first, first_posts, json.loads(out.read_text())), \
        hook.take()


def test_failing_alerts_leave_the_exit_code_and_are_warnings(trained):
    proc, posts, piped = trained[5]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(posts) == 1 and piped == posts[0]  # both tried, both refused
    assert ("warning: the anomalies alert to the command was not sent (command): exit 1: no "
            "mail server") in proc.stderr
    assert ("warning: the anomalies alert to the webhook was not sent (http://127.0.0.1:"
            in proc.stderr and "/...): HTTP 500" in proc.stderr)
    assert "secret" not in proc.stderr and "Traceback" not in proc.stderr
    assert summary(posts[0]["summary_path"])["exit_code"] == 0


def test_a_push_with_an_accepted_anomaly_alerts_both_and_a_rerun_nothing(trained):
    _, _, root, serving, _, (_, first, _), again = trained
    [body] = first
    check_common(body, root)
    assert (body["outcome"], body["outcomes"], body["exit_code"], body["status"],
            body["failing_stage"]) == ("anomalies", ["anomalies", "pushed"], 0, "succeeded", None)
    pusher = summary(body["summary_path"])["stages"][-1]
    assert pusher["name"] == "Pusher" and pusher["status"] == "ok"
    assert body["pushed_version"] == pusher["details"]["version"]
    assert body["pushed_path"] == pusher["details"]["path"]
    assert os.path.dirname(body["pushed_path"]) == os.path.join(serving, "textcnn")
    assert "EMOTION" in body["anomalies"][0] and "accepted (--allow-anomalies)" in body["message"]
    assert again == []  # every stage reused: nothing to tell


def test_a_model_not_blessed_alerts_not_blessed(trained, hook):
    tmp, data, root, serving, table, _, _ = trained
    config = write_config(tmp / "strict.toml", table, TINY_TRAINER.replace(
        "min_accuracy = 0.0", "min_accuracy = 1.0"))
    proc = run(data, root, serving, config, "--allow-anomalies")
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "Trainer: reused from run" in proc.stderr  # only the Evaluator and Pusher executed
    [body] = hook.take()
    check_common(body, root)
    # The validation was reused: its anomaly was told by the run that found it.
    assert (body["outcome"], body["outcomes"], body["exit_code"], body["status"],
            body["failing_stage"], body["pushed_version"], body["anomalies"]) == (
        "not_blessed", ["not_blessed"], 4, "not blessed", None, None, [])
    assert "BLESSED" in body["message"] or "blessed" in body["message"]


def test_an_interrupted_run_is_recorded_then_alerted(tmp_path, hook, monkeypatch):
    """Ctrl-C in the middle of a stage: api.run records the run, alerts, and raises on."""
    from pipeline import api
    from pipeline import pipeline as pipeline_module

    def interrupted(config, beam_args, recorder, *args, **kwargs):
        def stage():
            raise KeyboardInterrupt

        recorder.stage("ExampleGen", "somewhere", stage)

    monkeypatch.setattr(pipeline_module, "run_pipeline", interrupted)
    root = str(tmp_path / "root")
    config = configs.load_config(None, {
        "inputs": (str(tmp_path / "q.csv"),), "pipeline_root": root,
        "alerts": {"webhook": hook.url}})
    with pytest.raises(KeyboardInterrupt):
        api.run(config, IN_MEMORY)
    [body] = hook.take()
    check_common(body, root)
    assert (body["outcome"], body["exit_code"], body["status"], body["failing_stage"],
            body["message"]) == ("failure", 1, "failed", "ExampleGen", "KeyboardInterrupt")
    assert summary(body["summary_path"])["status"] == "failed"


@pytest.mark.parametrize("exit_code, anomalies, pushed, expected", [
    (0, False, True, ["pushed"]),
    (0, False, False, []),  # nothing new, or stopped by --until
    (0, True, True, ["anomalies", "pushed"]),
    (0, True, False, ["anomalies"]),
    (1, False, False, ["failure"]),
    (1, True, False, ["failure", "anomalies"]),
    (2, False, False, ["failure"]),
    (3, True, False, ["anomalies"]),
    (4, False, False, ["not_blessed"]),
    (4, True, False, ["not_blessed", "anomalies"]),
])
def test_outcomes_follow_the_exit_code(exit_code, anomalies, pushed, expected):
    assert alerts.outcomes_of(exit_code, anomalies, pushed) == expected


def test_notify_tries_every_target_and_never_raises(tmp_path, hook):
    config = configs.PipelineConfig(pipeline_root=str(tmp_path))
    payload = alerts.failure_payload(config, "the task was killed", "r1", exit_code=1,
                                     status="failed")
    # A refused connection, then a command that outlives its timeout (killed with what it
    # started), and the webhook is still tried after a failing command.
    refused = alerts.AlertSettings(webhook=closed_port_url(), timeout_seconds=2)
    [problem] = alerts.notify(refused, payload)
    assert "webhook was not sent (http://127.0.0.1:" in problem and "refused" in problem
    start = time.monotonic()
    slow = alerts.AlertSettings(command="sleep 30 | cat", webhook=hook.url, timeout_seconds=0.5)
    [problem] = alerts.notify(slow, payload)
    assert time.monotonic() - start < 10
    assert problem.startswith("the failure alert to the command was not sent (command): "
                              "timed out after 0.5s")
    [body] = hook.take()
    assert body == json.loads(json.dumps(payload)) and set(body) == FIELDS
    # The scheduler's way in sends the same body; an outcome outside `on` sends nothing.
    from pipeline import api

    assert api.send_alert(configs.PipelineConfig(alerts=alerts.AlertSettings(
        webhook=hook.url)), payload) == []
    assert hook.take()[0]["message"] == "the task was killed"
    assert alerts.notify(alerts.AlertSettings(webhook=hook.url, on=("pushed",)), payload) == []
    assert alerts.notify(alerts.AlertSettings(), payload) == [] and hook.take() == []


def test_the_alerts_table(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[alerts]\nwebhook = "https://hooks.example.com/T/B/x?token=1"\n'
                    'command = "mail -s textcnn oncall@example.com"\non = "pushed"\n'
                    "timeout_seconds = 3\n")
    config = configs.load_config(str(path), {})
    assert config.alerts == alerts.AlertSettings(
        command="mail -s textcnn oncall@example.com",
        webhook="https://hooks.example.com/T/B/x?token=1", on=("pushed",), timeout_seconds=3.0)
    assert configs.to_dict(config)["alerts"]["webhook"] == "https://hooks.example.com/..."
    default = configs.load_config(None, {}).alerts
    assert not default.configured and default.on == ("failure", "anomalies")
    assert default.timeout_seconds == 10


def test_a_scheduler_task_that_died_is_alerted_once_by_the_alert_command(tmp_path, hook):
    """The Airflow DAG's default failure callback: `alert` reads the task's JSON on stdin and
    sends the config's failure alert, unless the pipeline ended with its own exit code (then
    the run alerted itself)."""
    import subprocess
    import sys

    config = write_config(tmp_path / "c.toml", f'webhook = "{hook.url}"\n')
    task = {"dag_id": "textcnn_nightly", "task_id": "Trainer", "stage": "Trainer",
            "try_number": 3, "max_tries": 2, "error": "Command exited -9",
            "log_url": "http://airflow/log", "pipeline_run_id": "scheduled__2026-12-01"}

    def alert(**changes):
        return subprocess.run(
            [sys.executable, os.path.join(REPO, "local_runner.py"), "alert", "--config", config,
             "--pipeline-root", str(tmp_path / "root")], input=json.dumps(dict(task, **changes)),
            capture_output=True, text=True, timeout=120, cwd=REPO)

    for told_by_the_run in (0, 1, 3, 4):
        proc = alert(exit_code=told_by_the_run)
        assert proc.returncode == 0, proc.stderr
        assert hook.take() == []
    proc = alert(exit_code=-9)
    assert proc.returncode == 0, proc.stderr
    [body] = hook.take()
    assert body["outcome"] == "failure" and body["exit_code"] == -9
    assert body["failing_stage"] == "Trainer" and body["run_id"] == "scheduled__2026-12-01"
    assert body["status"] == "failed" and "textcnn_nightly: task Trainer (try 3 of 2)" in \
        body["message"] and "http://airflow/log" in body["message"]
    assert body["pipeline_root"] == str(tmp_path / "root")
    proc = alert(exit_code=None, error=None)  # died before the pipeline started
    assert proc.returncode == 0 and hook.take()[0]["exit_code"] == 1


def test_a_part_of_a_run_made_stage_by_stage_does_not_alert_again_for_earlier_parts():
    """Stages kept from an earlier invocation of the run (an Airflow task before this one)
    alerted then: a later part that only reads them sends nothing for them."""
    from pipeline import api

    validator = {"name": "ExampleValidator", "status": "ok", "output": "", "seconds": 1.0,
                 "details": {"anomalies": {"train": ["a warning"]}, "allowed": True}}
    config = configs.load_config(None, {"pipeline_root": "/tmp/r",
                                        "alerts": {"command": "cat"}})

    def result(entry):
        return api.RunResult(run_id="r", status="partial (up to Transform)", exit_code=0,
                             stages=(api.StageRecord.from_summary(entry),), summary_path="s",
                             report_path=None, summary={"stages": [entry]})

    assert alerts.payload_for(result(validator), config)["outcomes"] == ["anomalies"]
    assert alerts.payload_for(result(dict(validator, kept=True)), config)["outcomes"] == []
