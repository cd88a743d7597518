"""The emulated GCS of tests/objstore.py, used by TensorFlow (tf.io.gfile, tf.data, SavedModel) and
by Apache Beam (FileSystems, DirectRunner pipelines), in this process and in subprocesses.

Each test works under its own prefix gs://test-bucket/<test name>/. Besides proving that the
harness works, the tests pin down how GCS differs from a local disk for both libraries (directory
rename, "directories" that are only prefixes, listdir names), so a change in either library shows.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import objstore

import apache_beam as beam  # noqa: E402
import tensorflow as tf  # noqa: E402
from apache_beam.io.filesystem import BeamIOError  # noqa: E402
from apache_beam.io.filesystems import FileSystems  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions  # noqa: E402

gfile = tf.io.gfile


@pytest.fixture
def root(gcs_bucket, request):  # noqa: F811
    """gs://test-bucket/<test name>: a prefix of this test's own."""
    return gcs_bucket.url(request.node.name.replace("[", "-").replace("]", ""))


def names(store, root):
    """Object names under `root`, relative to it, from the emulator itself."""
    prefix = root.split("/", 3)[3] + "/"
    return [n[len(prefix):] for n in store.list_objects(prefix)]


def write_tf(path, text):
    with gfile.GFile(path, "w") as f:
        f.write(text)


def read_tf(path):
    with gfile.GFile(path) as f:
        return f.read()


def write_beam(path, data: bytes):
    with FileSystems.create(path) as f:
        f.write(data)


def read_beam(path) -> bytes:
    with FileSystems.open(path) as f:
        return f.read()


# ----------------------------------------------------------------------------- TensorFlow


def test_harness_started_quickly(gcs_bucket):  # noqa: F811
    assert gcs_bucket.start_seconds < 15, gcs_bucket.start_seconds
    print(f"object store started in {gcs_bucket.start_seconds:.2f}s")


def test_tf_gfile_write_read_exists_listdir_glob(gcs_bucket, root):  # noqa: F811
    write_tf(f"{root}/a.txt", "hello")
    write_tf(f"{root}/d/b.txt", "bee")
    write_tf(f"{root}/d/sub/c.txt", "sea")
    assert names(gcs_bucket, root) == ["a.txt", "d/b.txt", "d/sub/c.txt"]

    assert read_tf(f"{root}/a.txt") == "hello"
    assert gfile.stat(f"{root}/a.txt").length == 5
    assert gfile.exists(f"{root}/a.txt")
    assert not gfile.exists(f"{root}/missing.txt")
    # A "directory" is a prefix of objects: exists/isdir say yes, with or without the slash.
    assert gfile.exists(f"{root}/d") and gfile.exists(f"{root}/d/")
    assert gfile.isdir(f"{root}/d") and not gfile.isdir(f"{root}/a.txt")
    assert gfile.exists(f"gs://{gcs_bucket.bucket}")  # the bucket itself
    assert not gfile.exists("gs://no-such-bucket/x")
    # listdir names sub-directories WITH a trailing slash on GCS (a local disk gives "d").
    assert sorted(gfile.listdir(root)) == ["a.txt", "d/"]
    assert sorted(gfile.listdir(f"{root}/d/")) == ["b.txt", "sub/"]
    with pytest.raises(tf.errors.NotFoundError):
        gfile.listdir(f"{root}/missing")
    # glob: "*" stays within one level; a matched directory comes without the slash.
    assert sorted(gfile.glob(f"{root}/d/*")) == [f"{root}/d/b.txt", f"{root}/d/sub"]
    assert gfile.glob(f"{root}/*/*/*.txt") == [f"{root}/d/sub/c.txt"]
    walked = [(top.rstrip("/"), sorted(dirs), sorted(files)) for top, dirs, files in
              gfile.walk(f"{root}/d")]
    assert walked == [(f"{root}/d", ["sub/"], ["b.txt"]), (f"{root}/d/sub", [], ["c.txt"])]


def test_tf_gfile_makedirs_copy_rename_remove_rmtree(gcs_bucket, root):  # noqa: F811
    # makedirs writes an empty placeholder object per missing level: "<root>/", "m/", "m/n/".
    gfile.makedirs(f"{root}/m/n")
    assert names(gcs_bucket, root) == ["", "m/", "m/n/"]
    assert gfile.isdir(f"{root}/m/n") and gfile.listdir(f"{root}/m") == ["n/"]
    gfile.makedirs(f"{root}/m/n")  # again: fine

    write_tf(f"{root}/a.txt", "A")
    write_tf(f"{root}/b.txt", "B")
    gfile.copy(f"{root}/a.txt", f"{root}/c.txt")
    with pytest.raises(tf.errors.AlreadyExistsError):
        gfile.copy(f"{root}/a.txt", f"{root}/c.txt")
    gfile.rename(f"{root}/c.txt", f"{root}/d.txt")
    with pytest.raises(tf.errors.AlreadyExistsError):
        gfile.rename(f"{root}/a.txt", f"{root}/b.txt")
    gfile.rename(f"{root}/a.txt", f"{root}/b.txt", overwrite=True)
    assert read_tf(f"{root}/b.txt") == "A" and read_tf(f"{root}/d.txt") == "A"
    gfile.remove(f"{root}/d.txt")
    with pytest.raises(tf.errors.NotFoundError):
        gfile.remove(f"{root}/d.txt")
    assert names(gcs_bucket, root) == ["", "b.txt", "m/", "m/n/"]

    gfile.rmtree(f"{root}/m")
    assert names(gcs_bucket, root) == ["", "b.txt"]
    with pytest.raises(tf.errors.NotFoundError):
        gfile.rmtree(f"{root}/m")


def test_tf_directory_rename(gcs_bucket, root):  # noqa: F811
    """TensorFlow renames a GCS "directory" object by object (copy + delete each; not atomic)."""
    for n in ("src/a.txt", "src/deep/b.txt", "other/x.txt"):
        write_tf(f"{root}/{n}", n)
    gfile.rename(f"{root}/src", f"{root}/dst")
    assert names(gcs_bucket, root) == ["dst/a.txt", "dst/deep/b.txt", "other/x.txt"]
    assert read_tf(f"{root}/dst/deep/b.txt") == "src/deep/b.txt"

    # Trailing slashes are fine too.
    gfile.rename(f"{root}/dst/", f"{root}/dst2/")
    assert names(gcs_bucket, root) == ["dst2/a.txt", "dst2/deep/b.txt", "other/x.txt"]

    # Onto an existing directory: refused unless overwrite=True, which MERGES the two.
    with pytest.raises(tf.errors.AlreadyExistsError):
        gfile.rename(f"{root}/dst2", f"{root}/other")
    gfile.rename(f"{root}/dst2", f"{root}/other", overwrite=True)
    assert names(gcs_bucket, root) == ["other/a.txt", "other/deep/b.txt", "other/x.txt"]

    # A placeholder-only (empty) directory made by makedirs renames too.
    gfile.makedirs(f"{root}/empty")
    gfile.rename(f"{root}/empty", f"{root}/empty2")
    assert "empty2/" in names(gcs_bucket, root) and "empty/" not in names(gcs_bucket, root)


@pytest.mark.parametrize("compression", ["", "GZIP"])
def test_tf_tfrecord_roundtrip(root, compression):
    path = f"{root}/data.tfrecord" + (".gz" if compression else "")
    records = [f"record-{i}".encode() * (i + 1) for i in range(50)]
    with tf.io.TFRecordWriter(path, compression) as w:
        for r in records:
            w.write(r)
    ds = tf.data.TFRecordDataset(tf.io.gfile.glob(f"{root}/data.*"), compression_type=compression)
    assert [t.numpy() for t in ds] == records


def test_tf_saved_model_save_load(gcs_bucket, root):  # noqa: F811
    class Scale(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(3.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * self.w

    export = f"{root}/model/1"
    tf.saved_model.save(Scale(), export)
    objects = names(gcs_bucket, root)
    assert "model/1/saved_model.pb" in objects, objects
    assert any(n.startswith("model/1/variables/variables.data") for n in objects), objects
    loaded = tf.saved_model.load(export)
    assert loaded(tf.constant([1.0, 2.0])).numpy().tolist() == [3.0, 6.0]
    assert loaded.w.numpy() == 3.0


# ----------------------------------------------------------------------------- Beam FileSystems


def test_beam_filesystems(gcs_bucket, root):  # noqa: F811
    for n in ("a.txt", "d/b.txt", "d/sub/c.txt"):
        write_beam(f"{root}/{n}", n.encode())
    assert read_beam(f"{root}/d/b.txt") == b"d/b.txt"

    assert FileSystems.exists(f"{root}/a.txt")
    assert not FileSystems.exists(f"{root}/missing")
    # Beam's exists() asks for one object: a prefix is not there (TensorFlow says it is).
    assert not FileSystems.exists(f"{root}/d") and not FileSystems.exists(f"{root}/d/")

    def match(pattern):
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)

    assert match(f"{root}/*") == [f"{root}/a.txt"]  # "*" does not cross "/"
    assert match(f"{root}/d/") == [f"{root}/d/b.txt"]  # "dir/" means "dir/*"
    assert match(f"{root}/**") == [f"{root}/a.txt", f"{root}/d/b.txt", f"{root}/d/sub/c.txt"]
    assert match(f"{root}/nothing*") == []
    (meta,) = FileSystems.match([f"{root}/a.txt"])[0].metadata_list
    assert meta.size_in_bytes == len(b"a.txt")

    # rename is per object (copy then delete, in batch requests).
    FileSystems.rename([f"{root}/a.txt", f"{root}/d/b.txt"], [f"{root}/a2.txt", f"{root}/e/b.txt"])
    assert names(gcs_bucket, root) == ["a2.txt", "d/sub/c.txt", "e/b.txt"]
    with pytest.raises(BeamIOError):  # a missing source
        FileSystems.rename([f"{root}/missing"], [f"{root}/missing2"])
    # Beam cannot rename a directory on GCS: it looks for an object of that name (404).
    with pytest.raises(BeamIOError):
        FileSystems.rename([f"{root}/d/"], [f"{root}/d2/"])
    # ... but copy of "dir/" copies the whole prefix.
    FileSystems.copy([f"{root}/d/"], [f"{root}/copy/"])
    assert names(gcs_bucket, root) == ["a2.txt", "copy/sub/c.txt", "d/sub/c.txt", "e/b.txt"]

    FileSystems.delete([f"{root}/a2.txt"])
    FileSystems.delete([f"{root}/missing"])  # silently nothing
    # delete of "dir/" deletes what "dir/*" matches: one level only.
    write_beam(f"{root}/d/top.txt", b"t")
    FileSystems.delete([f"{root}/d/"])
    assert names(gcs_bucket, root) == ["copy/sub/c.txt", "d/sub/c.txt", "e/b.txt"]
    FileSystems.mkdirs(f"{root}/newdir")  # a no-op on GCS
    assert "newdir/" not in names(gcs_bucket, root)


def test_tf_writes_beam_reads_and_back(root):
    write_tf(f"{root}/from_tf.txt", "written by TensorFlow")
    assert read_beam(f"{root}/from_tf.txt") == b"written by TensorFlow"
    assert FileSystems.exists(f"{root}/from_tf.txt")

    write_beam(f"{root}/from_beam.bin", bytes(range(256)) * 100)
    with gfile.GFile(f"{root}/from_beam.bin", "rb") as f:
        assert f.read() == bytes(range(256)) * 100
    assert sorted(gfile.listdir(root)) == ["from_beam.bin", "from_tf.txt"]

    # Beam renames and deletes what TensorFlow wrote; TensorFlow sees it.
    FileSystems.rename([f"{root}/from_tf.txt"], [f"{root}/moved.txt"])
    assert read_tf(f"{root}/moved.txt") == "written by TensorFlow"
    FileSystems.delete([f"{root}/moved.txt"])
    assert sorted(gfile.listdir(root)) == ["from_beam.bin"]


# ----------------------------------------------------------------------------- DirectRunner


@pytest.mark.parametrize("mode", ["in_memory", "multi_processing"])
def test_direct_runner_pipeline(gcs_bucket, root, mode):  # noqa: F811
    """TF writes TFRecords; a pipeline reads them (ReadFromTFRecord) and writes text shards
    (WriteToText: temp dir + rename on GCS); a second one reads the text back; TF reads it too."""
    n = 200
    for shard in range(3):
        with tf.io.TFRecordWriter(f"{root}/in/data-{shard}.tfrecord.gz", "GZIP") as w:
            for i in range(shard, n, 3):
                w.write(f"row-{i}".encode())

    options = PipelineOptions([f"--direct_running_mode={mode}", "--direct_num_workers=1",
                               "--runner=DirectRunner"])
    with beam.Pipeline(options=options) as p:
        _ = (p
             | beam.io.ReadFromTFRecord(f"{root}/in/*.tfrecord.gz")
             | beam.Map(bytes.decode)  # no lambdas: multi_processing workers cannot
             | beam.Map(str.upper)     # import this test module to unpickle them
             | beam.io.WriteToText(f"{root}/out/part", file_name_suffix=".txt", num_shards=2))
    outputs = sorted(gfile.glob(f"{root}/out/part-*.txt"))
    assert [o.rsplit("/", 1)[1] for o in outputs] == ["part-00000-of-00002.txt",
                                                      "part-00001-of-00002.txt"]
    # Beam's temp directory is gone.
    assert [x for x in names(gcs_bucket, root) if not x.startswith(("in/", "out/part-"))] == []
    tf_lines = sorted(line for o in outputs for line in read_tf(o).splitlines())
    assert tf_lines == sorted(f"ROW-{i}" for i in range(n))

    with beam.Pipeline(options=options) as p:
        counted = (p
                   | beam.io.ReadFromText(f"{root}/out/part-*")
                   | beam.combiners.Count.Globally())
        _ = counted | beam.io.WriteToText(f"{root}/count", shard_name_template="")
    assert read_tf(f"{root}/count").strip() == str(n)


# ----------------------------------------------------------------------------- subprocesses


CHILD = textwrap.dedent("""
    import json, sys, time
    import tensorflow as tf
    from apache_beam.io.filesystems import FileSystems
    root = sys.argv[1]
    t = time.monotonic()
    out = {"parent_wrote": tf.io.gfile.GFile(root + "/parent.txt").read()}
    out["first_read_s"] = time.monotonic() - t
    with FileSystems.create(root + "/child_beam.txt") as f:
        f.write(b"child")
    # TF's stat cache is off (GCS_STAT_CACHE_MAX_AGE=0 in the env), so TF sees Beam's delete.
    assert tf.io.gfile.exists(root + "/child_beam.txt")
    FileSystems.delete([root + "/child_beam.txt"])
    out["tf_exists_after_beam_delete"] = tf.io.gfile.exists(root + "/child_beam.txt")
    with tf.io.gfile.GFile(root + "/child_tf.txt", "w") as f:
        f.write("child")
    print(json.dumps(out))
""")


def test_subprocess_uses_env(gcs_bucket, root):  # noqa: F811
    write_tf(f"{root}/parent.txt", "parent")
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, root], env=gcs_bucket.env,
                          capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["parent_wrote"] == "parent"
    assert out["tf_exists_after_beam_delete"] is False
    assert read_tf(f"{root}/child_tf.txt") == "child"
    assert elapsed < 60, elapsed  # no 21 s credential retries in Beam
    print(f"child process took {elapsed:.1f}s (TF + Beam imports included); "
          f"its first gs:// read {out['first_read_s']:.2f}s")


# ----------------------------------------------------------------------------- lifecycle


def _children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


@pytest.fixture
def fake_gcs_binary():
    from needs import missing

    binary, why = objstore.locate_fake_gcs_server()
    if binary is None:
        missing(why)
    return binary


def test_stop_leaves_no_process_or_files(fake_gcs_binary):
    store = objstore.start_object_store("other-bucket")
    pids = [store.process.pid, *_children(store.process.pid)]
    assert len(pids) == 2  # the proxy and fake-gcs-server under it
    store.stop()
    assert _wait_gone(pids) == []
    assert not os.path.exists(store.workdir)


def test_killed_parent_leaves_no_orphans(fake_gcs_binary):
    """If pytest itself is killed (no teardown), the emulator goes too."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {os.path.dirname(os.path.abspath(objstore.__file__))!r})
        import objstore
        s = objstore.start_object_store()
        print(s.process.pid, s.workdir, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pid, workdir = parent.stdout.readline().split()
        pids = [int(pid), *_children(int(pid))]
        assert len(pids) == 2
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _wait_gone(pids) == []
        # The child cleans the temp dir up too when it notices its parent is gone.
        deadline = time.monotonic() + 10
        while os.path.exists(workdir) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(workdir)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
