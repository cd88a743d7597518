"""Determinism: the same records give the same Transform output bytes and the same trained
weights, whatever order Beam reads, processes or writes them in."""
import hashlib
import json
import os
import random

import components  # noqa: F401  (legacy Keras before TensorFlow)
import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from components import canonical, features
from components import transform as tr
from components.errors import UserInputError
from components.readers import COUNTS_FILE, to_tf_example
from components.model import ModelSettings
from components.trainer import INTERLEAVE_CYCLE, TrainerSettings, record_dataset, run_trainer
from conftest import IN_MEMORY

MULTI_PROCESS = ["--direct_running_mode=multi_processing", "--direct_num_workers=2",
                 "--beam_plugin=components.worker_setup"]
CLASSES = ["NUM", "HUM", "LOC"]
TEMPLATES = {"NUM": "how many {} are there ?", "HUM": "who is the {} ?",
             "LOC": "where is the {} ?"}
WORDS = ["moon", "river", "king", "city", "ocean", "author", "bridge", "planet"]


def read_records(path):
    return [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


def files_under(root):
    """{relative path: bytes} of every file under `root`, hidden ones included."""
    out = {}
    for parent, _, names in os.walk(root):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def write_canonical(records, prefix, num_shards):
    with beam.Pipeline(options=PipelineOptions(IN_MEMORY)) as p:
        _ = (p | beam.Create(records, reshuffle=False)
             | canonical.WriteSortedTFRecords(prefix, num_shards))


def test_canonical_writer_bytes_do_not_depend_on_input_order(tmp_path):
    records = [f"record {i}".encode() for i in range(12)] + [b"record 3", b""]
    shuffled = list(reversed(records))
    random.Random(7).shuffle(shuffled)
    num_shards = 20  # more shards than distinct records: some are empty
    first, second = tmp_path / "first", tmp_path / "second"
    write_canonical(records, str(first / "part"), num_shards)
    # A leftover of a failed attempt in the temporary directory is removed as well.
    os.makedirs(second / ".part-tmp")
    (second / ".part-tmp" / "part-00000-of-00020.gz.dead").write_bytes(b"partial")
    write_canonical(shuffled, str(second / "part"), num_shards)

    a, b = files_under(first), files_under(second)
    assert a == b
    assert sorted(a) == [os.path.basename(p) for p in canonical.shard_paths("part", num_shards)]
    # Worked out apart from the writer: each shard holds exactly the records whose sha256 mod 20
    # is its number, in (sha256, bytes) order; every other shard is written empty.
    expected = {i: [] for i in range(num_shards)}
    for r in records:
        digest = hashlib.sha256(r).digest()
        expected[int.from_bytes(digest, "big") % num_shards].append((digest, r))
    for name, data in a.items():
        assert data[:2] == b"\x1f\x8b" and data[4:8] == b"\0\0\0\0"  # gzip, no mtime
        shard = int(name.split("-")[1])
        assert read_records(str(first / name)) == [r for _, r in sorted(expected[shard])], name
    empty = sum(not v for v in expected.values())
    assert 0 < empty < num_shards - 1  # the case is the one named: some shards empty, not all
    written = [r for name in sorted(a) for r in read_records(str(first / name))]
    assert sorted(written) == sorted(records)  # the duplicate and the empty record kept


def test_canonical_writer_validates_its_arguments():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="num_shards"):
            canonical.WriteSortedTFRecords("out/part", bad)
    with pytest.raises(ValueError, match="file_prefix"):
        canonical.WriteSortedTFRecords("out/", 1)
    assert canonical.num_shards_for(0, 10) == 1
    assert canonical.num_shards_for(10, 10) == 1
    assert canonical.num_shards_for(11, 10) == 2


def make_rows():
    rows = {"train": [], "eval": [], "test": []}
    for i in range(34):
        label = CLASSES[i % 3]
        split = "test" if i % 8 == 0 else "eval" if i % 8 == 1 else "train"
        rows[split].append((TEMPLATES[label].format(WORDS[(i // 3) % len(WORDS)]), label))
    return rows


def write_artifact(examples_dir, rows_by_split, files_per_split, reverse):
    """An ExampleGen-like artifact with counts.json: the same rows in a chosen order and layout."""
    counts = {}
    for split, rows in rows_by_split.items():
        rows = list(reversed(rows)) if reverse else rows
        split_dir = os.path.join(str(examples_dir), features.split_dir_name(split))
        os.makedirs(split_dir)
        for part in range(files_per_split):
            with tf.io.TFRecordWriter(os.path.join(split_dir, f"data-{part}.gz"), "GZIP") as w:
                for text, label in rows[part::files_per_split]:
                    w.write(to_tf_example({features.TEXT: text.encode(),
                                           features.LABEL: label.encode()}))
        counts[split] = len(rows)
    with open(os.path.join(str(examples_dir), COUNTS_FILE), "w") as f:
        json.dump({"splits": counts}, f)


SETTINGS = tr.TransformSettings(records_per_shard=10)


@pytest.fixture(scope="module")
def two_transforms(tmp_path_factory):
    """The same rows, differently laid out, transformed in-memory and by two worker processes."""
    tmp = tmp_path_factory.mktemp("determinism")
    rows = make_rows()
    outputs = []
    for name, files, reverse, args in (("single", 1, False, IN_MEMORY),
                                       ("multi", 3, True, MULTI_PROCESS)):
        examples = tmp / f"ExampleGen-{name}"
        write_artifact(examples, rows, files, reverse)
        out = str(tmp / f"Transform-{name}")
        tr.run_transform(str(examples), CLASSES, out, SETTINGS, PipelineOptions(args))
        outputs.append(out)
    return rows, outputs, tmp


def test_transform_output_bytes_do_not_depend_on_order_or_runner(two_transforms):
    rows, (single, multi), _ = two_transforms
    for split in ("train", "eval", "test"):
        split_dir = features.split_dir_name(split)
        a, b = files_under(os.path.join(single, split_dir)), files_under(
            os.path.join(multi, split_dir))
        assert a == b
        assert not [n for n in a if n.startswith(".")]  # no temporary files left
        expected = max(1, -(-len(rows[split]) // SETTINGS.records_per_shard))
        names = sorted(n for n in a if n.startswith(tr.TRANSFORMED_PREFIX))
        assert names == [os.path.basename(p) for p in canonical.shard_paths(
            tr.TRANSFORMED_PREFIX, expected)]
        assert sorted(tf.io.gfile.glob(tr.transformed_data_pattern(single, split))) == [
            os.path.join(single, split_dir, n) for n in names]
        assert sum(len(read_records(os.path.join(single, split_dir, n))) for n in names) == len(
            rows[split])
    vocab = os.path.join("transform_fn", "assets", tr.VOCAB_NAME)
    with open(os.path.join(single, vocab), "rb") as f, open(os.path.join(multi, vocab), "rb") as g:
        assert f.read() == g.read()
    with open(os.path.join(single, tr.TRANSFORM_INFO_FILE)) as f, open(
            os.path.join(multi, tr.TRANSFORM_INFO_FILE)) as g:
        assert f.read() == g.read()


def test_shard_count_comes_from_counts_json(tmp_path):
    with open(tmp_path / COUNTS_FILE, "w") as f:
        json.dump({"splits": {"train": 25}}, f)
    assert tr.transformed_num_shards(str(tmp_path), "train", SETTINGS) == 3
    assert tr.transformed_num_shards(str(tmp_path), "eval", SETTINGS) == 1  # not counted
    assert tr.transformed_num_shards(str(tmp_path / "none"), "train", SETTINGS) == 1
    for bad in (0, True, 2.5):
        with pytest.raises(UserInputError, match="records_per_shard"):
            tr.TransformSettings(records_per_shard=bad)


def write_parts(directory, order):
    """Files part-0..5.gz, part-i holding records "i:0".."i:i", created in `order`."""
    os.makedirs(directory)
    for i in order:
        with tf.io.TFRecordWriter(os.path.join(directory, f"part-{i}.gz"), "GZIP") as w:
            for j in range(i + 1):
                w.write(f"{i}:{j}".encode())
    return os.path.join(directory, "part-*")


def test_record_order_depends_only_on_file_names_and_contents(tmp_path):
    pattern = write_parts(tmp_path / "a", range(6))
    records = [r.numpy() for r in record_dataset(pattern)]
    # Sorted files, INTERLEAVE_CYCLE at a time, one record from each in turn.
    assert INTERLEAVE_CYCLE == 4
    assert records[:4] == [b"0:0", b"1:0", b"2:0", b"3:0"]
    assert sorted(records) == sorted(f"{i}:{j}".encode() for i in range(6) for j in range(i + 1))
    assert [r.numpy() for r in record_dataset(write_parts(tmp_path / "b", [3, 5, 0, 4, 1, 2]))
            ] == records
    for threads in (1, 8):
        options = tf.data.Options()
        options.threading.private_threadpool_size = threads
        assert [r.numpy() for r in record_dataset(pattern).with_options(options)] == records
    with pytest.raises(FileNotFoundError):
        record_dataset(str(tmp_path / "nothing-*"))


TINY = TrainerSettings(model=ModelSettings(embedding_dim=4, num_filters=2), epochs=2,
                       batch_size=8, early_stopping_patience=0)


def test_same_records_train_the_same_weights(two_transforms):
    _, (single, multi), tmp = two_transforms
    weights = []
    for name, transform_dir in (("single", single), ("multi", multi)):
        result = run_trainer(transform_dir, str(tmp / f"Trainer-{name}"), TINY)
        reader = tf.train.load_checkpoint(os.path.join(result["model"], "variables",
                                                       "variables"))
        weights.append({key: reader.get_tensor(key)
                        for key in reader.get_variable_to_shape_map()
                        if "VARIABLE_VALUE" in key})
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key], err_msg=key)
