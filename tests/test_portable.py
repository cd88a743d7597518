"""The pipeline on Beam's portable runner, and the package that a cluster's workers install.

Flink, Spark and Dataflow Runner v2 run a Python pipeline the portable way: the driver submits a
pipeline proto to a job service, and SDK worker processes that share nothing with the driver
(not its `__main__`, not its working directory) run the DoFns. Here Beam's own local job service
and an EXTERNAL worker pool play those parts (tests/portable_services.py), and the outputs must
equal the DirectRunner's: the same records per split, vocabulary, transformed examples,
statistics, evaluation and predictions.

To keep it fast and the comparison exact, the model is trained once (the Trainer does not use
Beam): the DirectRunner runs the whole pipeline into root A and pushes; the portable runner runs
ExampleGen..Transform into a fresh root B (compared with A's artifacts), then the Evaluator on
root A's model (a changed threshold makes the Evaluator execute again while the stages before it
are reused), and scores with the pushed model, compared with DirectRunner scoring.
"""
import filecmp
import glob
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

from components import features
from conftest import IN_MEMORY, REPO, read_split
from portable_services import PortableServices, worker_environment
from test_cli import TINY_TRAINER, trec_like, write_csv

SPLITS = (features.TRAIN, features.EVAL, features.TEST)
# Every Beam pipeline the commands build, and a top-level transform that names it.
PORTABLE_PIPELINES = (
    ("ExampleGen", "ParseUnits"), ("StatisticsGen", "GenerateStatistics[train]"),
    ("Transform", "Analyze"), ("Evaluator", "ExtractEvaluateAndWrite"),
    ("score", "ScoreRows"))


@pytest.fixture(scope="module")
def portable(tmp_path_factory):
    """Beam's job service and an external worker pool, stopped at the end whatever happens."""
    services = PortableServices(tmp_path_factory.mktemp("portable_services")).start()
    try:
        yield services
    finally:
        services.stop()
        left = services.pids()
        assert not left, f"processes left behind by the portable services: {left}"


def _start_cli(*args):
    """`python local_runner.py ARGS` in the background; stdout/stderr captured."""
    return subprocess.Popen([sys.executable, os.path.join(REPO, "local_runner.py"), *args],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(*procs, timeout=600):
    """Waits for every process; returns (returncode, stdout, stderr) for each."""
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=timeout)
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _ok(result, what):
    code, out, err = result
    assert code == 0, f"{what} exited {code}:\n{out[-2000:]}\n{err[-4000:]}"
    return out, err


def _summary(root, newest=True):
    """The summary.json of a pipeline root's newest (or first) run; run ids sort by time."""
    paths = sorted(glob.glob(os.path.join(root, "runs", "*", "summary.json")))
    with open(paths[-1 if newest else 0]) as f:
        return json.load(f)


def _stage_dir(root_or_summary, stage):
    """The stage's artifact in a run's summary (default: the root's newest run)."""
    summary = (root_or_summary if isinstance(root_or_summary, dict)
               else _summary(root_or_summary))
    [entry] = [s for s in summary["stages"] if s["name"] == stage]
    return entry["output"]


def _json(path):
    with open(path) as f:
        return json.load(f)


def _stats_digest(path):
    """What TFDV statistics say that does not depend on the order Beam merged partial results.

    Counts, distinct values, top values and min/max are exact; means are compared with a
    tolerance; quantile histograms come from sketches and are left out.
    """
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with open(path, "rb") as f:
        stats.ParseFromString(f.read())
    out = {}
    for dataset in stats.datasets:
        out["num_examples"] = dataset.num_examples
        for feature in dataset.features:
            name = ".".join(feature.path.step) or feature.name
            kind = feature.WhichOneof("stats")
            s = getattr(feature, kind)
            common = s.common_stats
            digest = {"type": feature.type, "num_non_missing": common.num_non_missing,
                      "num_missing": common.num_missing,
                      "min_num_values": common.min_num_values,
                      "max_num_values": common.max_num_values,
                      "avg_num_values": pytest.approx(common.avg_num_values, rel=1e-6)}
            if kind == "string_stats":
                digest.update(unique=s.unique,
                              avg_length=pytest.approx(s.avg_length, rel=1e-6),
                              top_values=sorted((v.value, v.frequency) for v in s.top_values))
            elif kind == "num_stats":
                digest.update(min=s.min, max=s.max, mean=pytest.approx(s.mean, rel=1e-6),
                              num_zeros=s.num_zeros)
            out[name] = digest
    return out


def _predictions(output_dir):
    rows = []
    for path in sorted(glob.glob(os.path.join(output_dir, "predictions", "*.jsonl"))):
        with open(path) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return sorted(rows, key=lambda r: r["id"])


def _approx_rows(rows):
    """Rows with their float fields (class probabilities) compared to within 1e-6."""
    return [{k: pytest.approx(v, abs=1e-6) if isinstance(v, float) else v
             for k, v in row.items()} for row in rows]


def test_workers_import_the_installed_package_not_the_checkout(portable):
    """The workers' interpreter, environment and working directory find `components`.

    No PYTHONPATH, and a working directory outside the checkout: the package comes from the
    installation (`pip install -e .` here; a wheel on a cluster).
    """
    env = worker_environment()
    assert "PYTHONPATH" not in env
    assert os.path.commonpath([portable.workdir, REPO]) != REPO
    proc = subprocess.run(
        ["python", "-c", "import sys, components, components.worker_setup; "
                         "print(sys.executable); print(components.__file__)"],
        cwd=portable.workdir, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    executable, module = proc.stdout.split()
    assert os.path.dirname(executable) == os.path.dirname(sys.executable)
    assert module == os.path.join(REPO, "components", "__init__.py")


def test_portable_runner_gives_the_direct_runners_results(tmp_path, portable):
    data = write_csv(tmp_path / "q.csv", trec_like())
    config = tmp_path / "tiny.toml"
    # ExampleGen through Beam (small inputs are otherwise parsed in the driver); the wide tower's
    # features are analysed on the portable runner too.
    config.write_text(TINY_TRAINER.replace("[trainer.model]\n", "[trainer.model]\nwide = true\n")
                      + "\n[example_gen]\nin_process_max_bytes = 0\n")
    root_a, root_b = str(tmp_path / "direct"), str(tmp_path / "portable")
    serving = str(tmp_path / "serving")
    flags = portable.beam_args

    # Root A: the whole pipeline on the DirectRunner. Root B: the Beam stages before training on
    # the portable runner. They share nothing, so they run side by side.
    direct, port = _finish(
        _start_cli("run", "--input", data, "--pipeline-root", root_a, "--serving-dir", serving,
                   "--config", str(config), *IN_MEMORY),
        _start_cli("run", "--input", data, "--pipeline-root", root_b, "--config", str(config),
                   "--until", "Transform", *flags))
    _ok(direct, "DirectRunner run")
    _ok(port, "portable run until Transform\n" + portable.log_tail())
    summary_b = _summary(root_b)
    assert summary_b["status"] == "succeeded"
    assert "--runner=PortableRunner" in summary_b["beam_args"]
    assert {s["name"]: s["status"] for s in summary_b["stages"]} == {
        "ExampleGen": "ok", "StatisticsGen": "ok", "SchemaGen": "ok", "ExampleValidator": "ok",
        "Transform": "ok"}

    # ExampleGen: the same records in every split, the same counts.
    eg_a, eg_b = _stage_dir(root_a, "ExampleGen"), _stage_dir(root_b, "ExampleGen")
    for split in SPLITS:
        records = read_split(eg_a, split)
        assert records and read_split(eg_b, split) == records, split
    counts_a, counts_b = _json(os.path.join(eg_a, "counts.json")), _json(
        os.path.join(eg_b, "counts.json"))
    assert counts_b == counts_a and counts_a["read"] == counts_a["written"] == 60

    # StatisticsGen: what is deterministic in TFDV's statistics.
    st_a, st_b = _stage_dir(root_a, "StatisticsGen"), _stage_dir(root_b, "StatisticsGen")
    for split in SPLITS:
        for name in ("FeatureStats.pb", "TextLengthStats.pb"):
            digest_a = _stats_digest(os.path.join(st_a, features.split_dir_name(split), name))
            assert digest_a["num_examples"] > 0
            assert _stats_digest(os.path.join(st_b, features.split_dir_name(split),
                                              name)) == digest_a, (split, name)

    # Transform: the same vocabularies (files under transform_fn/assets: the tokens' and the
    # wide tower's n-grams), the same transformed examples byte for byte (the canonical shards
    # do not depend on the runner's order), the same token statistics and max_len.
    tf_a, tf_b = _stage_dir(root_a, "Transform"), _stage_dir(root_b, "Transform")
    vocabularies = sorted(glob.glob(os.path.join(tf_a, "transform_fn", "assets", "*vocab*")))
    assert [os.path.basename(v) for v in vocabularies] == ["text_vocab", "wide_vocab"]
    for vocab_a in vocabularies:
        vocab_b = os.path.join(tf_b, "transform_fn", "assets", os.path.basename(vocab_a))
        with open(vocab_a, "rb") as a, open(vocab_b, "rb") as b:
            vocabulary = a.read()
            assert vocabulary and b.read() == vocabulary, vocab_a
    for split in SPLITS:
        files_a = sorted(os.path.relpath(p, tf_a) for p in glob.glob(
            os.path.join(tf_a, features.split_dir_name(split), "*")))
        assert files_a and sorted(os.path.relpath(p, tf_b) for p in glob.glob(
            os.path.join(tf_b, features.split_dir_name(split), "*"))) == files_a
        match, mismatch, errors = filecmp.cmpfiles(tf_a, tf_b, files_a, shallow=False)
        assert not mismatch and not errors, (split, mismatch, errors)
    info_a, info_b = (_json(os.path.join(d, "transform_info.json")) for d in (tf_a, tf_b))
    assert info_b == info_a

    # Evaluator on the portable runner, on root A's model: a different (still trivial) floor
    # makes it execute again; the stages before it are reused. Meanwhile, bulk scoring with the
    # pushed model on both runners. Reuse needs the code of root A's run (its hash is part of
    # every cache key): an edit since then would retrain, and the comparison would be moot.
    from pipeline.orchestrator import code_version

    if code_version() != _summary(root_a)["code_version"]:
        pytest.fail("the project's code changed while this test ran (components/*.py or "
                    "pipeline/pipeline.py were edited): run it again")
    settings = tomllib.loads(TINY_TRAINER)
    settings.setdefault("example_gen", {})["in_process_max_bytes"] = 0
    settings["evaluator"]["min_accuracy"] = 0.001
    settings["trainer"]["model"]["wide"] = True  # as root A's run: its stages are reused
    config_eval = tmp_path / "tiny_eval.json"
    config_eval.write_text(json.dumps(settings))
    model = os.path.join(serving, "textcnn")
    scored_direct, scored_port = str(tmp_path / "scored_direct"), str(tmp_path / "scored_port")
    evaluated, score_d, score_p = _finish(
        _start_cli("run", "--input", data, "--pipeline-root", root_a, "--serving-dir", serving,
                   "--config", str(config_eval), "--until", "Evaluator", *flags),
        _start_cli("score", "--model", model, "--input", data, "--output", scored_direct,
                   *IN_MEMORY),
        _start_cli("score", "--model", model, "--input", data, "--output", scored_port, *flags))
    _ok(evaluated, "portable Evaluator\n" + portable.log_tail())
    _ok(score_d, "DirectRunner scoring")
    _ok(score_p, "portable scoring\n" + portable.log_tail())

    summary_e = _summary(root_a)
    assert "--runner=PortableRunner" in summary_e["beam_args"]
    statuses = {s["name"]: s["status"] for s in summary_e["stages"]}
    assert statuses.pop("Evaluator") == "ok"
    # The same data and the same model as the DirectRunner's Evaluator had.
    assert set(statuses.values()) == {"reused"}, (
        f"stages before the Evaluator were executed again instead of reused: {statuses} (did "
        "the project's code change while the test ran? its hash is part of every cache key)")
    first = _summary(root_a, newest=False)
    ev_direct, ev_port = (_json(os.path.join(_stage_dir(s, "Evaluator"), "evaluation.json"))
                          for s in (first, summary_e))
    assert ev_port["blessed"] and ev_port["split"] == ev_direct["split"] == features.TEST
    assert ev_port["baseline"] is None and ev_direct["baseline"] is None
    assert set(ev_port["metrics"]) == set(ev_direct["metrics"])  # the same slices
    for slice_name, metrics in ev_direct["metrics"].items():
        assert set(ev_port["metrics"][slice_name]) == set(metrics), slice_name
        for key, value in metrics.items():
            got = ev_port["metrics"][slice_name][key]
            if isinstance(value, float):
                assert got == pytest.approx(value, abs=1e-6), (slice_name, key)
            else:
                assert got == value, (slice_name, key)
    assert ev_port["metrics"]["Overall"]["example_count"] == 6

    predictions = _predictions(scored_direct)
    assert len(predictions) == 60
    assert _predictions(scored_port) == _approx_rows(predictions)
    sum_d, sum_p = (_json(os.path.join(d, "summary.json")) for d in (scored_direct, scored_port))
    assert (sum_p["read"], sum_p["scored"], sum_p["quarantined"]) == (
        sum_d["read"], sum_d["scored"], sum_d["quarantined"]) == (60, 60, 0)
    assert sum_p["accuracy"] == pytest.approx(sum_d["accuracy"])

    # Each stage's Beam pipeline was a job of the job service, run by the pool's SDK workers
    # (EXTERNAL), not by a DirectRunner in the driver. A top-level transform names the stage.
    jobs = portable.jobs()
    assert {j["state"] for j in jobs} == {"DONE"}, jobs
    assert all(j["environments"] == ["beam:env:external:v1"] for j in jobs), jobs
    ran = {name for j in jobs for name in j["transforms"]}
    missing = [f"{stage} ({marker})" for stage, marker in PORTABLE_PIPELINES if marker not in ran]
    # Beam's PortableRunner (so FlinkRunner and SparkRunner too) sets the `runner` option of the
    # PipelineOptions it runs to None; a stage given the same object would fall back to the
    # DirectRunner in the driver. Each stage's pipeline gets its own copy
    # (components/beam_pipeline.py): every one of them must be a job of the job service.
    assert not missing, f"ran on the DirectRunner in the driver, not the portable runner: {missing}"


# Copied for the build so that pip's in-tree build (build/, *.egg-info) never touches the
# checkout that other processes use; everything else is what a user's checkout holds.
_NOT_SOURCE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", "data", "pipeline_root",
                                     "serving", "*.pyc")


def test_the_wheel_holds_every_module_workers_import(tmp_path):
    """`pip wheel .` (what `--extra_package` ships to Dataflow workers) packs the code."""
    src, dist = tmp_path / "src", tmp_path / "dist"
    shutil.copytree(REPO, src, ignore=_NOT_SOURCE)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(src)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    [wheel] = glob.glob(str(dist / "*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("components", "pipeline"):
        modules = sorted(os.path.relpath(p, REPO) for p in glob.glob(
            os.path.join(REPO, package, "*.py")))
        assert f"{package}/__init__.py" in modules
        missing = [m for m in modules if m not in names]
        assert not missing, f"{os.path.basename(wheel)} lacks {missing}"
    assert "local_runner.py" in names  # the CLI, for a driver installed from the wheel
