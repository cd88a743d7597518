"""A run made stage by stage (`run --run-id ID --until STAGE`, what the Airflow DAG's tasks run):
each invocation keeps what the earlier ones completed and runs the rest. Runs without Airflow."""
import json
import os
import signal
import subprocess
import sys

from conftest import IN_MEMORY, REPO, run_cli
from test_cli import TINY_TRAINER, trec_like, write_csv

from components.pusher import version_fingerprint
from pipeline import configs
from pipeline.metadata import MetadataStore

STAGES = [s for s in configs.STAGES if s != configs.TUNER]


def _args(data, config, root, serving, *extra):
    return ["run", "--input", data, "--pipeline-root", root, "--serving-dir", serving,
            "--config", config, *IN_MEMORY, *extra]


def _summary(root, run_id):
    with open(os.path.join(root, "runs", run_id, "summary.json")) as f:
        return json.load(f)


def _pushed(summary):
    return summary["stages"][-1]["details"]["path"]


def test_three_invocations_make_one_run_equal_to_a_one_shot_run(tmp_path):
    data = write_csv(tmp_path / "q.csv", trec_like())
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TRAINER)
    config = str(config)

    one_shot = str(tmp_path / "one-shot")
    proc = run_cli(*_args(data, config, one_shot, str(tmp_path / "serving-one")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [reference_id] = os.listdir(os.path.join(one_shot, "runs"))
    reference = version_fingerprint(_pushed(_summary(one_shot, reference_id)))
    assert reference

    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")
    run_id = "manual__2026-12-06T100000.5_0000"
    first = run_cli(*_args(data, config, root, serving, "--run-id", run_id, "--until",
                           "SchemaGen"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"run {run_id}: partial (up to SchemaGen)" in first.stdout
    summary = _summary(root, run_id)
    assert summary["status"] == "partial (up to SchemaGen)" and summary["exit_code"] == 0
    store = MetadataStore(root)
    assert store.run_properties(run_id)["status"] == "partial (up to SchemaGen)"

    second = run_cli(*_args(data, config, root, serving, "--run-id", run_id, "--until",
                            "Transform"))
    assert second.returncode == 0, second.stderr[-3000:]
    # The kept stages are not looked up again (no reuse line), the others execute.
    for stage in STAGES[:3]:
        assert f"{stage}: completed earlier in this run (kept)" in second.stderr
        assert f"{stage}: started" not in second.stderr
    assert "ExampleValidator: started" in second.stderr and "Transform: ok" in second.stderr
    assert "ended without finishing" not in second.stderr  # a partial run is not a dead one
    assert _summary(root, run_id)["status"] == "partial (up to Transform)"

    third = run_cli(*_args(data, config, root, serving, "--run-id", run_id))
    assert third.returncode == 0, third.stderr[-3000:]
    for stage in STAGES[:5]:
        assert f"{stage}: completed earlier in this run (kept)" in third.stderr
    summary = _summary(root, run_id)
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert [s["name"] for s in summary["stages"]] == STAGES
    assert all(s["status"] == "ok" for s in summary["stages"])
    assert "earlier_attempts" not in summary
    # The summary printed by the last part lists every stage of the run.
    assert all(f"  {stage} " in third.stdout for stage in STAGES)

    # One run in the store, one COMPLETE execution per stage, the same model as one shot.
    store = MetadataStore(root)
    assert [r["run_id"] for r in store.runs()] == [run_id]
    executions = store.run_executions(run_id)
    assert [(e.stage, e.state) for e in executions] == [(s, "COMPLETE") for s in STAGES]
    props = store.run_properties(run_id)
    assert props["status"] == "succeeded" and props["exit_code"] == 0
    assert version_fingerprint(_pushed(summary)) == reference
    # The release note names the input file the ExampleGen of the first part read.
    with open(os.path.join(_pushed(summary), "RELEASE_NOTE.md")) as f:
        assert data in f.read()
    runs = run_cli("runs", root)
    assert runs.returncode == 0 and len(runs.stdout.splitlines()) == 2, runs.stdout
    assert f"{run_id} " in runs.stdout and "succeeded" in runs.stdout
    lineage = run_cli("lineage", _pushed(summary))
    assert f"pushed by run {run_id}" in lineage.stdout, lineage.stdout + lineage.stderr

    # The last part again (an Airflow task cleared and run again): everything is kept.
    again = run_cli(*_args(data, config, root, serving, "--run-id", run_id))
    assert again.returncode == 0, again.stderr[-3000:]
    assert [(e.stage, e.state) for e in MetadataStore(root).run_executions(run_id)] == [
        (s, "COMPLETE") for s in STAGES]
    assert [s["name"] for s in _summary(root, run_id)["stages"]] == STAGES


def test_killed_and_failed_parts_are_continued_and_bad_ids_or_configs_refused(tmp_path):
    data = write_csv(tmp_path / "q.csv", trec_like())
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TRAINER)
    config = str(config)
    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")
    run_id = "nightly-1"

    bad = run_cli(*_args(data, config, root, serving, "--run-id", "../escape"))
    assert bad.returncode == 2 and "not a safe directory name" in bad.stderr, bad.stderr

    # A part killed in the Transform (as Airflow kills a task): it wrote no summary.json.
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "local_runner.py"),
                             *_args(data, config, root, serving, "--run-id", run_id,
                                    "--until", "Transform")],
                            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("Transform: started"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=120)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    assert not os.path.exists(os.path.join(root, "runs", run_id, "summary.json"))

    # The same run with another config is refused: its kept stages were made with the first.
    other = tmp_path / "other.toml"
    other.write_text(TINY_TRAINER.replace("epochs = 2", "epochs = 3"))
    refused = run_cli(*_args(data, str(other), root, serving, "--run-id", run_id))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "started with another configuration" in refused.stderr
    assert "trainer" in refused.stderr
    # (It held the root first, and marked the killed part's run as died.)
    assert f"run {run_id} ended without finishing" in refused.stderr

    # Its retry continues it: the four completed stages kept, the Transform runs again.
    retry = run_cli(*_args(data, config, root, serving, "--run-id", run_id, "--until",
                           "Transform"))
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert "ExampleValidator: completed earlier in this run (kept)" in retry.stderr
    assert "Transform: ok" in retry.stderr
    store = MetadataStore(root)
    assert [(e.stage, e.state) for e in store.run_executions(run_id)] == [
        (s, "COMPLETE") for s in STAGES[:4]] + [("Transform", "CANCELED"),
                                                ("Transform", "COMPLETE")]
    summary = _summary(root, run_id)
    assert [s["name"] for s in summary["stages"]] == STAGES[:5]
    assert summary["status"] == "partial (up to Transform)"
    # The record the killed part never wrote is rebuilt from the store.
    assert summary["stages"][0]["details"]["written"] == 60
    assert summary["stages"][0]["output"] == os.path.join(root, "ExampleGen", run_id)

    # The last part fails in the Pusher (a file where the model's directory goes): the run is
    # failed; its retry runs the Pusher again, keeping the rest, and the failed attempt stays
    # in the record.
    os.makedirs(serving)
    blocker = os.path.join(serving, "textcnn")
    open(blocker, "w").close()
    # A Trainer output published by a try killed before the store recorded it complete (as
    # while its model was fingerprinted): no one's artifact, it must not block the next try.
    leftover = os.path.join(root, "Trainer", run_id)
    os.makedirs(leftover)
    open(os.path.join(leftover, "_PUBLISHED"), "w").close()
    failed = run_cli(*_args(data, config, root, serving, "--run-id", run_id))
    assert failed.returncode == 1, failed.stderr[-3000:]
    assert "Trainer: ok" in failed.stderr and "Evaluator: ok" in failed.stderr, \
        failed.stderr[-3000:]
    assert _summary(root, run_id)["status"] == "failed"
    assert MetadataStore(root).run_properties(run_id)["status"] == "failed"
    os.remove(blocker)
    retried = run_cli(*_args(data, config, root, serving, "--run-id", run_id))
    assert retried.returncode == 0, retried.stderr[-3000:]
    assert "Trainer: completed earlier in this run (kept)" in retried.stderr
    summary = _summary(root, run_id)
    assert summary["status"] == "succeeded"
    assert [(s["name"], s["status"]) for s in summary["stages"]] == [(s, "ok") for s in STAGES]
    assert [(s["name"], s["status"]) for s in summary["earlier_attempts"]] == [
        ("Pusher", "failed")]
    store = MetadataStore(root)
    assert [(e.stage, e.state) for e in store.run_executions(run_id)][5:] == [
        ("Transform", "COMPLETE"), ("Trainer", "COMPLETE"), ("Evaluator", "COMPLETE"),
        ("Pusher", "FAILED"), ("Pusher", "COMPLETE")]
    assert [r["run_id"] for r in store.runs()] == [run_id]
