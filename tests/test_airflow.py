"""The Airflow DAG (pipeline/airflow_dag.py) run by Airflow 2.10 itself, `dag.test()` in its own
venv (.venv-airflow, `make airflow`): a DAG run is one pipeline run, a second one on the same
data reuses everything, and blocking anomalies fail the DAG run without a retry and alert."""
import json
import os
import subprocess
import sys

from conftest import IN_MEMORY, REPO
from needs import missing
from test_cli import TINY_TRAINER, trec_like, write_csv

from components.pusher import is_complete_version, versions
from pipeline import configs
from pipeline.metadata import MetadataStore

AIRFLOW_PYTHON = os.path.join(REPO, ".venv-airflow", "bin", "python")
STAGES = [s for s in configs.STAGES if s != configs.TUNER]


def _summary(root, run_id):
    with open(os.path.join(root, "runs", run_id, "summary.json")) as f:
        return json.load(f)


def test_dag_runs_are_pipeline_runs_and_anomalies_alert_without_retry(tmp_path):
    if not os.path.exists(AIRFLOW_PYTHON):
        missing(f"needs Apache Airflow in {AIRFLOW_PYTHON}: run `make airflow`")
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TRAINER)
    good = write_csv(tmp_path / "q.csv", trec_like())
    # The bad data lands in a partition per date: its DAG passes the logical date (--date).
    (tmp_path / "incoming" / "2026-12-01").mkdir(parents=True)
    write_csv(tmp_path / "incoming" / "2026-12-01" / "bad.csv",
              trec_like() + [("What is love ?", "EMOTION", "")])
    bad = str(tmp_path / "incoming" / "{date}" / "bad.csv")
    alerts = tmp_path / "alerts.jsonl"

    def dag(root, data):
        return {"inputs": [data], "pipeline_root": str(tmp_path / root),
                "serving_dir": str(tmp_path / root / "serving"), "config": str(config),
                "beam_args": IN_MEMORY, "start_date": "2026-11-01T00:00:00+00:00",
                "schedule": None, "retries": 2, "retry_delay_seconds": 1,
                "on_failure": f"cat >> {alerts} && echo >> {alerts}"}

    spec = {"project_dir": REPO, "python": sys.executable, "runs": [
        {"dag_id": "textcnn", "logical_date": "2026-12-01T00:00:00+00:00",
         "make_dag": dag("root", good)},
        {"dag_id": "textcnn", "logical_date": "2026-12-02T00:00:00+00:00",
         "make_dag": dag("root", good)},
        {"dag_id": "textcnn_bad", "logical_date": "2026-12-01T00:00:00+00:00",
         "make_dag": dict(dag("bad-root", bad), date_argument=True)}]}
    spec_path, result_path = tmp_path / "spec.json", tmp_path / "result.json"
    spec_path.write_text(json.dumps(spec))
    home = tmp_path / "airflow-home"
    home.mkdir()
    env = dict(os.environ, AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__CORE__DAGS_FOLDER=str(home / "dags"))
    proc = subprocess.run([AIRFLOW_PYTHON, os.path.join(REPO, "tests", "airflow_dag_runs.py"),
                           str(spec_path), str(result_path)], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    result = json.loads(result_path.read_text())
    log = (proc.stdout + proc.stderr)[-5000:]
    first, second, failing = result["runs"]
    # Airflow's venv imported the factory and nothing of the project that needs TensorFlow.
    assert result["project_modules"] == ["components", "pipeline", "pipeline.airflow_dag"]

    # With tune and date_argument: the Tuner's task, and the logical date passed on.
    options = result["options"]
    assert options["task_ids"] == list(configs.STAGES)
    assert options["trainer_argv"][:3] == [sys.executable, os.path.join(REPO, "local_runner.py"),
                                           "run"]
    assert "--tune" in options["trainer_argv"]
    assert options["trainer_argv"][-6:] == ["--run-id", "scheduled__2026-12-06T021500_0000",
                                            "--until", "Trainer", "--date", "2026-12-06"]

    # A DAG run: a task per stage, in order, each once; one pipeline run named after it.
    assert first["dag_run_id"] == "manual__2026-12-01T00:00:00+00:00"
    assert first["state"] == "success", log
    assert first["tasks"] == [{"task_id": s, "state": "success", "try_number": 1}
                              for s in STAGES]
    run_id = "manual__2026-12-01T000000_0000"
    root = str(tmp_path / "root")
    store = MetadataStore(root)
    assert [(e.stage, e.state) for e in store.run_executions(run_id)] == [
        (s, "COMPLETE") for s in STAGES]
    props = store.run_properties(run_id)
    assert props["status"] == "succeeded" and props["exit_code"] == 0
    summary = _summary(root, run_id)
    assert summary["status"] == "succeeded"
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [(s, "ok") for s in STAGES]
    pushed = summary["stages"][-1]["details"]["path"]
    assert is_complete_version(pushed)
    model_base = os.path.dirname(pushed)

    # The next DAG run on the same data: a pipeline run of its own that reuses every stage.
    assert second["state"] == "success", log
    assert [t["state"] for t in second["tasks"]] == ["success"] * len(STAGES)
    second_id = "manual__2026-12-02T000000_0000"
    assert [r["run_id"] for r in store.runs()] == [run_id, second_id]
    assert [(e.stage, e.state) for e in store.run_executions(second_id)] == [
        (s, "CACHED") for s in STAGES]
    again = _summary(root, second_id)
    assert again["nothing_new"] and again["status"] == "succeeded"
    assert versions(model_base) == [int(os.path.basename(pushed))]

    # Labels outside the schema: exit 3 at the ExampleValidator, failed at once (no retry),
    # the later tasks never run, the alert command gets the failure as JSON.
    assert failing["state"] == "failed", log
    states = {t["task_id"]: (t["state"], t["try_number"]) for t in failing["tasks"]}
    assert states["SchemaGen"] == ("success", 1)
    assert states["ExampleValidator"] == ("failed", 1)
    assert {states[s][0] for s in STAGES[4:]} == {"upstream_failed"}
    [alert] = [json.loads(line) for line in alerts.read_text().splitlines() if line.strip()]
    assert alert["outcome"] == "failed" and alert["exit_code"] == 3
    assert alert["dag_id"] == "textcnn_bad" and alert["stage"] == "ExampleValidator"
    assert alert["dag_run_id"] == "manual__2026-12-01T00:00:00+00:00"
    assert alert["pipeline_run_id"] == run_id and alert["try_number"] == 1
    assert alert["log_url"].startswith("http")
    # The pipeline's own message is in the alert: which feature, which value.
    assert "blocking anomalies" in alert["error"] and "EMOTION" in alert["error"]
    bad_store = MetadataStore(str(tmp_path / "bad-root"))
    assert bad_store.run_properties(run_id)["status"] == "blocked by anomalies"
    assert bad_store.run_properties(run_id)["exit_code"] == 3
    # It read the logical date's partition (without --date it would stop at ExampleGen).
    assert json.loads(bad_store.run_properties(run_id)["window"])["dates_read"] == [
        "2026-12-01"]
