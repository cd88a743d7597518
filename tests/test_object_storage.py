"""End to end on an emulated object store: pipeline root, serving directory, inputs and scoring
output all on gs:// (tests/objstore.py), the ML Metadata store and the lock on a local disk."""
import json
import io
import os

from conftest import IN_MEMORY
from test_cli import TINY_TRAINER, trec_like


STAGES = ["ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Trainer",
          "Evaluator", "Pusher"]


def summaries(root):
    """The run summaries under a gs:// root, oldest first."""
    import tensorflow as tf

    out = []
    for path in sorted(tf.io.gfile.glob(f"{root}/runs/*/summary.json")):
        with tf.io.gfile.GFile(path) as f:
            out.append(json.load(f))
    return out


def gcs_cli(store, *args):
    import subprocess
    import sys

    from conftest import REPO

    return subprocess.run([sys.executable, os.path.join(REPO, "local_runner.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=store.env)


def test_pipeline_root_serving_dir_and_scoring_on_object_storage(gcs_bucket, tmp_path):
    import tensorflow as tf

    data = gcs_bucket.url("e2e", "in", "q.csv")
    content = "text,label,split\n" + "".join(f"{t},{l},{s}\n" for t, l, s in trec_like())
    with tf.io.gfile.GFile(data, "w") as f:
        f.write(content)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TRAINER)
    root, serving = gcs_bucket.url("e2e", "root"), gcs_bucket.url("e2e", "serving")
    metadata = str(tmp_path / "metadata")
    args = ["run", "--input", data, "--pipeline-root", root, "--serving-dir", serving,
            "--metadata-dir", metadata, "--config", str(config), *IN_MEMORY]

    # Without a local place for the metadata store, a remote root is a usage error.
    proc = gcs_cli(gcs_bucket, "run", "--input", data, "--pipeline-root", root, "--until",
                   "ExampleGen", *IN_MEMORY)
    assert proc.returncode == 2 and "--metadata-dir" in proc.stderr + proc.stdout

    proc = gcs_cli(gcs_bucket, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    objects = gcs_bucket.list_objects("e2e/")
    [version] = [o.split("/")[3] for o in objects
                 if o.startswith("e2e/serving/textcnn/") and o.endswith("/saved_model.pb")]
    for stage in ("ExampleGen", "StatisticsGen", "Transform", "Trainer", "Evaluator", "Pusher"):
        assert any(o.startswith(f"e2e/root/{stage}/") and o.endswith("/_PUBLISHED")
                   for o in objects), stage
    assert not any("/.tmp-" in o for o in objects)
    assert os.path.exists(os.path.join(metadata, "metadata.sqlite"))
    assert not os.path.exists("gs:")  # nothing written to a local directory named like a URL

    [first] = summaries(root)
    assert {s["name"]: s["status"] for s in first["stages"]} == {s: "ok" for s in STAGES}

    # The same command again: every stage reused from the first run, nothing new pushed.
    proc = gcs_cli(gcs_bucket, *args)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    second = summaries(root)[-1]
    assert second["run_id"] != first["run_id"] and second["nothing_new"]
    assert {s["name"]: (s["status"], s.get("reused_from")) for s in second["stages"]} == {
        s: ("reused", first["run_id"]) for s in STAGES}
    assert [o for o in gcs_bucket.list_objects("e2e/serving/") if o.endswith("saved_model.pb")
            ] == [f"e2e/serving/textcnn/{version}/saved_model.pb"]

    scored = gcs_bucket.url("e2e", "scored")
    score = ("score", "--model", f"{serving}/textcnn", "--input", data, "--output", scored,
             "--format", "jsonl,parquet", "--metadata-dir", metadata, *IN_MEMORY)
    proc = gcs_cli(gcs_bucket, *score)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with tf.io.gfile.GFile(f"{scored}/summary.json") as f:
        summary = json.load(f)
    assert summary["read"] == summary["scored"] == len(trec_like())
    # Published with its marker last; nothing staged is left in the bucket.
    assert tf.io.gfile.exists(f"{scored}/_SUCCESS")
    assert not [o for o in gcs_bucket.list_objects("e2e/scored/") if "/.staging/" in o]
    rows = [json.loads(line) for path in tf.io.gfile.glob(f"{scored}/predictions/*.jsonl")
            for line in tf.io.gfile.GFile(path) if line.strip()]
    assert len(rows) == len(trec_like())
    import pyarrow.parquet as pq

    [parquet] = tf.io.gfile.glob(f"{scored}/predictions/*.parquet")
    with tf.io.gfile.GFile(parquet, "rb") as f:
        table = pq.read_table(io.BytesIO(f.read()))
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    # The output's lock lives beside the store (object storage has none); the same request
    # again finds its result published.
    assert os.listdir(os.path.join(metadata, "scoring-locks"))
    again = gcs_cli(gcs_bucket, *score)
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stderr[-3000:]

    proc = gcs_cli(gcs_bucket, "lineage", f"{serving}/textcnn/{version}", "--pipeline-root", root,
                   "--metadata-dir", metadata)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The input is known by the store's own checksum, not by reading it in the driver.
    assert f"{data}  gs crc32c " in proc.stdout and f" size {len(content)}" in proc.stdout
