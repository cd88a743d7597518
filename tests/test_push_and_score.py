"""Evaluator, Pusher and bulk scoring, end to end through local_runner.py."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import components  # noqa: F401  (legacy Keras before TensorFlow)
import numpy as np
import pytest
import tensorflow as tf

from components import pusher
from components.artifacts import fingerprint_dir
from conftest import IN_MEMORY, REPO, run_cli
from test_cli import trec_like, write_csv

NORMAL = """
[transform]
max_len = 12

[trainer]
epochs = 20
batch_size = 16
learning_rate = 0.01

[trainer.model]
wide = true  # scoring, the skew check and the Evaluator with the wide tower on
embedding_dim = 16
num_filters = 8

[evaluator]
min_accuracy = 0.6
"""

WEAK = """
[transform]
max_len = 12

[trainer]
epochs = 1
batch_size = 16
learning_rate = 0.000001  # practically untrained: at chance, whatever order it saw the data in

[trainer.model]
embedding_dim = 2
num_filters = 1

[evaluator]
min_accuracy = 0.6
"""


def run_pipeline(tmp, data, serving, config_text, name):
    config = tmp / f"{name}.toml"
    config.write_text(config_text)
    return run_cli("run", "--input", data, "--pipeline-root", str(tmp / f"root-{name}"),
                   "--serving-dir", serving, "--config", str(config), *IN_MEMORY)


def questions_csv(path):
    """120 TREC-like questions; every 7th is a test question: all six classes are in
    Split-test (3 each)."""
    return write_csv(path, [(text, label, "test" if i % 7 == 0 else "")
                            for i, (text, label, _) in enumerate(trec_like(120))])


@pytest.fixture(scope="module")
def first_push(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("push")
    data = questions_csv(tmp / "q.csv")
    serving = str(tmp / "serving")
    proc = run_pipeline(tmp, data, serving, NORMAL, "v1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp, data, serving, proc


def evaluation_of(root):
    [path] = glob.glob(os.path.join(root, "Evaluator", "*", "evaluation.json"))
    with open(path) as f:
        return json.load(f), os.path.dirname(path)


def test_first_run_is_evaluated_and_pushed(first_push):
    tmp, _, serving, proc = first_push
    result, eval_dir = evaluation_of(tmp / "root-v1")
    assert result["blessed"] and os.path.exists(os.path.join(eval_dir, "BLESSED"))
    assert result["split"] == "test" and result["baseline"] is None
    overall = result["metrics"]["Overall"]
    assert overall["example_count"] == 18
    assert overall["sparse_categorical_accuracy"] >= 0.6
    matrix = np.array(overall["confusion_matrix"])
    assert matrix.shape == (6, 6) and matrix.sum() == 18
    assert np.isclose(np.trace(matrix) / 18, overall["sparse_categorical_accuracy"])
    # Per-class scores agree with the matrix (precision over a predicted column, recall over an
    # actual row); tests/test_evaluator.py checks them on numbers worked out by hand.
    for c in range(6):
        column, row = matrix[:, c].sum(), matrix[c].sum()
        assert overall[f"precision/class_{c}"] == (matrix[c, c] / column if column else None)
        assert overall[f"recall/class_{c}"] == (matrix[c, c] / row if row else None)
    slices = set(result["metrics"])
    assert {"label:NUM", "label:ABBR", "label:DESC"} <= slices  # the labels of Split-test
    assert any(s.startswith("text_length_bucket:") for s in slices)

    [version] = pusher.versions(os.path.join(serving, "textcnn"))
    assert f"pushed version {version}" in proc.stdout
    with open(os.path.join(serving, "textcnn", str(version), "metadata.json")) as f:
        meta = json.load(f)
    assert meta["version"] == version
    assert meta["classes"] == ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]
    assert meta["metrics"]["sparse_categorical_accuracy"] == overall[
        "sparse_categorical_accuracy"]
    # Recorded when ExampleGen published its splits, and read from that record.
    [examples] = glob.glob(os.path.join(tmp, "root-v1", "ExampleGen", "2*"))
    assert meta["data_fingerprints"] == {
        s: fingerprint_dir(os.path.join(examples, f"Split-{s}")) for s in ("train", "eval", "test")}
    assert meta["vocabulary_size"] > 0 and meta["packages"]["tensorflow"] == "2.16.2"
    assert meta["config"]["trainer"]["epochs"] == 20 and "git_commit" in meta


def test_pushed_version_loads(first_push):
    _, _, serving, _ = first_push
    version_dir = pusher.latest_version_dir(os.path.join(serving, "textcnn"))
    loaded = tf.saved_model.load(version_dir)
    out = loaded.signatures["serving_default"](text=tf.constant(["How far is the moon ?"]))
    assert out["probabilities"].shape == (1, 6)
    show = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "saved_model_cli"), "show", "--dir",
         version_dir, "--all"], capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    assert "serving_default" in show.stdout and "serving_examples" in show.stdout


def test_weaker_model_is_not_pushed_then_normal_run_pushes_a_newer_version(first_push):
    tmp, data, serving, _ = first_push
    base = os.path.join(serving, "textcnn")
    [v1] = pusher.versions(base)
    weak = run_pipeline(tmp, data, serving, WEAK, "weak")
    assert weak.returncode == 4, weak.stderr[-3000:]
    assert "not blessed" in weak.stderr and "sparse_categorical_accuracy" in weak.stderr
    assert "change_threshold" in weak.stderr  # it names the threshold against the baseline
    result, eval_dir = evaluation_of(tmp / "root-weak")
    assert not result["blessed"] and os.path.exists(os.path.join(eval_dir, "NOT_BLESSED"))
    assert result["baseline"] == os.path.join(base, str(v1))
    assert result["baseline_metrics"]["Overall"]["sparse_categorical_accuracy"] >= 0.6
    assert pusher.versions(base) == [v1]

    # Another good model (the same NORMAL config would train v1's model again, bit for bit,
    # which the Pusher recognises instead of pushing it twice: tests/test_serving.py).
    again = run_pipeline(tmp, data, serving, NORMAL.replace("num_filters = 8",
                                                            "num_filters = 10"), "v2")
    assert again.returncode == 0, again.stderr[-3000:]
    versions = pusher.versions(base)
    assert len(versions) == 2 and versions[0] == v1 and versions[1] > v1


def test_score_reconciles_and_matches_the_serving_signature(first_push, tmp_path):
    _, _, serving, _ = first_push
    base = os.path.join(serving, "textcnn")
    version = pusher.versions(base)[0]
    texts = ["How far is the moon number 3 ?", "Who wrote Hamlet number 5 ?",
             "Where is Rome number 8 ?"]
    with open(tmp_path / "in.jsonl", "w") as f:
        f.write(json.dumps({"text": texts[0], "id": "a"}) + "\n")
        f.write(json.dumps({"text": "   ", "id": "blank"}) + "\n")
        f.write(json.dumps({"text": texts[1]}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"text": texts[2], "id": "c", "label": "LOC"}) + "\n")
    out = str(tmp_path / "scored")
    proc = run_cli("score", "--model", base, "--version", str(version), "--input",
                   str(tmp_path / "in.jsonl"), "--output", out, "--csv", *IN_MEMORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rows read 5 = scored 3 + quarantined 2" in proc.stdout
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert summary["read"] == summary["scored"] + summary["quarantined"] == 5
    assert summary["labelled"] == 1
    rows = [json.loads(line) for p in sorted(glob.glob(os.path.join(out, "predictions",
                                                                      "*.jsonl")))
            for line in open(p)]
    quarantined = [json.loads(line) for p in glob.glob(os.path.join(out, "quarantine", "*"))
                   for line in open(p)]
    assert len(rows) + len(quarantined) == 5
    assert sorted(q["reason"] for q in quarantined) == ["empty_text", "unparseable_row"]
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"a", f"{tmp_path / 'in.jsonl'}:3", "c"}
    assert all(r["model_version"] == str(version) for r in rows)

    direct = tf.saved_model.load(os.path.join(base, str(version))).signatures[
        "serving_default"](text=tf.constant(texts))
    for row_id, i in (("a", 0), (f"{tmp_path / 'in.jsonl'}:3", 1), ("c", 2)):
        got = [by_id[row_id]["probabilities"][c] for c in summary["classes"]]
        np.testing.assert_allclose(got, direct["probabilities"].numpy()[i], rtol=1e-5)
        assert by_id[row_id]["predicted_class"] == direct["predicted_class"].numpy()[i].decode()
    csv_lines = [line for p in glob.glob(os.path.join(out, "predictions", "*.csv"))
                 for line in open(p)]
    assert csv_lines[0].startswith("id,label,predicted_class,p_DESC") and len(csv_lines) == 4


# ------------------------------------------------------------------------- atomic push (unit)


def make_model(path):
    class Tiny(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * 2.0

    tf.saved_model.save(Tiny(), path)
    # Pad the model with a few more files so that a copy takes long enough to be interrupted.
    for i in range(20):
        with open(os.path.join(path, "assets", f"pad{i}.bin") if os.path.isdir(
                os.path.join(path, "assets")) else os.path.join(path, f"pad{i}.bin"), "wb") as f:
            f.write(os.urandom(1024))
    return path


def test_push_is_atomic_when_the_process_is_killed(tmp_path):
    model = make_model(str(tmp_path / "model"))
    serving = str(tmp_path / "serving")
    started = tmp_path / "copying"
    script = f"""
import shutil, time, sys
sys.path.insert(0, {REPO!r})
import components.pusher as p
real = shutil.copy2
def slow(src, dst, *a, **k):
    open({str(started)!r}, "w").close()
    time.sleep(0.3)
    return real(src, dst, *a, **k)
p.shutil.copy2 = slow
p.push({model!r}, {{"run_id": "x"}}, p.PusherSettings(serving_dir={serving!r}))
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while not started.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    base = os.path.join(serving, "textcnn")
    leftovers = os.listdir(base)
    assert leftovers and all(name.startswith(".tmp-") for name in leftovers)
    for name in leftovers:  # nothing TF Serving would pick up, nothing loadable
        assert not os.path.exists(os.path.join(base, name, "saved_model.pb"))
        with pytest.raises(Exception):
            tf.saved_model.load(os.path.join(base, name))
    assert pusher.versions(base) == []

    # The next push clears the leftovers and publishes a complete, loadable version.
    pushed = pusher.push(model, {"run_id": "y"}, pusher.PusherSettings(serving_dir=serving))
    assert os.listdir(base) == [str(pushed["version"])]
    assert float(tf.saved_model.load(pushed["path"])(tf.constant([2.0]))[0]) == 4.0


def test_versions_only_increase_and_retention_keeps_the_newest(tmp_path):
    model = make_model(str(tmp_path / "model"))
    settings = pusher.PusherSettings(serving_dir=str(tmp_path / "serving"), keep_versions=2)
    base = os.path.join(settings.serving_dir, settings.model_name)
    future = int(time.time()) + 1000
    os.makedirs(os.path.join(base, str(future)))  # a version from the future
    pushed = [pusher.push(model, {}, settings)["version"] for _ in range(3)]
    assert pushed == sorted(pushed) and len(set(pushed)) == 3
    assert pushed[0] > future
    assert pusher.versions(base) == pushed[1:]


def test_not_blessed_is_not_pushed(tmp_path):
    evaluator_dir = tmp_path / "Evaluator"
    evaluator_dir.mkdir()
    (evaluator_dir / "NOT_BLESSED").touch()
    (evaluator_dir / "evaluation.json").write_text(json.dumps({"failures": ["accuracy low"]}))
    with pytest.raises(pusher.ModelNotBlessedError, match="accuracy low"):
        pusher.run_pusher(str(evaluator_dir), "unused", {}, pusher.PusherSettings(
            serving_dir=str(tmp_path / "serving")), str(tmp_path / "Pusher"))
    assert not os.path.exists(tmp_path / "serving" / "textcnn") or not os.listdir(
        tmp_path / "serving" / "textcnn")


def test_score_validates_against_the_serving_environment(first_push, tmp_path):
    _, _, serving, _ = first_push
    data = write_csv(tmp_path / "in.csv", [("Who wrote Hamlet ?", "HUM"),
                                           ("What is love ?", "EMOTION")], header="text,label")
    # A schema whose SERVING environment requires a feature the scoring data does not have.
    with open(os.path.join(REPO, "schemas", "schema.pbtxt")) as f:
        schema = f.read()
    strict = tmp_path / "strict.pbtxt"
    strict.write_text(schema + 'feature {\n  name: "lang"\n  type: BYTES\n'
                      '  presence {\n    min_fraction: 1.0\n    min_count: 1\n  }\n}\n')
    blocked = run_cli("score", "--model", os.path.join(serving, "textcnn"), "--input", data,
                      "--output", str(tmp_path / "blocked"), "--schema", str(strict), *IN_MEMORY)
    assert blocked.returncode == 3, blocked.stderr[-3000:]
    assert "'lang'" in blocked.stderr and "SERVING" in blocked.stderr
    # Nothing is published, nor left staged: the output holds only its lock and the store.
    assert set(os.listdir(tmp_path / "blocked")) <= {".lock", ".metadata"}

    allowed = run_cli("score", "--model", os.path.join(serving, "textcnn"), "--input", data,
                      "--output", str(tmp_path / "allowed"), "--schema", str(strict),
                      "--allow-anomalies", *IN_MEMORY)
    assert allowed.returncode == 0, allowed.stderr[-3000:]
    assert "rows read 2 = scored 2 + quarantined 0" in allowed.stdout

    # Labels are optional and not validated for scoring (any value is only compared for accuracy).
    plain = run_cli("score", "--model", os.path.join(serving, "textcnn"), "--input", data,
                    "--output", str(tmp_path / "plain"), *IN_MEMORY)
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert "accuracy on the 2 labelled rows" in plain.stdout


# ----------------------------------------------------------------- scoring output shards


def test_shards_roll_at_rows_per_shard_and_are_numbered_alike_in_every_format(tmp_path):
    """A worker's rows go into shard files of at most rows_per_shard rows, the same rows in
    each format's file; numbering gives every format the same shard numbers."""
    import pyarrow.parquet as pq

    from components.scorer import _Columns, _ShardSet, number_shards

    columns = _Columns(["0", "1"], "5")
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    shards = _ShardSet(str(pieces), ("jsonl", "csv", "parquet"), 4, columns)
    done = []
    for start, n in ((0, 3), (3, 7), (10, 1)):  # batches of 3, 7 and 1 rows: 11 rows
        ids = [f"r{i}" for i in range(start, start + n)]
        probabilities = np.array([[0.25, 0.75]] * n, np.float32)
        done += shards.write(ids, [None] * n, probabilities, ["1"] * n)
    done += shards.close()
    assert sorted(rows for stem, fmt, _, rows in done if fmt == "csv") == [3, 4, 4]
    count, rows = number_shards(done, str(tmp_path / "out"), ("jsonl", "csv", "parquet"),
                                columns)
    assert count == 3 and rows == {"jsonl": 11, "csv": 11, "parquet": 11}
    for i in range(3):
        name = str(tmp_path / "out" / f"predictions-0000{i}-of-00003")
        jsonl = [json.loads(line)["id"] for line in open(name + ".jsonl")]
        csv_ids = [line.split(",")[0] for line in open(name + ".csv").read().splitlines()[1:]]
        assert jsonl == csv_ids == pq.read_table(name + ".parquet").column("id").to_pylist()
    assert not os.listdir(pieces)
    # No rows at all: one empty shard per format, with the CSV header and the Parquet schema.
    count, rows = number_shards([], str(tmp_path / "empty"), ("csv", "parquet"), columns)
    assert count == 1 and rows == {"csv": 0, "parquet": 0}
    assert (tmp_path / "empty" / "predictions-00000-of-00001.csv").read_text() == (
        "id,label,predicted_class,p_0,p_1,model_version\n")
    table = pq.read_table(str(tmp_path / "empty" / "predictions-00000-of-00001.parquet"))
    assert table.num_rows == 0 and table.column_names == [
        "id", "label", "predicted_class", "p_0", "p_1", "model_version"]


def test_jsonl_lines_are_what_json_dumps_writes(tmp_path):
    """The JSONL writer formats lines from a template; they must be json.dumps' own, for
    strings that need escaping, integer classes, a % in a name, and non-finite numbers."""
    from components.scorer import _Columns, _JsonlWriter

    for classes, version in ((["0", "1"], "3"), (['A"b', "\u00e9%s"], "7%")):
        writer = _JsonlWriter(str(tmp_path / "p.jsonl"), _Columns(classes, version))
        ids = ['x"\n\\\u00e9\u2028', "2", "%d"]
        labels = [None, "1", "\u00e9"]
        for probabilities in (np.array([[0.25, 0.75], [1e-9, 1 - 1e-9], [0.5, 0.5]], np.float32),
                              np.array([[np.nan, 1.0], [0.0, np.inf], [0.5, 0.5]], np.float32)):
            writer.write(ids, labels, probabilities, [classes[1], classes[0], classes[1]])
        writer.close()
        value = (lambda c: int(c) if c.isdigit() else c) if classes[0] == "0" else str
        expected = []
        for probabilities in ([[0.25, 0.75], [1e-9, 1 - 1e-9], [0.5, 0.5]],
                              [[float("nan"), 1.0], [0.0, float("inf")], [0.5, 0.5]]):
            for row_id, label, p, cls in zip(ids, labels, np.array(probabilities, np.float32)
                                             .tolist(), [classes[1], classes[0], classes[1]]):
                row = {"id": row_id, "predicted_class": value(cls),
                       "probabilities": dict(zip(classes, p)), "model_version": version}
                if label is not None:
                    row["label"] = value(label)
                expected.append(json.dumps(row, ensure_ascii=False))
        with open(tmp_path / "p.jsonl", encoding="utf-8", newline="") as f:
            assert f.read().split("\n") == expected + [""]


@pytest.mark.parametrize("beam_args", [IN_MEMORY, []], ids=["in_memory", "multi_processing"])
def test_score_shards_follow_the_data_and_hold_every_row_once(first_push, tmp_path, beam_args):
    """Multi-processing: the chunks are scored by two workers, so a shard may come in pieces."""
    from components import readers as rd
    from components.scorer import ScoreSettings, run_score
    from pipeline.pipeline import beam_options

    _, _, serving, _ = first_push
    base = os.path.join(serving, "textcnn")
    texts = ["How far is the moon ?", "Who wrote Hamlet ?", "Where is Rome ?",
             "What is a cat ?", "When did the war end ?"]
    ids = [f"q{i}" for i in range(25)]
    (tmp_path / "in").mkdir()
    for name, part in (("a", ids[:13]), ("b", ids[13:])):  # two files: rows in several chunks
        with open(tmp_path / "in" / f"{name}.jsonl", "w") as f:
            for row_id in part:
                f.write(json.dumps({"id": row_id, "text": texts[int(row_id[1:]) % 5]}) + "\n")
            f.write(json.dumps({"id": f"blank-{name}", "text": " "}) + "\n")  # quarantined
    out = tmp_path / "scored"
    summary = run_score(base, None, [str(tmp_path / "in" / "*.jsonl")], str(out), None,
                        os.path.join(REPO, "schemas", "schema.pbtxt"), rd.ExampleGenSettings(),
                        ScoreSettings(rows_per_shard=10, formats=("jsonl", "csv")),
                        beam_options(beam_args))
    assert summary["read"] == 27 and summary["scored"] == 25
    # Each worker rolls its own shards: 3 in one process, up to 4 (13 + 12 rows) in two.
    assert summary["shards"] in ((3,) if beam_args else (3, 4))
    by_format = {}
    for suffix in ("jsonl", "csv"):
        paths = sorted(glob.glob(str(out / "predictions" / f"*.{suffix}")))
        assert [os.path.basename(p) for p in paths] == [
            f"predictions-{i:05d}-of-{summary['shards']:05d}.{suffix}"
            for i in range(summary["shards"])]
        shards = [open(p).read().splitlines() for p in paths]
        if suffix == "csv":
            assert all(lines[0].startswith("id,label,predicted_class,p_DESC") for lines in shards)
            shards = [[line.split(",")[0] for line in lines[1:]] for lines in shards]
        else:
            shards = [[json.loads(line)["id"] for line in lines] for lines in shards]
        assert all(0 < len(rows) <= 10 for rows in shards), shards
        assert sorted(sum(shards, [])) == sorted(ids)  # every row once
        by_format[suffix] = shards
    assert by_format["jsonl"] == by_format["csv"]  # shard i holds the same rows in each format
    assert sorted(os.listdir(out)) == [  # published whole: nothing staged is left
        "FeatureStats.pb", "TextLengthStats.pb", "_SUCCESS", "anomalies.pbtxt", "predictions",
        "quarantine", "skew_anomalies.pbtxt", "summary.json"]


@pytest.mark.parametrize("fmt", ["jsonl", "tsv"])
def test_scoring_a_file_cut_in_pieces_equals_scoring_it_whole(first_push, tmp_path, fmt,
                                                              in_memory_options):
    """A big line-based file is read in byte ranges by several workers; the rows' default ids
    (`source:line`) and the quarantine's line numbers are still the file's."""
    from components import readers as rd
    from components.scorer import ScoreSettings, plan_reading, run_score

    _, _, serving, _ = first_push
    base = os.path.join(serving, "textcnn")
    texts = ["How far is the moon ?", "Who wrote Hamlet ?", "Where is Rome \u00e9 ?"]
    path = tmp_path / f"in.{fmt}"
    with open(path, "w", encoding="utf-8", newline="") as f:
        if fmt == "tsv":
            f.write("text\tlabel\n")
        for i in range(30):
            text = "   " if i % 7 == 3 else f"{texts[i % 3]} {i}"  # some quarantined
            f.write(json.dumps({"text": text}) if fmt == "jsonl" else f"{text}\t")
            f.write("\r\n" if i % 4 == 0 else "\n")

    def score(split_bytes, name):
        out = tmp_path / name
        summary = run_score(base, None, [str(path)], str(out), None,
                            os.path.join(REPO, "schemas", "schema.pbtxt"),
                            rd.ExampleGenSettings(split_bytes=split_bytes), ScoreSettings(),
                            in_memory_options)
        rows = sorted((r["id"], r["predicted_class"]) for p in glob.glob(
            str(out / "predictions" / "*.jsonl")) for r in map(json.loads, open(p)))
        lines = sorted(json.loads(line)["line"] for p in glob.glob(str(out / "quarantine" / "*"))
                       for line in open(p))
        return summary["read"], summary["scored"], rows, lines

    whole = score(0, "whole")
    first = 1 if fmt == "jsonl" else 2  # the TSV's header is line 1
    assert whole[:2] == (30, 26) and whole[3] == [i + first for i in (3, 10, 17, 24)]
    assert score(97, "pieces") == whole
    cut = rd.ExampleGenSettings(split_bytes=97, require_label=False)
    (tmp_path / "plan").mkdir()
    planned = plan_reading(rd.discover_inputs([str(path)], cut), cut, str(tmp_path / "plan"),
                           in_memory_options)
    assert len(planned) > 5 and [p[2] for p in planned] == sorted(p[2] for p in planned)


# ------------------------------------------------------------- unattended bulk scoring (CLI)


def write_questions(path, n):
    """n labelled questions as JSONL with ids q0..q{n-1}."""
    rows = trec_like(120)
    with open(path, "w") as f:
        for i in range(n):
            text, label, _ = rows[i % len(rows)]
            f.write(json.dumps({"id": f"q{i}", "text": f"{text} {i}", "label": label}) + "\n")
    return str(path)


def predictions(out):
    """{id: (predicted_class, [probabilities by class], label)} of a JSONL output; fails on a
    duplicated id."""
    rows = {}
    for path in glob.glob(os.path.join(out, "predictions", "*.jsonl")):
        for line in open(path):
            r = json.loads(line)
            assert r["id"] not in rows, f"{r['id']} written twice"
            rows[r["id"]] = (r["predicted_class"], [r["probabilities"][c] for c in
                                                    sorted(r["probabilities"])], r.get("label"))
    return rows


def assert_same_rows(got, want):
    assert sorted(got) == sorted(want)
    for row_id, (cls, p, label) in want.items():
        assert got[row_id][0] == cls and got[row_id][2] == label, row_id
        np.testing.assert_allclose(got[row_id][1], p, atol=1e-6)


@pytest.fixture(scope="module")
def bulk(first_push, tmp_path_factory):
    """60k questions, and their output scored uninterrupted (the reference)."""
    _, _, serving, _ = first_push
    tmp = tmp_path_factory.mktemp("bulk")
    data = write_questions(tmp / "q.jsonl", 60_000)
    reference = str(tmp / "reference")
    proc = run_cli("score", "--model", os.path.join(serving, "textcnn"), "--input", data,
                   "--output", reference, "--format", "jsonl,parquet", *IN_MEMORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return os.path.join(serving, "textcnn"), data, reference


def score_args(model, data, out, *more):
    return [sys.executable, os.path.join(REPO, "local_runner.py"), "score", "--model", model,
            "--input", data, "--output", out, "--format", "jsonl,parquet", *more, *IN_MEMORY]


def test_a_second_scoring_run_into_the_same_output_is_refused_at_once(bulk, tmp_path):
    """The first run scores 200k rows (long enough for the second to start and be refused
    while it runs, on a loaded machine too); its first 60k are the reference's rows."""
    model, _, reference = bulk
    data = write_questions(tmp_path / "q200k.jsonl", 200_000)
    out = str(tmp_path / "out")
    first = subprocess.Popen(score_args(model, data, out), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        lock = os.path.join(out, ".lock")
        deadline = time.monotonic() + 120
        while not (os.path.exists(lock) and open(lock).read().strip()):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        start = time.monotonic()
        second = run_cli(*score_args(model, data, out)[2:])
        took = time.monotonic() - start
        still_running = first.poll() is None
    finally:
        stdout, stderr = first.communicate(timeout=600)
    assert second.returncode == 2, second.stderr[-3000:]
    assert f"pid {first.pid}" in second.stderr and "scoring output" in second.stderr
    assert still_running, "the first run ended before the second was refused: no race tested"
    assert took < 20, took  # refused before TensorFlow is imported
    assert first.returncode == 0, stderr[-3000:]
    assert "rows read 200000 = scored 200000 + quarantined 0" in stdout
    got, want = predictions(out), predictions(reference)
    assert len(got) == 200_000
    assert_same_rows({k: got[k] for k in want}, want)


@pytest.mark.parametrize("when", ["while scoring", "at start-up"])
def test_a_run_killed_with_sigkill_is_restarted_by_the_same_command(bulk, tmp_path, when):
    model, data, reference = bulk
    out = str(tmp_path / "out")
    proc = subprocess.Popen(score_args(model, data, out), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pieces = os.path.join(out, ".staging", "pieces")
    deadline = time.monotonic() + 120
    while when == "while scoring" and not (os.path.isdir(pieces) and os.listdir(pieces)):
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    if when == "at start-up":
        while not os.path.exists(os.path.join(out, ".lock")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "_SUCCESS"))
    assert not os.path.exists(os.path.join(out, "predictions"))  # nothing half-published
    again = run_cli(*score_args(model, data, out)[2:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rows read 60000 = scored 60000 + quarantined 0" in again.stdout
    assert_same_rows(predictions(out), predictions(reference))
    assert not os.path.exists(os.path.join(out, ".staging"))


def test_a_run_that_dies_while_publishing_is_finished_by_the_next(first_push, tmp_path,
                                                                   monkeypatch):
    """Killed after its result was staged whole: the next run publishes it (outcome
    "resumed"), scoring nothing again; the output equals an uninterrupted run's."""
    from components import scorer
    from pipeline import api

    _, _, serving, _ = first_push
    model = os.path.join(serving, "textcnn")
    data = write_questions(tmp_path / "q.jsonl", 300)
    whole = api.score(model, [data], str(tmp_path / "whole"), beam_args=IN_MEMORY)
    moved = []
    real_move = scorer._move

    def dies_after_one(source, target):
        if moved:
            raise KeyboardInterrupt("killed while publishing")
        moved.append(target)
        real_move(source, target)

    monkeypatch.setattr(scorer, "_move", dies_after_one)
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        api.score(model, [data], out, beam_args=IN_MEMORY)
    assert not os.path.exists(os.path.join(out, "_SUCCESS")) and moved
    monkeypatch.setattr(scorer, "_move", real_move)
    resumed = api.score(model, [data], out, beam_args=IN_MEMORY)
    assert resumed.outcome == "resumed" and resumed.scored == 300
    assert_same_rows(predictions(out), predictions(whole.output))
    assert resumed.summary["resumed_from"] != resumed.run_id
    runs = {r.run_id: r for r in api.list_runs(whole.metadata_dir)}
    assert runs[resumed.run_id].status == "succeeded"
    assert runs[resumed.run_id].kind == "scoring"
    assert api.lineage(out).run_id == resumed.run_id

    # Killed after the summary was moved into the output, before the marker: the published
    # summary names the dead run; lineage finds the run that published the same request.
    again = str(tmp_path / "again")
    real_check = scorer._check_published

    def dies_before_the_marker(*args):
        raise KeyboardInterrupt("killed before the marker")

    monkeypatch.setattr(scorer, "_check_published", dies_before_the_marker)
    with pytest.raises(KeyboardInterrupt):
        api.score(model, [data], again, beam_args=IN_MEMORY)
    monkeypatch.setattr(scorer, "_check_published", real_check)
    finished = api.score(model, [data], again, beam_args=IN_MEMORY)
    assert finished.outcome == "resumed"
    assert_same_rows(predictions(again), predictions(whole.output))
    dead = finished.summary["run_id"]
    assert dead != finished.run_id and api.list_runs(whole.metadata_dir)[-2].status != "running"
    assert api.lineage(again).run_id == finished.run_id


def test_a_publication_cut_short_on_object_storage_loses_no_shard(first_push, tmp_path,
                                                                  monkeypatch):
    """Where a rename copies file by file (object storage), a publication killed after some
    shards were moved is finished by the next run without losing those shards."""
    from components import fileio
    from components.scorer import ScoreSettings
    from pipeline import api

    _, _, serving, _ = first_push
    model = os.path.join(serving, "textcnn")
    data = write_questions(tmp_path / "q.jsonl", 300)
    settings = ScoreSettings(rows_per_shard=50, formats=("jsonl", "csv"))
    monkeypatch.setattr(fileio, "rename_is_atomic", lambda path: False)
    whole = api.score(model, [data], str(tmp_path / "whole"), settings=settings,
                      beam_args=IN_MEMORY)
    out = str(tmp_path / "out")
    real_rename, moved = fileio.rename, []

    def dies_after_three(source, target, overwrite=False):
        if target.startswith(os.path.join(out, "predictions")):
            if len(moved) == 3:
                raise KeyboardInterrupt("killed while moving the shards")
            moved.append(target)
        real_rename(source, target, overwrite=overwrite)

    monkeypatch.setattr(fileio, "rename", dies_after_three)
    with pytest.raises(KeyboardInterrupt):
        api.score(model, [data], out, settings=settings, beam_args=IN_MEMORY)
    monkeypatch.setattr(fileio, "rename", real_rename)
    assert len(moved) == 3 and not os.path.exists(os.path.join(out, "_SUCCESS"))
    resumed = api.score(model, [data], out, settings=settings, beam_args=IN_MEMORY)
    assert resumed.outcome == "resumed" and resumed.shards == whole.shards == 6
    assert len(os.listdir(os.path.join(out, "predictions"))) == 12
    assert_same_rows(predictions(out), predictions(whole.output))


def test_the_same_request_from_another_directory_is_the_same_request(bulk, tmp_path):
    model, data, reference = bulk
    relative = subprocess.run(
        [sys.executable, os.path.join(REPO, "local_runner.py"), "score", "--model",
         os.path.relpath(model, os.path.dirname(data)), "--input", os.path.basename(data),
         "--output", os.path.relpath(reference, os.path.dirname(data)), "--format",
         "jsonl,parquet", *IN_MEMORY], cwd=os.path.dirname(data), capture_output=True,
        text=True, timeout=600)
    assert relative.returncode == 0 and "nothing to do" in relative.stdout, relative.stderr[-3000:]


def test_parquet_output_reads_back_with_the_rows_and_columns(bulk):
    import pyarrow.parquet as pq

    _, _, reference = bulk
    with open(os.path.join(reference, "summary.json")) as f:
        summary = json.load(f)
    [path] = glob.glob(os.path.join(reference, "predictions", "*.parquet"))
    table = pq.read_table(path)
    classes = summary["classes"]
    assert table.column_names == ["id", "label", "predicted_class"] + [
        f"p_{c}" for c in classes] + ["model_version"]
    assert table.num_rows == summary["scored"] == 60_000
    jsonl = predictions(reference)
    columns = table.to_pydict()
    for i in range(0, 60_000, 997):
        cls, p, label = jsonl[columns["id"][i]]
        assert (columns["predicted_class"][i], columns["label"][i]) == (cls, label)
        by_class = dict(zip(sorted(classes), p))
        np.testing.assert_allclose([columns[f"p_{c}"][i] for c in classes],
                                   [by_class[c] for c in classes], atol=1e-6)
    assert set(columns["model_version"]) == {summary["version"]}
    assert pq.ParquetFile(path).metadata.num_row_groups == 1  # 60k rows: one row group


def test_same_request_is_done_another_needs_overwrite_and_lineage_names_the_run(bulk, tmp_path):
    model, data, reference = bulk
    with open(os.path.join(reference, "summary.json")) as f:
        summary = json.load(f)
    same = run_cli(*score_args(model, data, reference)[2:])
    assert same.returncode == 0 and "nothing to do" in same.stdout, same.stderr[-3000:]
    with open(os.path.join(reference, "summary.json")) as f:
        assert json.load(f) == summary  # untouched

    lineage = run_cli("lineage", reference)
    assert lineage.returncode == 0, lineage.stderr[-3000:]
    text = lineage.stdout
    assert f"published by scoring run {summary['run_id']}" in text
    assert f"version {summary['version']} ({summary['model']})" in text
    assert "pushed by pipeline run " in text
    [(path, content)] = summary["inputs"]
    assert path == data and f"{data}  {content}" in text
    assert "read 60000 = scored 60000 + quarantined 0" in text

    runs = run_cli("runs", summary["metadata_dir"])  # the store of the root that pushed it
    assert runs.returncode == 0, runs.stderr[-2000:]
    line = next(x for x in runs.stdout.splitlines() if x.startswith(summary["run_id"]))
    assert "succeeded" in line and f"scored 60000 rows with version {summary['version']}" in line

    copy = str(tmp_path / "copy")
    shutil.copytree(reference, copy)
    before = predictions(copy)
    other = score_args(model, data, copy, "--rows-per-shard", "25000")[2:]
    refused = run_cli(*other)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    assert predictions(copy) == before and os.path.exists(os.path.join(copy, "_SUCCESS"))
    replaced = run_cli(*other, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    assert len(glob.glob(os.path.join(copy, "predictions", "*.parquet"))) == 3
    assert_same_rows(predictions(copy), before)
    with open(os.path.join(copy, "summary.json")) as f:
        assert json.load(f)["shards"] == 3


def test_what_an_output_directory_holds_decides_what_a_run_may_do(tmp_path):
    """A dead run's staging is removed; an older version's output (no marker) is replaced only
    with overwrite; files no scoring run wrote are never removed; a staged result of the same
    request is resumed, of another request dropped."""
    from components.scorer import (FRESH, RESUME, OutputExistsError, Request, prepare_output)

    def request(n):
        return Request("m", "1", f"fp{n}", (("in.jsonl", "sha"),), "s.pbtxt", "sha", {}, {})

    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    for name in ("summary.json", "LabelStats.pb", "counts.json"):
        (out / name).write_text("{}")
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        prepare_output(str(out), request(1), overwrite=False)
    assert prepare_output(str(out), request(1), overwrite=True) == FRESH

    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="choose another --output"):
        prepare_output(str(out), request(1), overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    os.remove(out / "notes.txt")

    staging = out / ".staging"
    staging.mkdir()
    (staging / "READY.json").write_text(json.dumps({"request": request(2).fingerprint,
                                                    "entries": []}))
    assert prepare_output(str(out), request(2), overwrite=False) == RESUME
    # A refused request removes nothing, a resumable staged result included.
    with pytest.raises(OutputExistsError):
        prepare_output(str(out), request(3), overwrite=False)
    assert prepare_output(str(out), request(2), overwrite=False) == RESUME
    assert prepare_output(str(out), request(3), overwrite=True) == FRESH
    assert not staging.exists()  # another request's staged result is dropped
    staging.mkdir()
    (staging / "READY.json").write_text("")  # cut short by a kill: as if absent
    assert prepare_output(str(out), request(2), overwrite=True) == FRESH
    assert prepare_output(str(tmp_path / "new"), request(1), overwrite=False) == FRESH
