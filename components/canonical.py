"""Canonical TFRecord output: the same records give the same files, byte for byte.

Beam writes records in the order its workers happen to process them, which depends on the
runner, the number of workers and the input's layout. Stages whose outputs are reused by
content must not depend on that, so `WriteSortedTFRecords` places every record by its content
alone: record r goes to shard sha256(r) mod num_shards, and each shard lists its records sorted
by (sha256, bytes). Every shard file is written, empty or not, so the set of names depends only
on num_shards. Shards are written with `tf.io.TFRecordWriter` (gzip without a timestamp in its
header, gfile paths incl. object storage), each to a temporary name first and then renamed, so
that a retried bundle never leaves a partial file behind.
"""
from __future__ import annotations

import hashlib
import math
import os
import uuid
from typing import Iterable, List, Tuple

import apache_beam as beam

from components import fileio

_EMPTY = None  # the placeholder each shard gets, so that empty shards are written too


def shard_path(file_prefix: str, shard: int, num_shards: int, suffix: str = ".gz") -> str:
    """`<prefix>-SSSSS-of-NNNNN<suffix>`, the name Beam's file sinks use by default."""
    return f"{file_prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"


def shard_paths(file_prefix: str, num_shards: int, suffix: str = ".gz") -> List[str]:
    return [shard_path(file_prefix, i, num_shards, suffix) for i in range(num_shards)]


def record_key(record: bytes, num_shards: int) -> Tuple[int, bytes]:
    """(shard, sha256 digest) of a serialized record: the shard is the digest mod num_shards."""
    digest = hashlib.sha256(record).digest()
    return int.from_bytes(digest, "big") % num_shards, digest


def num_shards_for(records: int, records_per_shard: int) -> int:
    """Shards for `records` records, each holding about `records_per_shard` (at least one)."""
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1; got {records_per_shard}")
    return max(1, math.ceil(records / records_per_shard))


class WriteSortedTFRecords(beam.PTransform):
    """Serialized records -> `num_shards` gzip TFRecord files whose bytes depend only on the
    multiset of records.

    All records of one shard are grouped onto one worker and sorted in its memory: choose
    num_shards so that a shard fits (see `num_shards_for`). Outputs one element, the sorted
    list of the files written.
    """

    def __init__(self, file_prefix: str, num_shards: int, suffix: str = ".gz"):
        super().__init__()
        if not file_prefix or file_prefix.endswith(("/", os.sep)):
            raise ValueError(f"file_prefix must name files, not a directory: {file_prefix!r}")
        if isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1:
            raise ValueError(f"num_shards must be an integer >= 1; got {num_shards!r}")
        self.file_prefix = file_prefix
        self.num_shards = num_shards
        self.suffix = suffix

    def expand(self, records):
        directory, name = fileio.dirname(self.file_prefix), fileio.basename(self.file_prefix)
        temp_dir = fileio.join(directory, f".{name}-tmp")
        keyed = records | "KeyByShard" >> beam.Map(_keyed, self.num_shards)
        placeholders = (records.pipeline
                        | "Shards" >> beam.Create([(i, _EMPTY) for i in range(self.num_shards)]))
        return (
            (keyed, placeholders)
            | "Flatten" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShard" >> beam.ParDo(_WriteShardFn(self.file_prefix, self.num_shards,
                                                       self.suffix, temp_dir))
            | "CollectPaths" >> beam.combiners.ToList()
            | "Finalize" >> beam.Map(_finalize, shard_paths(self.file_prefix, self.num_shards,
                                                            self.suffix), temp_dir))


def _keyed(record: bytes, num_shards: int) -> Tuple[int, Tuple[bytes, bytes]]:
    shard, digest = record_key(record, num_shards)
    return shard, (digest, record)


class _WriteShardFn(beam.DoFn):
    """(shard, [(digest, record) or placeholder]) -> the shard's path, once written in place."""

    def __init__(self, file_prefix: str, num_shards: int, suffix: str, temp_dir: str):
        self._file_prefix = file_prefix
        self._num_shards = num_shards
        self._suffix = suffix
        self._temp_dir = temp_dir

    def process(self, element) -> Iterable[str]:
        import tensorflow as tf

        shard, values = element
        records = sorted(v for v in values if v is not _EMPTY)
        path = shard_path(self._file_prefix, shard, self._num_shards, self._suffix)
        fileio.makedirs(self._temp_dir)
        # A name of its own per attempt: a retried bundle never writes into another's file.
        temp = fileio.join(self._temp_dir, f"{fileio.basename(path)}.{uuid.uuid4().hex}")
        with tf.io.TFRecordWriter(temp, tf.io.TFRecordOptions(compression_type="GZIP")) as w:
            for _, record in records:
                w.write(record)
        # overwrite: an earlier attempt may have renamed its (identical) file before failing.
        fileio.rename(temp, path, overwrite=True)
        yield path


def _finalize(written: List[str], expected: List[str], temp_dir: str) -> List[str]:
    """Checks that every shard was written; removes the temporary files failed attempts left."""
    written = sorted(set(written))
    if written != expected:
        missing = sorted(set(expected) - set(written))
        raise RuntimeError(f"shards not written: {missing[:5]} ({len(missing)} in all)")
    fileio.rmtree(temp_dir)
    return written
