"""End to end: real subprocess runs of local_runner.py, as a user runs it."""
import glob
import json
import os
import subprocess
import sys

from components import features
from conftest import IN_MEMORY, only_dir, read_split, run_cli

QUESTIONS = [("How far is the moon ?", "NUM"), ("Who wrote Hamlet ?", "HUM"),
             ("What is a prism ?", "DESC"), ("Where is Rome ?", "LOC"),
             ("What does NASA stand for ?", "ABBR"), ("What color is the sky ?", "ENTY")]


def write_csv(path, rows, header="text,label,split"):
    with open(path, "w", encoding="utf-8") as f:
        f.write(header + "\n")
        for row in rows:
            f.write(",".join(row) + "\n")
    return str(path)


def trec_like(n=60):
    return [(f"{text[:-2]} number {i} ?", label, "test" if i % 10 == 0 else "")
            for i in range(n) for text, label in [QUESTIONS[i % len(QUESTIONS)]]]


def summary_of(root):
    [path] = glob.glob(os.path.join(root, "runs", "*", "summary.json"))
    with open(path) as f:
        return json.load(f)


TINY_TRAINER = """
[transform]
max_len = 12

[trainer]
epochs = 2
batch_size = 16

[trainer.model]
embedding_dim = 8
num_filters = 4

[evaluator]
min_accuracy = 0.0  # two epochs of a tiny model: the floor is not what this test is about
"""


def test_clean_run_multiprocessing_end_to_end(tmp_path):
    data = write_csv(tmp_path / "q.csv", trec_like())
    root = str(tmp_path / "root")
    config = tmp_path / "tiny.toml"
    # ExampleGen through Beam too (small inputs are parsed in-process by default).
    config.write_text(TINY_TRAINER + "\n[example_gen]\nin_process_max_bytes = 0\n")
    serving = str(tmp_path / "serving")
    # Small data runs in memory by default: this test is about the worker processes.
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--serving-dir", serving,
                   "--config", str(config), "--direct_running_mode=multi_processing")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows read 60 = written 60" in proc.stdout
    # A person reads the console: no traceback or C++ log noise (Beam workers included), a line
    # per stage start and end, a line per epoch.
    console = proc.stdout + proc.stderr
    assert "Traceback" not in console and "Exception ignored" not in console
    assert "Unable to register" not in console and "WARNING" not in console
    assert "Transform: started" in proc.stderr and "Transform: ok in" in proc.stderr
    assert "epoch 2/2: loss" in proc.stderr and "eval accuracy" in proc.stderr
    summary = summary_of(root)
    assert summary["status"] == "succeeded" and summary["exit_code"] == 0
    assert "--direct_running_mode=multi_processing" in summary["beam_args"]
    assert f"--direct_num_workers={os.cpu_count() or 1}" in summary["beam_args"]
    assert [s["name"] for s in summary["stages"]] == [
        "ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Trainer",
        "Evaluator", "Pusher"]
    pushed = summary["stages"][-1]["details"]
    assert os.path.dirname(pushed["path"]) == os.path.join(serving, "textcnn")
    assert os.path.exists(os.path.join(pushed["path"], "saved_model.pb"))
    trainer = summary["stages"][-3]["details"]
    assert trainer["epochs_run"] == 2 and trainer["classes"] == [
        "DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]

    # The exported model answers raw strings through saved_model_cli, as the README shows.
    cli = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "run",
         "--dir", trainer["model"], "--tag_set", "serve", "--signature_def", "serving_default",
         "--input_exprs", 'text=["How far is the moon ?","Who wrote Hamlet ?"]'],
        capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "predicted_class" in cli.stdout and "probabilities" in cli.stdout
    eg_dir = only_dir(os.path.join(root, "ExampleGen"))
    assert len(read_split(eg_dir, features.TEST)) == 6
    assert len(read_split(eg_dir, features.TRAIN)) + len(read_split(eg_dir, features.EVAL)) == 54
    for split in ("train", "eval", "test"):
        assert os.path.getsize(os.path.join(
            only_dir(os.path.join(root, "StatisticsGen")), f"Split-{split}", "FeatureStats.pb"))
        with open(os.path.join(only_dir(os.path.join(root, "ExampleValidator")),
                               f"Split-{split}", "anomalies.pbtxt")) as f:
            assert "anomaly_info" not in f.read()
    # No temporary artifact directories are left behind.
    assert not glob.glob(os.path.join(root, "*", ".tmp-*"))


def test_label_outside_domain_stops_with_exit_3(tmp_path):
    rows = trec_like() + [("What is love ?", "EMOTION", "")]
    data = write_csv(tmp_path / "q.csv", rows)
    root = str(tmp_path / "root")
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--serving-dir",
                   str(tmp_path / "serving"), *IN_MEMORY)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "'label'" in proc.stderr and "EMOTION" in proc.stderr
    assert "--allow-anomalies" in proc.stderr and "--schema infer" in proc.stderr
    assert proc.stderr.count("EMOTION") == 1  # said once, in the error
    summary = summary_of(root)
    assert summary["exit_code"] == 3 and summary["status"] == "blocked by anomalies"
    # The anomalies the message points to are there to read.
    anomalies = glob.glob(os.path.join(root, "ExampleValidator", "*", "Split-*", "anomalies.pbtxt"))
    assert anomalies and any("EMOTION" in open(p).read() for p in anomalies)

    allowed = run_cli("run", "--input", data, "--pipeline-root", str(tmp_path / "root2"),
                      "--allow-anomalies", "--until", "ExampleValidator", *IN_MEMORY)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "(allowed)" in allowed.stdout


def test_a_schema_path_that_does_not_exist_fails_before_any_stage(tmp_path):
    data = write_csv(tmp_path / "q.csv", trec_like(30))
    root = str(tmp_path / "root")
    proc = run_cli("run", "--input", data, "--pipeline-root", root,
                   "--schema", str(tmp_path / "shcema.pbtxt"), *IN_MEMORY)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "shcema.pbtxt does not exist" in proc.stderr and "`infer`" in proc.stderr
    assert not os.path.exists(os.path.join(root, "ExampleGen"))


def test_schema_infer_runs_a_dataset_whose_classes_are_not_trecs(tmp_path):
    rows = [(f"{topic} story number {i} about {topic}", topic, "test" if i % 10 == 0 else "")
            for i in range(40) for topic in ("sport", "politics", "weather")]
    data = write_csv(tmp_path / "news.csv", rows)
    root = str(tmp_path / "root")
    default = run_cli("run", "--input", data, "--pipeline-root", root, "--until",
                      "ExampleValidator", *IN_MEMORY)
    assert default.returncode == 3  # TREC's schema: the message says how to go on
    assert "--schema infer" in default.stderr and "sport" in default.stderr

    root = str(tmp_path / "root2")
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--schema", "infer",
                   "--until", "ExampleValidator", *IN_MEMORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    schema_dir = only_dir(os.path.join(root, "SchemaGen"))
    # The one command that copies the inferred schema for curation.
    assert f"cp {schema_dir}/schema.pbtxt schemas/news.pbtxt" in proc.stderr
    from components.schema_gen import label_classes, load_schema

    parsed = load_schema(schema_dir)
    assert label_classes(parsed) == ["politics", "sport", "weather"]
    # Free text never gets a domain, however few distinct texts the training split had.
    [text] = [f for f in parsed.feature if f.name == "text"]
    assert text.WhichOneof("domain_info") is None
    assert 'not_in_environment: "SERVING"' in open(os.path.join(schema_dir,
                                                                "schema.pbtxt")).read()
    assert summary_of(root)["stages"][2]["details"]["origin"] == "inferred"


def test_rare_class_only_in_eval_and_test_is_a_warning_not_a_stop(tmp_path):
    rows = [(f"{topic} story number {i}", topic, "") for i in range(30)
            for topic in ("sport", "politics")]
    rows += [("a rare story about chess", "chess", "eval"),
             ("another rare story about chess", "chess", "test"),
             ("one more about knitting", "knitting", "")]
    data = write_csv(tmp_path / "rare.csv", rows)
    root = str(tmp_path / "root")
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--schema", "infer",
                   "--until", "Transform", *IN_MEMORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(root)
    classes = summary["stages"][2]["details"]["classes"]
    assert classes == ["chess", "knitting", "politics", "sport"]
    warnings = summary["warnings"]
    assert any("'chess' has 0 training" in w for w in warnings), warnings
    assert not any("'sport'" in w for w in warnings)
    assert "warning: class 'chess'" in proc.stderr
    counts = summary["stages"][1]["details"]["label_counts"]
    assert counts["eval"]["chess"] >= 1 and counts["test"]["chess"] == 1


def test_input_without_usable_rows_stops_at_example_gen(tmp_path):
    data = write_csv(tmp_path / "bad.csv", [("   ", "a", ""), ("", "b", "")])
    root = str(tmp_path / "root")
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--serving-dir",
                   str(tmp_path / "serving"), *IN_MEMORY)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no usable rows in" in proc.stderr and "bad.csv" in proc.stderr
    assert "quarantined 2 (2 empty_text)" in proc.stderr
    summary = summary_of(root)
    assert [s["name"] for s in summary["stages"]] == ["ExampleGen"]
    assert summary["exit_code"] == 2 and summary["stages"][0]["details"]["quarantined"] == 2
    assert "Traceback" not in proc.stderr

    only_test = write_csv(tmp_path / "test_only.csv", [("q one", "a", "test"),
                                                       ("q two", "b", "test")])
    proc = run_cli("run", "--input", only_test, "--pipeline-root", str(tmp_path / "r2"),
                   "--serving-dir", str(tmp_path / "serving"), *IN_MEMORY)
    assert proc.returncode == 2 and "no row went to Split-train" in proc.stderr


def test_until_stops_early_and_beam_flags_pass_through(tmp_path):
    data = write_csv(tmp_path / "q.csv", trec_like(12))
    root = str(tmp_path / "root")
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--until", "ExampleGen",
                   "--direct_num_workers=1", "--direct_running_mode=in_memory")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = summary_of(root)
    assert [s["name"] for s in summary["stages"]] == ["ExampleGen"]
    assert summary["beam_args"][-1] == "--direct_running_mode=in_memory"
    assert not os.path.exists(os.path.join(root, "StatisticsGen"))
    # Without flags, small inputs run on the DirectRunner in memory (in the driver).
    other = str(tmp_path / "other")
    proc = run_cli("run", "--input", data, "--pipeline-root", other, "--until", "ExampleGen")
    assert proc.returncode == 0, proc.stderr[-3000:]
    flags = summary_of(other)["beam_args"]
    assert "--direct_running_mode=in_memory" in flags and "--direct_num_workers=1" in flags


def test_usage_errors_exit_2_and_name_the_problem(tmp_path):
    missing = run_cli("run", "--input", str(tmp_path / "none.csv"), "--pipeline-root",
                      str(tmp_path / "r"))
    assert missing.returncode == 2 and "none.csv" in missing.stderr
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"example_gen": {"eval_ratoi": 0.2}}))
    bad_key = run_cli("run", "--input", "x.csv", "--pipeline-root", str(tmp_path / "r"),
                      "--config", str(config))
    assert bad_key.returncode == 2 and "example_gen.eval_ratoi" in bad_key.stderr
    config.write_text(json.dumps({"example_gen": {"eval_ratio": "lots"}}))
    bad_type = run_cli("run", "--input", "x.csv", "--pipeline-root", str(tmp_path / "r"),
                       "--config", str(config))
    assert bad_type.returncode == 2 and "eval_ratio" in bad_type.stderr
    bad_stage = run_cli("run", "--input", "x.csv", "--pipeline-root", str(tmp_path / "r"),
                        "--until", "Nowhere")
    assert bad_stage.returncode == 2 and "--until" in bad_stage.stderr


def test_metadata_dir_holds_the_store_and_the_lock(tmp_path):
    data = write_csv(tmp_path / "q.csv", trec_like(12))
    root, metadata = str(tmp_path / "root"), str(tmp_path / "metadata")
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--metadata-dir", metadata,
                   "--until", "ExampleGen", *IN_MEMORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(metadata)) == [".lock", "metadata.sqlite"]
    assert sorted(os.listdir(root)) == ["ExampleGen", "runs"]  # artifacts and run records
    assert summary_of(root)["config"]["metadata_dir"] == metadata
    runs = run_cli("runs", root, "--metadata-dir", metadata)
    assert runs.returncode == 0 and "succeeded" in runs.stdout, runs.stderr[-2000:]
    without = run_cli("runs", root)
    assert without.returncode == 2 and "no metadata store" in without.stderr
