"""Shared test helpers. Importing `components` first sets the legacy-Keras switch for TensorFlow."""
import json
import os
import subprocess
import sys

import components  # noqa: F401

import pytest
# The emulated object store (gs://) for the tests that need one; imported here, before any test
# module imports TensorFlow, so that TensorFlow's GCS stat cache is off in this process.
from objstore import gcs_bucket, gcs_store, object_store  # noqa: F401,E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IN_MEMORY = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]


# What `make run` and the CLI's defaults write into the repository (relative to the working
# directory run_cli uses): no test may add to them. Everything a test writes is under its tmp_path.
REPO_OUTPUTS = ("serving", "pipeline_root", "scored", "data")


def _repo_snapshot():
    """Top-level names in the repository, and every file under its default output directories."""
    skip = {".git", ".venv", ".pytest_cache", "__pycache__"}
    names = {n for n in os.listdir(REPO) if n not in skip and not n.endswith(".egg-info")}
    files = set()
    for name in REPO_OUTPUTS:
        for parent, _, children in os.walk(os.path.join(REPO, name)):
            files.update(os.path.join(parent, c) for c in children)
    return names, files


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_repository():
    """Fails the session if a test wrote into the repository (say, a `run` without
    --serving-dir that pushed into ./serving) instead of its temporary directory."""
    before = _repo_snapshot()
    yield
    after = _repo_snapshot()
    added = sorted((after[0] - before[0]) | (after[1] - before[1]))
    assert not added, f"tests wrote into the repository: {added[:10]}"


def run_cli(*args, timeout=600):
    """Runs `python local_runner.py ARGS` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, os.path.join(REPO, "local_runner.py"), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)


def read_split(examples_dir, split):
    """The tf.Examples of one split as sorted (id or text, label) pairs of str."""
    import tensorflow as tf

    from components import features

    pattern = os.path.join(examples_dir, features.split_dir_name(split), "*.gz")
    out = []
    for path in sorted(tf.io.gfile.glob(pattern)):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            ex = tf.train.Example.FromString(record.numpy())
            f = ex.features.feature
            out.append({k: f[k].bytes_list.value[0].decode() for k in f})
    return sorted(out, key=lambda d: json.dumps(d, sort_keys=True))


def write_examples(examples_dir, rows_by_split):
    """An ExampleGen-like artifact: Split-<s>/*.gz of tf.Examples from (text, label) rows."""
    import tensorflow as tf

    from components import features
    from components.readers import to_tf_example

    for split, rows in rows_by_split.items():
        split_dir = os.path.join(str(examples_dir), features.split_dir_name(split))
        os.makedirs(split_dir)
        with tf.io.TFRecordWriter(os.path.join(split_dir, "data.gz"), "GZIP") as w:
            for text, label in rows:
                w.write(to_tf_example({features.TEXT: text.encode(),
                                       features.LABEL: label.encode()}))


def only_dir(parent):
    names = [n for n in os.listdir(parent) if not n.startswith(".")]
    assert len(names) == 1, names
    return os.path.join(parent, names[0])


@pytest.fixture
def in_memory_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(IN_MEMORY)
