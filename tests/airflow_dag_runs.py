"""Runs DAG runs of `pipeline.airflow_dag.make_dag` with `dag.test()`, in Airflow's own venv
(.venv-airflow, which has no TensorFlow): tests/test_airflow.py starts it.

    .venv-airflow/bin/python tests/airflow_dag_runs.py SPEC.json RESULT.json

SPEC: {"project_dir", "python", "runs": [{"dag_id", "logical_date", "make_dag": {kwargs}}]}
with `start_date` an ISO date; `on_failure` a shell command. RESULT: per DAG run its id, state,
and each task's state and try number, in order; and the modules of the project imported.
AIRFLOW_HOME must name an empty directory: the SQLite database is made there first.
"""
import datetime
import json
import subprocess
import sys


def main(spec_path: str, result_path: str) -> None:
    with open(spec_path) as f:
        spec = json.load(f)
    # As a team's DAG file does: the project checkout on the path, then the factory.
    sys.path.insert(0, spec["project_dir"])
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True,
                   stdout=subprocess.DEVNULL)
    from pipeline.airflow_dag import make_dag

    results = []
    for run in spec["runs"]:
        kwargs = dict(run["make_dag"])
        kwargs["start_date"] = datetime.datetime.fromisoformat(kwargs["start_date"])
        kwargs["retry_delay"] = datetime.timedelta(seconds=kwargs.pop("retry_delay_seconds", 1))
        dag = make_dag(run["dag_id"], project_dir=spec["project_dir"],
                       python=spec["python"], **kwargs)
        dag_run = dag.test(execution_date=datetime.datetime.fromisoformat(run["logical_date"]))
        tasks = {ti.task_id: ti for ti in dag_run.get_task_instances()}
        results.append({
            "dag_run_id": dag_run.run_id, "state": str(dag_run.state),
            "tasks": [{"task_id": t, "state": str(tasks[t].state),
                       "try_number": tasks[t].try_number} for t in dag.task_ids]})
    # The command of a task with options the runs above leave off (the Tuner's task).
    kwargs = dict(spec["runs"][0]["make_dag"], tune=True, date_argument=True)
    kwargs["start_date"] = datetime.datetime.fromisoformat(kwargs["start_date"])
    kwargs.pop("retry_delay_seconds", None)
    dag = make_dag("textcnn_options", project_dir=spec["project_dir"], python=spec["python"],
                   **kwargs)
    options = {"task_ids": dag.task_ids, "trainer_argv": dag.get_task("Trainer").argv(
        {"run_id": "scheduled__2026-12-06T02:15:00+00:00", "ds": "2026-12-06"})}
    project = sorted(m for m in sys.modules if m.split(".")[0] in ("pipeline", "components"))
    with open(result_path, "w") as f:
        json.dump({"runs": results, "options": options, "project_modules": project}, f,
                  indent=2)


if __name__ == "__main__":
    main(*sys.argv[1:])
