"""The Python API (pipeline/api.py): what a scheduler or a notebook drives, without the CLI."""
import ast
import os

import pytest

from conftest import IN_MEMORY, REPO
from test_cli import TINY_TRAINER, trec_like, write_csv

STAGES = ["ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Trainer",
          "Evaluator", "Pusher"]


def test_a_run_a_scoring_run_and_lineage_through_the_python_api(tmp_path):
    from pipeline import api

    data = write_csv(tmp_path / "q.csv", trec_like(120))
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY_TRAINER)
    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")
    config = api.load_config(str(config_file), {
        "inputs": (data,), "pipeline_root": root, "pusher": {"serving_dir": serving}})

    result = api.run(config, IN_MEMORY)
    assert (result.ok, result.status, result.exit_code, result.error) == (
        True, "succeeded", 0, None)
    assert [(s.name, s.status) for s in result.stages] == [(s, "ok") for s in STAGES]
    assert result.stage("ExampleGen").details["read"] == 120
    assert os.path.isfile(result.summary_path) and os.path.isfile(result.report_path)
    assert os.path.isfile(os.path.join(result.pushed_path, "saved_model.pb"))
    assert os.path.dirname(result.pushed_path) == os.path.join(serving, "textcnn")
    assert result.raise_for_status() is result

    again = api.run(config, IN_MEMORY)
    assert again.ok and again.nothing_new
    assert {(s.status, s.reused_from) for s in again.stages} == {("reused", result.run_id)}
    assert again.pushed_path == result.pushed_path

    runs = api.list_runs(root)
    assert [r.run_id for r in runs] == [result.run_id, again.run_id]
    assert (runs[0].executed, runs[0].reused, runs[0].pushed_by) == (8, 0, None)
    assert (runs[1].executed, runs[1].reused, runs[1].pushed_by) == (0, 8, result.run_id)
    assert runs[0].pushed_version == runs[1].pushed_version == int(
        os.path.basename(result.pushed_path))

    scored = api.score(os.path.join(serving, "textcnn"), [data], str(tmp_path / "scored"),
                       beam_args=IN_MEMORY)
    assert scored.read == 120 and scored.scored + scored.quarantined == 120
    assert scored.model == result.pushed_path and scored.labelled == 120
    assert 0 < scored.accuracy <= 1

    found = api.lineage(result.pushed_path)
    assert found.run_id == result.run_id and found.root == root
    assert set(found.stages) == set(STAGES)
    assert f"was pushed by run {result.run_id}" in found.text()

    # A run that fails is recorded and handed back; raise_for_status raises its error.
    bad = write_csv(tmp_path / "bad.csv", [("   ", "a", "")])
    failed = api.run(api.load_config(None, {"inputs": (bad,), "pipeline_root": root}),
                     IN_MEMORY)
    assert (failed.ok, failed.exit_code) == (False, 2) and "no usable rows" in failed.error
    assert [s.status for s in failed.stages] == ["failed"]
    with pytest.raises(api.UserInputError, match="no usable rows"):
        failed.raise_for_status()
    assert api.list_runs(root)[-1].exit_code == 2


def test_the_command_line_imports_nothing_from_components():
    with open(os.path.join(REPO, "local_runner.py")) as f:
        tree = ast.parse(f.read())
    imported = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for a in node.names]
    imported += [node.module for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module]
    assert "pipeline" in imported or "pipeline.api" in imported
    assert not [m for m in imported if m.split(".")[0] == "components"], imported


def same_state(a, b):
    import numpy as np

    assert a.keys() == b.keys()
    for key in a:
        if key == "numpy_random":
            assert a[key][0] == b[key][0] and np.array_equal(a[key][1], b[key][1]) and \
                a[key][2:] == b[key][2:], key
        else:
            assert a[key] == b[key], key
    return True


def test_process_wide_settings_are_restored_around_a_stage():
    import csv
    import random

    import tf_keras as keras
    from tensorflow.python.framework import config as tf_config

    from components.trainer import skip_autograph_for_tf_keras
    from pipeline import process_state

    before = process_state.snapshot()
    with pytest.raises(RuntimeError, match="a stage that fails"):
        with process_state.contained():
            csv.field_size_limit(12345)
            keras.mixed_precision.set_global_policy("mixed_float16")
            tf_config.enable_op_determinism()
            skip_autograph_for_tf_keras()
            keras.utils.set_random_seed(7)
            random.random()
            changed = process_state.snapshot()
            raise RuntimeError("a stage that fails half-way")
    for key in ("csv_field_size_limit", "mixed_precision_policy", "python_random"):
        assert changed[key] != before[key], key
    assert same_state(process_state.snapshot(), before)
    assert keras.mixed_precision.global_policy().name == before["mixed_precision_policy"]


def test_a_whole_run_in_this_process_leaves_its_settings_as_they_were(tmp_path):
    from pipeline import api, process_state

    data = write_csv(tmp_path / "q.csv", trec_like(60))
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY_TRAINER)
    before = process_state.snapshot()
    result = api.run(api.load_config(str(config_file), {
        "inputs": (data,), "pipeline_root": str(tmp_path / "root"), "until": "Trainer"}),
        IN_MEMORY)
    assert result.ok, result.error
    assert same_state(process_state.snapshot(), before)


def test_ingest_and_scoring_share_the_readers_and_the_scorer_needs_no_example_gen():
    from pipeline.orchestrator import module_closure

    def imports(module):
        with open(os.path.join(REPO, *module.split(".")) + ".py") as f:
            tree = ast.parse(f.read())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module:
                names += [n.module] + [f"{n.module}.{a.name}" for a in n.names]
        return names

    for module in ("components.scorer", "components.example_gen"):
        assert "components.readers" in imports(module), module
    assert not any(n.startswith("components.example_gen") for n in imports("components.scorer"))
    assert "components.example_gen" not in module_closure(["components.scorer"])[0]


def test_typed_results_read_records_of_any_age():
    from pipeline import results
    from pipeline.pipeline import format_summary

    trainer = results.result_of("Trainer", {"metrics": {"eval_accuracy": 0.5,
                                                        "train_accuracy": 0.75},
                                            "epochs_run": 3, "a_key_from_the_future": 1})
    assert isinstance(trainer, results.TrainerResult)
    assert trainer.accuracies == {"eval": 0.5, "train": 0.75} and trainer.workers == 1
    assert trainer.extra == {"a_key_from_the_future": 1}
    old = results.result_of("Evaluator", {})  # a record from before a field existed
    assert old.blessed is None and old.overall == {} and old.accuracy is None
    assert results.result_of("Pusher", {"version": 7, "path": "/s/7"}).pushed  # the default
    assert type(results.result_of("SomeFutureStage", {"x": 1})) is results.StageDetails
    # A summary written before typed results (and before the Tuner and workers) still reads.
    summary = {"run_id": "r", "status": "succeeded", "stages": [
        {"name": "ExampleGen", "status": "ok", "seconds": 1.0, "output": "/o",
         "details": {"read": 3, "written": 2, "quarantined": 1, "splits": {"train": 2},
                     "quarantine_reasons": {"empty_text": 1}}},
        {"name": "Trainer", "status": "ok", "seconds": 2.0, "output": "/t",
         "details": {"metrics": {"eval_accuracy": 0.5}, "epochs_run": 1, "best_epoch": 1,
                     "train_seconds": 1.5, "replicas": 1, "model": "/t/model"}}]}
    text = format_summary(summary)
    assert "rows read 3 = written 2 (train 2) + quarantined 1" in text
    assert "1 epochs (best 1), 1.5s on 1 replica(s); accuracy eval 0.500" in text
