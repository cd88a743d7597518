"""Evaluator, Pusher and bulk scoring, end to end through local_runner.py."""
import glob
import json
import os
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


@pytest.fixture(scope="module")
def first_push(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("push")
    # Every 7th question is a test question: all six classes are in Split-test (3 each).
    data = write_csv(tmp / "q.csv", [(text, label, "test" if i % 7 == 0 else "")
                                     for i, (text, label, _) in enumerate(trec_like(120))])
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

    again = run_pipeline(tmp, data, serving, NORMAL, "v2")
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
    assert csv_lines[0].startswith("id,predicted_class,p_DESC") and len(csv_lines) == 4


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
    os.makedirs(os.path.join(base, str(int(time.time()) + 1000)))  # a version from the future
    pushed = [pusher.push(model, {}, settings)["version"] for _ in range(3)]
    assert pushed == sorted(pushed) and len(set(pushed)) == 3
    assert pushed[0] > int(time.time()) + 1000
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
    assert not glob.glob(str(tmp_path / "blocked" / "predictions" / "*"))

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


def test_shard_plan_follows_the_data_and_fills_every_shard():
    from components.scorer import ScoreSettings, plan_shards

    assert plan_shards([], 10) == (1, [])  # nothing to score: one (empty) shard all the same
    for total, rows_per_shard in ((25, 10), (500, 1_000_000), (10, 10), (11, 10), (7, 1),
                                  (1000, 3), (999_999, 1000), (100, 2)):
        chunk_rows = ScoreSettings(rows_per_shard=rows_per_shard).chunk_rows
        # Chunks as workers leave them: full ones, and a short one at the end of a bundle.
        sizes, left = [], total
        while left:
            sizes.append(min(left, chunk_rows if len(sizes) % 3 else max(1, chunk_rows // 2)))
            left -= sizes[-1]
        chunks = [(f"c{i:06d}", n) for i, n in enumerate(sizes)]
        num_shards, plan = plan_shards(chunks, rows_per_shard)
        assert num_shards == max(1, -(-total // rows_per_shard)), (total, rows_per_shard)
        assert sorted(path for path, _ in plan) == [path for path, _ in chunks]
        assert {shard for _, shard in plan} == set(range(num_shards)), (total, rows_per_shard)
    assert ScoreSettings().rows_per_shard == 1_000_000
    with pytest.raises(Exception, match="rows_per_shard"):
        ScoreSettings(rows_per_shard=0)


def test_a_shard_in_several_pieces_is_published_whole(tmp_path):
    from components.scorer import _publish_shard

    pieces = []
    for i, lines in enumerate((["a", "b"], ["c"], [])):
        path = tmp_path / f"piece{i}.csv"
        path.write_text("".join(f"{line}\n" for line in ["id"] + lines))
        pieces.append((str(path), len(lines)))
    out = tmp_path / "out"
    assert _publish_shard((1, pieces + [None]), str(out), "p", ".csv", 3, "id") == 3
    assert (out / "p-00001-of-00003.csv").read_text() == "id\na\nb\nc\n"
    assert not any(os.path.exists(p) for p, _ in pieces)
    # A shard without rows is written too (with the header alone).
    assert _publish_shard((2, [None]), str(out), "p", ".csv", 3, "id") == 0
    assert (out / "p-00002-of-00003.csv").read_text() == "id\n"


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
                        ScoreSettings(rows_per_shard=10, write_csv=True),
                        beam_options(beam_args))
    assert summary["read"] == 27 and summary["scored"] == 25 and summary["shards"] == 3
    for suffix in ("jsonl", "csv"):
        paths = sorted(glob.glob(str(out / "predictions" / f"*.{suffix}")))
        assert [os.path.basename(p) for p in paths] == [
            f"predictions-0000{i}-of-00003.{suffix}" for i in range(3)]
        shards = [open(p).read().splitlines() for p in paths]
        if suffix == "csv":
            assert all(lines[0].startswith("id,predicted_class,p_DESC") for lines in shards)
            shards = [[line.split(",")[0] for line in lines[1:]] for lines in shards]
        else:
            shards = [[json.loads(line)["id"] for line in lines] for lines in shards]
        assert all(shards), shards  # every shard has rows
        assert sorted(sum(shards, [])) == sorted(ids)  # every row once
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no intermediates left


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
