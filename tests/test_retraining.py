"""Scheduled retraining: content-keyed caching, incremental ingest, lineage, resume, the store.

The runs are real subprocess runs of local_runner.py (in-memory Beam, a tiny model). One root is
shared by the first tests, in any order: its first run is the uninterrupted reference.
"""
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from conftest import IN_MEMORY, REPO, run_cli
from pipeline import metadata as meta
from test_cli import TINY_TRAINER, trec_like, write_csv

STAGES = ["ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Trainer",
          "Evaluator", "Pusher"]


def summaries(root):
    """Run summaries, oldest first."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, "runs", "*", "summary.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def how(summary):
    """{stage: "executed" | "reused"} for one run."""
    return {s["name"]: "reused" if s["status"] == "reused" else "executed"
            for s in summary["stages"]}


def stage(summary, name):
    return next(s for s in summary["stages"] if s["name"] == name)


def split_files(examples_dir):
    """{relative path: bytes} of the split TFRecords of an Examples artifact."""
    out = {}
    for path in sorted(glob.glob(os.path.join(examples_dir, "Split-*", "*"))):
        with open(path, "rb") as f:
            out[os.path.relpath(path, examples_dir)] = f.read()
    return out


def vocabulary(transform_dir):
    """The Transform's vocabulary files (the tokens', and the wide tower's n-grams when it
    computed wide features), by name."""
    out = {}
    for path in sorted(glob.glob(os.path.join(transform_dir, "transform_fn", "assets", "*"))):
        with open(path, "rb") as f:
            out[os.path.basename(path)] = f.read()
    assert "text_vocab" in out
    return out


class Setup:
    def __init__(self, tmp):
        self.tmp = tmp
        self.data = write_csv(tmp / "q.csv", trec_like(120))
        self.config = tmp / "tiny.toml"
        self.config.write_text(TINY_TRAINER)
        self.serving = str(tmp / "serving")

    def args(self, root, *extra, config=None, serving=None):
        return ["run", "--input", self.data, "--pipeline-root", root, "--serving-dir",
                serving or self.serving, "--config", str(config or self.config), *IN_MEMORY,
                *extra]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A root after one complete run (the reference); yields (setup, root, first summary).

    The unchanged rerun and `runs` happen here too, before any test can add a run, so that no
    test depends on the order the others ran in; the tests that add runs only add, and never
    read what another test added.
    """
    setup = Setup(tmp_path_factory.mktemp("retrain"))
    root = str(setup.tmp / "root")
    proc = run_cli(*setup.args(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    [summary] = summaries(root)
    assert set(how(summary).values()) == {"executed"}
    rerun = run_cli(*setup.args(root))
    setup.rerun = (rerun, summaries(root), run_cli("runs", root),
                   sorted(os.listdir(os.path.join(setup.serving, "textcnn"))))
    yield setup, root, summary


def test_a_rerun_on_unchanged_data_executes_nothing(first_run):
    setup, root, first = first_run
    proc, runs_then, runs, versions = setup.rerun
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(runs_then) == 2 and runs_then[0]["run_id"] == first["run_id"]
    second = runs_then[-1]
    assert how(second) == {s: "reused" for s in STAGES}
    assert {stage(second, s)["reused_from"] for s in STAGES} == {first["run_id"]}
    assert f"Pusher: reused from run {first['run_id']}" in proc.stderr
    assert "nothing new to do" in proc.stderr and second["nothing_new"]
    assert len(versions) == 1  # nothing pushed again
    for name in STAGES:  # and no new artifact anywhere (the runs of other tests come later)
        assert first["run_id"] in os.listdir(os.path.join(root, name))
        assert second["run_id"] not in os.listdir(os.path.join(root, name))

    assert runs.returncode == 0, runs.stderr
    lines = runs.stdout.strip().splitlines()
    assert len(lines) == 3
    assert first["run_id"] in lines[1] and " 8      0 " in lines[1]
    assert second["run_id"] in lines[2] and " 0      8 " in lines[2]
    assert f"(pushed by {first['run_id']})" in lines[2]


def test_lineage_names_the_run_inputs_and_metrics_of_a_version(first_run):
    setup, root, first = first_run
    pushed = stage(first, "Pusher")["details"]["path"]
    proc = run_cli("lineage", pushed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    with open(setup.data, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert f"was pushed by run {first['run_id']}" in out
    assert f"{setup.data}  sha256 {sha}" in out
    counts = stage(first, "ExampleGen")["details"]
    assert f"rows: read 120 = written {counts['written']}" in out
    vocab = stage(first, "Transform")["details"]["vocabulary_size"]
    assert f"vocabulary {vocab} tokens" in out
    accuracy = stage(first, "Evaluator")["details"]["metrics"]["Overall"][
        "sparse_categorical_accuracy"]
    assert f"accuracy {accuracy:.4f}" in out
    assert "baseline it beat: none" in out
    assert '"embedding_dim": 8' in out  # the config

    unknown = run_cli("lineage", os.path.join(setup.serving, "textcnn", "123"))
    assert unknown.returncode == 2 and "not a pushed version" in unknown.stderr


def test_a_trainer_change_reuses_the_data_stages_and_the_baseline_comes_from_the_store(
        first_run):
    setup, root, first = first_run
    first_version = stage(first, "Pusher")["details"]["path"]
    # A newer version this root never pushed: the serving directory's newest, not the store's.
    stray = os.path.join(setup.serving, "textcnn", str(int(os.path.basename(first_version)) + 99))
    shutil.copytree(first_version, stray)

    changed = setup.tmp / "changed.toml"
    changed.write_text(TINY_TRAINER.replace("epochs = 2", "epochs = 1")
                       + "max_accuracy_drop = 1.0\n")
    proc = run_cli(*setup.args(root, config=changed))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = summaries(root)[-1]
    assert how(run) == dict({s: "reused" for s in STAGES[:5]},
                            Trainer="executed", Evaluator="executed", Pusher="executed")
    assert stage(run, "Evaluator")["details"]["baseline"] == first_version
    store = meta.MetadataStore(root)
    [evaluation] = [e for e in store.run_executions(run["run_id"]) if e.stage == "Evaluator"]
    [baseline] = evaluation.inputs["baseline_model"]
    assert baseline.type_name == meta.PUSHED_MODEL and baseline.uri == first_version
    shutil.rmtree(stray)

    # Only the Evaluator's thresholds change: everything before it is reused.
    thresholds = setup.tmp / "thresholds.toml"
    thresholds.write_text(TINY_TRAINER.replace("epochs = 2", "epochs = 1")
                          + "max_accuracy_drop = 0.5\n")
    proc = run_cli(*setup.args(root, config=thresholds))
    assert proc.returncode in (0, 4), proc.stderr[-3000:]
    run = summaries(root)[-1]
    assert how(run) == dict({s: "reused" for s in STAGES[:6]},
                            Evaluator="executed", Pusher="executed")


def test_resume_after_kill_9_in_transform_and_in_trainer(first_run, tmp_path):
    setup, reference_root, reference = first_run
    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")

    def run_until_killed(line):
        proc = subprocess.Popen([sys.executable, os.path.join(REPO, "local_runner.py"),
                                 *setup.args(root, serving=serving)], cwd=REPO,
                                stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True)
        seen = []
        for text in proc.stderr:
            seen.append(text)
            if text.startswith(line):
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=120)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)[-3000:]

    run_until_killed("Transform: started")
    killed = [os.path.basename(p) for p in glob.glob(os.path.join(root, "ExampleGen", "2*"))]
    assert not os.path.exists(os.path.join(root, "Transform", killed[0]))  # never half-written
    run_until_killed("Trainer: started")
    assert not glob.glob(os.path.join(root, "Trainer", "2*"))

    proc = run_cli(*setup.args(root, serving=serving))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Each run marks the one killed before it (the second killed run marked the first).
    assert proc.stderr.count("ended without finishing (killed?)") == 1
    run = summaries(root)[-1]
    assert how(run) == dict({s: "reused" for s in STAGES[:5]},
                            Trainer="executed", Evaluator="executed", Pusher="executed")
    assert not glob.glob(os.path.join(root, "*", ".tmp-*"))  # the killed stages' leftovers
    runs = run_cli("runs", root).stdout
    assert runs.count(" died ") == 2, runs

    # The same as the uninterrupted run: split assignment, vocabulary, trained weights.
    def artifacts(summary, name):
        return stage(summary, name)["output"]

    assert split_files(artifacts(run, "ExampleGen")) == split_files(
        artifacts(reference, "ExampleGen"))
    assert vocabulary(artifacts(run, "Transform")) == vocabulary(artifacts(reference, "Transform"))
    assert (stage(run, "Trainer")["details"]["metrics"]
            == stage(reference, "Trainer")["details"]["metrics"])
    import tensorflow as tf

    resumed = tf.saved_model.load(stage(run, "Pusher")["details"]["path"])
    texts = tf.constant(["How far is the moon ?", "Who wrote Hamlet ?"])
    out = resumed.signatures["serving_default"](text=texts)
    original = tf.saved_model.load(stage(reference, "Pusher")["details"]["path"])
    assert (out["probabilities"].numpy()
            == original.signatures["serving_default"](text=texts)["probabilities"].numpy()).all()


def test_a_failed_push_is_recorded_in_the_store_and_a_retry_pushes(tmp_path):
    setup = Setup(tmp_path)
    os.makedirs(setup.serving)
    blocker = os.path.join(setup.serving, "textcnn")
    open(blocker, "w").close()  # a file where the model's directory should be
    root = str(tmp_path / "root")
    proc = run_cli(*setup.args(root, "--until", "Pusher"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    run = summaries(root)[-1]
    store = meta.MetadataStore(root)
    [push] = [e for e in store.run_executions(run["run_id"]) if e.stage == "Pusher"]
    assert push.state == "FAILED" and "textcnn" in push.properties["error"]

    os.remove(blocker)
    proc = run_cli(*setup.args(root))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = summaries(root)[-1]
    assert how(run) == dict({s: "reused" for s in STAGES[:7]}, Pusher="executed")
    assert os.path.exists(os.path.join(stage(run, "Pusher")["details"]["path"],
                                       "saved_model.pb"))


def test_no_cache_executes_every_stage_and_gets_the_same_fingerprints(tmp_path):
    setup = Setup(tmp_path)
    root = str(tmp_path / "root")
    for extra in ((), ("--no-cache",)):
        proc = run_cli(*setup.args(root, "--until", "Transform", *extra))
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = summaries(root)
    assert set(how(second).values()) == {"executed"}
    assert "input files parsed 1, reused 0" in proc.stdout  # parsed again too
    assert split_files(stage(first, "ExampleGen")["output"]) == split_files(
        stage(second, "ExampleGen")["output"])  # deterministic bytes
    # Re-executed on the same inputs, every artifact has the same content fingerprint, so a
    # later stage keyed on them would be reused.
    store = meta.MetadataStore(root)
    outputs = [{name: [a.fingerprint for a in items]
                for e in store.run_executions(run["run_id"]) for name, items in e.outputs.items()}
               for run in (first, second)]
    assert outputs[0] == outputs[1] and set(outputs[0]) == {
        "examples", "statistics", "schema", "anomalies", "transform_graph"}


# ------------------------------------------------------------------------ incremental ingest


def write_day(folder, day, rows=12):
    path = folder / f"day{day:02d}.jsonl"
    with open(path, "w") as f:
        for i in range(rows):
            text, label, _ = trec_like(rows * 20)[day * rows + i]
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def test_adding_a_file_parses_only_that_file_and_equals_a_fresh_run(tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    for day in range(10):
        write_day(folder, day)
    root = str(tmp_path / "root")
    args = ["--until", "ExampleGen", *IN_MEMORY]
    proc = run_cli("run", "--input", str(folder), "--pipeline-root", root, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input files parsed 10, reused 0" in proc.stdout

    write_day(folder, 10)
    proc = run_cli("run", "--input", str(folder), "--pipeline-root", root, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input files parsed 1, reused 10" in proc.stdout
    grown = stage(summaries(root)[-1], "ExampleGen")
    assert grown["details"]["read"] == 132

    fresh_root = str(tmp_path / "fresh")
    proc = run_cli("run", "--input", str(folder), "--pipeline-root", fresh_root, *args)
    assert "input files parsed 11, reused 0" in proc.stdout
    fresh = stage(summaries(fresh_root)[-1], "ExampleGen")
    assert split_files(grown["output"]) == split_files(fresh["output"])
    with open(os.path.join(grown["output"], "counts.json")) as a, open(
            os.path.join(fresh["output"], "counts.json")) as b:
        assert a.read() == b.read()

    os.remove(folder / "day03.jsonl")  # a removed file drops out
    proc = run_cli("run", "--input", str(folder), "--pipeline-root", root, *args)
    assert "input files parsed 0, reused 10" in proc.stdout
    assert stage(summaries(root)[-1], "ExampleGen")["details"]["read"] == 120


# ------------------------------------------------------------------------------------- drift


def test_a_shifted_label_distribution_is_blocking_drift_until_accepted(tmp_path):
    balanced = write_csv(tmp_path / "a.csv", trec_like(120))
    shifted_rows = [r for r in trec_like(240) if r[1] in ("NUM", "HUM")] + trec_like(24)
    shifted = write_csv(tmp_path / "b.csv", shifted_rows)
    root = str(tmp_path / "root")

    def run(data, *extra):
        return run_cli("run", "--input", data, "--pipeline-root", root, "--until",
                       "ExampleValidator", *IN_MEMORY, *extra)

    assert run(balanced).returncode == 0
    proc = run(shifted)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "drift in 'label' on Split-train: L-infinity distance" in proc.stderr
    # Both distributions, class by class: about a sixth each before, mostly HUM and NUM now.
    assert re.search(r"\(previous: ABBR 0\.1\d, DESC 0\.\d\d, .*; now: ABBR 0\.0\d, .*HUM 0\.4",
                     proc.stderr), proc.stderr[-2000:]
    assert "drift_anomalies.pbtxt" in proc.stderr and "--allow-anomalies" in proc.stderr
    blocked = stage(summaries(root)[-1], "ExampleValidator")
    assert blocked["status"] == "failed" and blocked["details"]["drift"]["label"]["linf"] > 0.1

    # The reference is the last accepted data: blocked again, until accepted once.
    assert run(shifted).returncode == 3
    assert run(shifted, "--allow-anomalies").returncode == 0
    proc = run(shifted)  # accepted: the shifted data is now the reference
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(shifted)
    assert proc.returncode == 0 and "ExampleValidator: reused from run" in proc.stderr


def test_each_stage_is_keyed_by_the_code_it_runs(tmp_path):
    from pipeline import orchestrator

    relative = tmp_path / "fake.py"
    relative.write_text("from .fileio import join\nfrom . import features\n")
    assert orchestrator._imported_names(str(relative), "components.fake") == [
        "components.fileio", "components.fileio.join", "components", "components.features"]
    from pipeline.stages import STAGE_SPECS

    closures = {s.name: set(orchestrator.module_closure(s.modules)[0]) for s in STAGE_SPECS}
    assert not any("components.scorer" in c for c in closures.values())
    # The Trainer's workers run the launcher's entry point; no stage runs the rest of pipeline/.
    assert {m for c in closures.values() for m in c if m.startswith("pipeline.")} == {
        "pipeline.launcher"}
    assert "pipeline.launcher" in closures["Trainer"]
    for name in STAGES[:4]:
        assert "components.transform" not in closures[name], name
    for name in ["Transform", "Tuner", "Trainer", "Evaluator", "Pusher"]:
        assert "components.transform" in closures[name], name
    assert "components.fileio" in closures["ExampleGen"]  # followed through imports
    assert "scikit-learn" in orchestrator.module_closure(["components.tuner"])[1]
    assert "tensorflow-model-analysis" not in orchestrator.module_closure(
        ["components.transform"])[1]


def test_an_edit_reexecutes_only_the_stages_whose_code_changed(tmp_path):
    """In a copy of the tree: an edit to the scorer and the report reuses every stage; an edit
    to the Transform's module re-executes the Transform and what follows, not the data stages."""
    tree = tmp_path / "tree"
    for part in ("components", "pipeline", "schemas"):
        shutil.copytree(os.path.join(REPO, part), tree / part,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(REPO, "local_runner.py"), tree)
    setup = Setup(tmp_path)
    root = str(tmp_path / "root")

    def run_copy():
        proc = subprocess.run([sys.executable, str(tree / "local_runner.py"), *setup.args(root)],
                              cwd=str(tree), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return summaries(root)[-1]

    first = run_copy()
    assert set(how(first).values()) == {"executed"}
    for name in ("components/scorer.py", "pipeline/report.py"):
        with open(tree / name, "a") as f:
            f.write("\n# an edit that changes no stage\n")
    assert how(run_copy()) == {s: "reused" for s in STAGES}

    with open(tree / "components" / "transform.py", "a") as f:
        f.write("\n# an edit to the Transform's code\n")
    third = run_copy()
    assert how(third) == dict({s: "reused" for s in STAGES[:4]},
                              **{s: "executed" for s in STAGES[4:]})
    assert {stage(third, s)["reused_from"] for s in STAGES[:4]} == {first["run_id"]}
    assert third["code_version"] != first["code_version"]  # the copy's code was hashed


def test_an_unchanged_local_input_is_not_read_again(tmp_path):
    """Its recorded sha256 stands while its path and stat do; a touched, replaced or changed
    file is read again, and only that file of a folder."""
    from components.artifacts import file_sha256, local_stat
    from pipeline.orchestrator import input_properties

    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("what is x ?")
    b.write_text("who is y ?")
    paths = [str(a), str(b)]
    first = input_properties(paths)
    assert first == {"content_ids": [file_sha256(p) for p in paths],
                     "stat": [local_stat(p) for p in paths], "paths": paths}
    # As the store gives them back (lists as JSON), with content ids reading would not give:
    recorded = {"paths": json.dumps(paths), "stat": json.dumps(first["stat"]),
                "content_ids": json.dumps(["recorded a", "recorded b"])}
    assert input_properties(paths, recorded)["content_ids"] == ["recorded a", "recorded b"]
    os.utime(b, ns=(1, 1))  # the same bytes, another time: b is read again, a is not
    assert input_properties(paths, recorded)["content_ids"] == ["recorded a", file_sha256(str(b))]
    c = tmp_path / "c.txt"  # a same-size file renamed over a: another inode and ctime
    c.write_text("what is z ?")
    os.utime(c, ns=(a.stat().st_atime_ns, a.stat().st_mtime_ns))
    os.replace(c, a)
    assert input_properties(paths, recorded)["content_ids"][0] == file_sha256(str(a))
    assert input_properties(paths, {"paths": json.dumps(paths[::-1]),
                                     "stat": recorded["stat"],
                                     "content_ids": recorded["content_ids"]}
                            )["content_ids"] != ["recorded a", "recorded b"]  # matched by path
