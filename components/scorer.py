"""Bulk offline scoring with a pushed model, in one Beam pass, published whole.

One pipeline: the rows are read with ExampleGen's readers (a label is optional), checked
(unusable rows are quarantined with a reason) and batched where they are read; a DoFn that
loads the model once per worker process (Beam's `shared.Shared`) calls its raw-string signature
on each batch and writes the batch's output lines straight into the shard files; TFDV
statistics of the same batches (one `GenerateStatistics` over every column and the derived
`text_length`) are computed beside. No tf.Example is made and no copy of the input is written.

Everything is written under `OUTPUT/.staging/` first. When the pipeline has finished, the
statistics are validated against the schema's SERVING environment and compared with the
model's training data (skew); blocking anomalies publish nothing. Otherwise the result is
published: each entry renamed into OUTPUT (the `predictions/` directory in one rename on a
local disk), and the marker `_SUCCESS` written last. A reader that waits for `_SUCCESS` (on
object storage) or reads `predictions/` (locally) never sees part of a result.

A run that dies at any point leaves `.staging/` behind: the same request later finishes its
publication when the staged result is complete (its `READY.json` written), or starts again.
A published output is replaced only on purpose (`overwrite`); the same request again is
already done. Rows read = rows scored + rows quarantined, or the job fails.

Scale: no step holds the rows in memory and nothing groups them; each worker writes its rows
into its own shard files of at most `rows_per_shard` rows (one file per format, rolled
together, so a shard's number holds the same rows in every format), which are numbered and
renamed when the job has finished.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import hashlib
import io
import json
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils import shared
from json.encoder import encode_basestring as _json_string  # json.dumps' own, ensure_ascii=False

from components import drift
from components import readers as rd
from components import export, features, fileio
from components.artifacts import content_id, fingerprint_dir
from components.beam_pipeline import beam_pipeline
from components.errors import BlockingAnomaliesError, UserInputError
from components.example_validator import describe_anomalies, is_blocking
from components.pusher import METADATA_FILE, served_version, versions
from components.schema_gen import (INFER, SCHEMA_FILE, check_schema_path, is_integer_class,
                                   load_schema)
from components.score_settings import FORMATS, ScoreSettings  # noqa: F401  (the API's)
from components.statistics_gen import (TEXT_LENGTH, TEXT_LENGTH_STATS_FILE,
                                       text_length_stats_options, token_count,
                                       write_split_statistics)

PREDICTIONS_DIR = "predictions"
PREDICTIONS_PREFIX = "predictions"  # shards: predictions-00000-of-00003.jsonl (Beam's naming)
SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
STATS_FILE = "FeatureStats.pb"
ANOMALIES_FILE = "anomalies.pbtxt"
SUMMARY_FILE = "summary.json"
SUCCESS_FILE = "_SUCCESS"  # written last: the output is published, whole
STAGING_DIR = ".staging"  # everything a run writes before it is published
READY_FILE = "READY.json"  # in the staging directory: the staged result is whole and valid
CLEARED_FILE = "CLEARED"  # in the staging directory: the earlier result's entries are removed
PIECES_DIR = "pieces"  # in the staging directory: the workers' shard files, before numbering
LINES_FILE = ".lines"  # in the staging directory: lines per piece of a cut input file
TALLY_FILE = "tally.json"  # in the staging directory: the job's counts, for the driver
# What a published output holds (besides the marker): what `overwrite` replaces.
PUBLISHED = (PREDICTIONS_DIR, rd.QUARANTINE_DIR, STATS_FILE, TEXT_LENGTH_STATS_FILE,
             ANOMALIES_FILE, drift.SKEW_ANOMALIES_FILE, SUMMARY_FILE)
# What a scoring output of an earlier version of this project held besides PUBLISHED (it wrote
# into the output directly, without a marker): `overwrite` replaces such an output too.
EARLIER_VERSIONS = ("LabelStats.pb", rd.COUNTS_FILE)
PARQUET_ROW_GROUP_ROWS = 65_536  # rows a Parquet shard buffers before writing a row group
SCORE_SPLIT = "score"

_QUARANTINE, _COUNTS, _FILES = "quarantine", "counts", "files"
# The scoring's own tallies, beside the reading's "read" and "quarantine:<reason>": rows scored
# (readers.summarize_counts' "split:<name>" key: its "written"), labelled, predicted right.
_SCORED, _LABELLED, _CORRECT = f"split:{SCORE_SPLIT}", "labelled", "correct"


class OutputExistsError(UserInputError):
    """The output holds a published result of another request, or files that are not a
    scoring output's (exit code 2)."""


def plan_reading(items: Sequence[Tuple[str, str]], settings: rd.ExampleGenSettings,
                 work_dir: str, beam_options
                 ) -> List[Tuple[Tuple[str, str], Optional[rd.Piece], int]]:
    """(item, piece, lines before the piece) to read: a big JSONL or TSV file in byte-range
    pieces (`rd.plan_pieces`), each read by its own worker, anything else whole.

    A row's line number (in its quarantine record, and its default id `source:line`) is the
    line in the file, so when a file is cut its pieces' lines are counted first, in parallel
    (a pass that counts lines without parsing them).
    """
    planned = [(item, rd.plan_pieces(rd.InputUnit(item[0], (item,)), settings)) for item in items]
    cut = [(item, piece) for item, pieces in planned if len(pieces) > 1 for piece in pieces]
    lines: Dict[Tuple[str, int], int] = {}
    if cut:
        lines_file = fileio.join(work_dir, LINES_FILE)
        with beam_pipeline(beam_options) as p:
            _ = (p
                 | "CreatePieces" >> beam.Create(cut)
                 | "Distribute" >> beam.Reshuffle()
                 | "CountLines" >> beam.MapTuple(
                     lambda item, piece: (item[0], piece.start, rd.count_lines(item, piece)))
                 | "Collect" >> beam.combiners.ToList()
                 | "ToJson" >> beam.Map(json.dumps)
                 | "Write" >> beam.io.WriteToText(lines_file, shard_name_template=""))
        lines = {(path, start): n for path, start, n in fileio.read_json(lines_file)}
        fileio.remove(lines_file)
    out = []
    for item, pieces in planned:
        before = 0
        for piece in pieces:
            out.append((item, piece, before))
            if piece is not None:
                before += lines[(item[0], piece.start)]
    return out


def _read_piece(planned: Tuple[Tuple[str, str], Optional[rd.Piece], int],
                settings: rd.ExampleGenSettings) -> Iterator[rd.RawRecord]:
    """The records of one entry of `plan_reading`, with the line numbers of the file."""
    item, piece, lines_before = planned
    for record in rd.read_records(item, settings, piece):
        if record.line:
            record.line += lines_before
        yield record

class _ReadBatches(beam.DoFn):
    """Planned pieces -> batches of usable rows, `(ids, texts, labels)` of at most
    `batch_size` rows (batched across the pieces of a bundle); quarantine records (tag
    _QUARANTINE); per piece its tallies {"read": n, "quarantine:<reason>": n} (tag _COUNTS).
    A row without an id gets `source:line`. Texts stay UTF-8 bytes (the signature's input)."""

    def __init__(self, settings: rd.ExampleGenSettings, batch_size: int):
        self._settings = settings
        self._batch_size = batch_size

    def start_bundle(self):
        self._ids, self._texts, self._labels = [], [], []

    def _take(self):
        batch = (self._ids, self._texts, self._labels)
        self._ids, self._texts, self._labels = [], [], []
        return batch

    def process(self, planned):
        counts: Dict[str, int] = collections.Counter()
        settings, size = self._settings, self._batch_size
        ids, texts, labels = self._ids, self._texts, self._labels
        for record in _read_piece(planned, settings):
            counts["read"] += 1
            values, problem = rd.check_values(record, settings)
            if problem:
                counts[f"quarantine:{problem[0]}"] += 1
                yield beam.pvalue.TaggedOutput(_QUARANTINE, rd.quarantine_record(record, *problem))
                continue
            row_id = values.get(features.ID)
            ids.append(row_id.decode("utf-8") if row_id else f"{record.source}:{record.line}")
            texts.append(values[features.TEXT])
            label = values.get(features.LABEL)
            labels.append(None if label is None else label.decode("utf-8"))
            if len(texts) >= size:
                yield self._take()
                ids, texts, labels = self._ids, self._texts, self._labels
        yield beam.pvalue.TaggedOutput(_COUNTS, dict(counts))

    def finish_bundle(self):
        if self._texts:
            yield GlobalWindows.windowed_value(self._take())


def _record_batch(batch):
    """A batch of rows -> an Arrow record batch as TFDV reads tf.Examples: `text`, `id`,
    `label` (null where a row has none) and the derived `text_length` (whitespace tokens)."""
    import numpy as np
    import pyarrow as pa

    ids, texts, labels = batch
    every = pa.array(np.arange(len(texts) + 1, dtype=np.int64))  # one value per row

    def one_value_each(values, value_type=pa.large_binary()):
        return pa.LargeListArray.from_arrays(every, pa.array(values, value_type))

    if all(x is not None for x in labels):
        label_column = one_value_each(labels)
    else:  # some rows without a label: null there
        label_column = pa.array([None if x is None else [x] for x in labels],
                                pa.large_list(pa.large_binary()))
    columns = [one_value_each(texts), one_value_each(ids), label_column,
               one_value_each([token_count([t]) for t in texts], pa.int64())]
    return pa.RecordBatch.from_arrays(columns, [features.TEXT, features.ID, features.LABEL,
                                                TEXT_LENGTH])


class _Model:
    """A loaded SavedModel and its raw-string signature (one per worker process)."""

    def __init__(self, model_dir: str):
        import components  # noqa: F401  (legacy Keras before TensorFlow, on the worker too)
        import tensorflow as tf

        self.loaded = tf.saved_model.load(model_dir)
        self.signature = self.loaded.signatures[export.SERVING_DEFAULT]


# ---------------------------------------------------------------------------------------------
# Output formats: one writer per shard file.


class _Columns:
    """What every output row holds, fixed for the run: the classes (in the model's order),
    the version, and how a class is written in JSON (`class_value`)."""

    def __init__(self, classes: Sequence[str], version: str):
        self.classes = list(classes)
        self.version = version
        self.value = class_value(classes)
        self.csv_header = ["id", "label", "predicted_class"] + [
            f"p_{c}" for c in classes] + ["model_version"]

    def arrow_schema(self):
        import pyarrow as pa

        return pa.schema([("id", pa.string()), ("label", pa.string()),
                          ("predicted_class", pa.string())]
                         + [(f"p_{c}", pa.float32()) for c in self.classes]
                         + [("model_version", pa.string())])


class _JsonlWriter:
    """One JSON object per row, as `json.dumps(row, ensure_ascii=False)` writes it: id,
    predicted_class, probabilities (by class), model_version, and label when the row has one.
    Lines are formatted from a template made once (json's own string escaping, floats as
    json writes them, `repr`): a dict and `json.dumps` per row cost more than the model."""

    def __init__(self, path: str, columns: _Columns):
        self._f = FileSystems.create(path, mime_type="application/jsonl",
                                     compression_type=CompressionTypes.UNCOMPRESSED)
        self._c = columns
        self._class_json = {c: json.dumps(columns.value(c), ensure_ascii=False)
                            for c in columns.classes}
        head = ('{"id": %s, "predicted_class": %s, "probabilities": {'
                + ", ".join(_json_string(c).replace("%", "%%") + ": %r"
                            for c in columns.classes)
                + "}, \"model_version\": " + _json_string(columns.version).replace("%", "%%"))
        self._unlabelled = head + "}"
        self._labelled = head + ', "label": %s}'
        self._label_json: Dict[str, str] = {}

    def _label(self, label: str) -> str:
        text = self._label_json.get(label)
        if text is None:
            text = self._label_json[label] = json.dumps(self._c.value(label), ensure_ascii=False)
        return text

    def write(self, ids, labels, probabilities, predicted) -> None:
        import numpy as np

        if not np.isfinite(probabilities).all():  # NaN/Infinity: as json writes them
            lines = [self._dumps(*row) for row in zip(ids, labels, probabilities.tolist(),
                                                      predicted)]
        else:
            string, classes = _json_string, self._class_json
            unlabelled, labelled = self._unlabelled, self._labelled
            lines = [unlabelled % (string(row_id), classes[cls], *p) if label is None else
                     labelled % (string(row_id), classes[cls], *p, self._label(label))
                     for row_id, label, p, cls in zip(ids, labels, probabilities.tolist(),
                                                      predicted)]
        lines.append("")
        self._f.write("\n".join(lines).encode("utf-8"))

    def _dumps(self, row_id, label, p, cls) -> str:
        c = self._c
        row = {"id": row_id, "predicted_class": c.value(cls),
               "probabilities": dict(zip(c.classes, p)), "model_version": c.version}
        if label is not None:
            row["label"] = c.value(label)
        return json.dumps(row, ensure_ascii=False)

    def close(self) -> None:
        self._f.close()


class _CsvWriter:
    def __init__(self, path: str, columns: _Columns):
        self._f = FileSystems.create(path, mime_type="text/csv",
                                     compression_type=CompressionTypes.UNCOMPRESSED)
        self._c = columns
        self._f.write((_csv_line(columns.csv_header) + "\n").encode("utf-8"))

    def write(self, ids, labels, probabilities, predicted) -> None:
        buf = io.StringIO()
        version = self._c.version
        csv.writer(buf, lineterminator="\n").writerows(
            [row_id, "" if label is None else label, cls, *p, version]
            for row_id, label, p, cls in zip(ids, labels, probabilities.tolist(), predicted))
        self._f.write(buf.getvalue().encode("utf-8"))

    def close(self) -> None:
        self._f.close()


class _ParquetWriter:
    """Rows buffered into row groups of PARQUET_ROW_GROUP_ROWS (a row group per batch would
    make readers slow)."""

    def __init__(self, path: str, columns: _Columns):
        import pyarrow.parquet as pq

        self._f = FileSystems.create(path, mime_type="application/vnd.apache.parquet",
                                     compression_type=CompressionTypes.UNCOMPRESSED)
        self._schema = columns.arrow_schema()
        self._writer = pq.ParquetWriter(self._f, self._schema)
        self._c = columns
        self._batches, self._rows = [], 0

    def write(self, ids, labels, probabilities, predicted) -> None:
        import pyarrow as pa

        n = len(ids)
        arrays = ([pa.array(ids, pa.string()), pa.array(labels, pa.string()),
                   pa.array(predicted, pa.string())]
                  + [pa.array(probabilities[:, i]) for i in range(len(self._c.classes))]
                  + [pa.array([self._c.version] * n, pa.string())])
        self._batches.append(pa.RecordBatch.from_arrays(arrays, schema=self._schema))
        self._rows += n
        if self._rows >= PARQUET_ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._batches:
            self._writer.write_table(pa.Table.from_batches(self._batches, self._schema),
                                     row_group_size=max(self._rows, 1))
        self._batches, self._rows = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._f.close()


_WRITERS = {"jsonl": _JsonlWriter, "csv": _CsvWriter, "parquet": _ParquetWriter}


class _ShardSet:
    """A worker's current shard: one file per format under `directory`, named by one random
    stem, holding the same rows; rolled to a new stem every `rows_per_shard` rows. `write` and
    `close` return the finished files as (stem, format, path, rows)."""

    def __init__(self, directory: str, formats: Sequence[str], rows_per_shard: int,
                 columns: _Columns):
        self._directory, self._formats = directory, formats
        self._rows_per_shard, self._columns = rows_per_shard, columns
        self._writers: Optional[Dict[str, Any]] = None

    def write(self, ids, labels, probabilities, predicted) -> List[Tuple[str, str, str, int]]:
        done, start, n = [], 0, len(ids)
        while start < n:
            if self._writers is None:
                self._stem = uuid.uuid4().hex
                self._paths = {f: fileio.join(self._directory, self._stem + SUFFIXES[f])
                               for f in self._formats}
                self._writers = {f: _WRITERS[f](self._paths[f], self._columns)
                                 for f in self._formats}
                self._rows = 0
            take = min(n - start, self._rows_per_shard - self._rows)
            end = start + take
            for writer in self._writers.values():
                writer.write(ids[start:end], labels[start:end], probabilities[start:end],
                             predicted[start:end])
            self._rows += take
            start = end
            if self._rows >= self._rows_per_shard:
                done += self.close()
        return done

    def close(self) -> List[Tuple[str, str, str, int]]:
        if self._writers is None:
            return []
        for writer in self._writers.values():
            writer.close()
        self._writers = None
        return [(self._stem, f, self._paths[f], self._rows) for f in self._formats]


class _ScoreBatches(beam.DoFn):
    """Batches of rows -> the model's predictions, written into this worker's shard files.

    Emits per finished file (stem, format, path, rows) (tag _FILES), and per bundle its tally
    {_SCORED: rows scored, _LABELLED: rows with a label, _CORRECT: rows whose label is the
    predicted class} (tag _COUNTS).
    Only the files of committed bundles are emitted: a retried bundle's leftovers are never
    published."""

    def __init__(self, model_dir: str, model_handle: shared.Shared, columns: _Columns,
                 formats: Sequence[str], pieces_dir: str, rows_per_shard: int):
        self._model_dir, self._handle, self._columns = model_dir, model_handle, columns
        self._formats, self._pieces_dir = tuple(formats), pieces_dir
        self._rows_per_shard = rows_per_shard

    def setup(self):
        self._model = self._handle.acquire(functools.partial(_Model, self._model_dir))

    def start_bundle(self):
        self._shards = _ShardSet(self._pieces_dir, self._formats, self._rows_per_shard,
                                 self._columns)
        self._tally = collections.Counter()

    def process(self, batch):
        import tensorflow as tf

        ids, texts, labels = batch
        out = self._model.signature(text=tf.constant(texts))
        probabilities = out[export.PROBABILITIES].numpy()
        predicted = [c.decode("utf-8") for c in out[export.PREDICTED_CLASS].numpy()]
        self._tally[_SCORED] += len(ids)
        for label, cls in zip(labels, predicted):
            if label is not None:
                self._tally[_LABELLED] += 1
                self._tally[_CORRECT] += label == cls
        for done in self._shards.write(ids, labels, probabilities, predicted):
            yield beam.pvalue.TaggedOutput(_FILES, done)

    def finish_bundle(self):
        for done in self._shards.close():
            yield beam.pvalue.TaggedOutput(_FILES, GlobalWindows.windowed_value(done))
        yield beam.pvalue.TaggedOutput(_COUNTS, GlobalWindows.windowed_value(dict(self._tally)))


def _sum_counts(dicts) -> Dict[str, int]:
    total: Dict[str, int] = collections.Counter()
    for d in dicts:
        total.update(d)
    return dict(total)


@beam.ptransform_fn
def ScoreRows(pipeline, items, reader: rd.ExampleGenSettings, model_dir: str,
              columns: _Columns, settings: ScoreSettings, staging: str):
    """The one pass: read, check, batch, score, write shards; statistics beside; the tallies
    (the reading's and the scoring's counts, each taken where it happens, summed together; the
    files written) in `staging/TALLY_FILE`."""
    import tensorflow_data_validation as tfdv

    # Create spreads the work items over the workers; their rows stream through the rest of
    # the stage in batches.
    read = (pipeline
            | "CreateWorkItems" >> beam.Create(items)
            | "ReadAndBatch" >> beam.ParDo(_ReadBatches(reader, settings.batch_size))
            .with_outputs(_QUARANTINE, _COUNTS, main="batches"))
    scored = read.batches | "Score" >> beam.ParDo(_ScoreBatches(
        model_dir, shared.Shared(), columns, settings.formats,
        fileio.join(staging, PIECES_DIR), settings.rows_per_shard)).with_outputs(_FILES, _COUNTS)
    _ = read[_QUARANTINE] | "WriteQuarantine" >> rd.WriteQuarantine(staging)
    if settings.statistics:
        # TFDV's statistics in bounded memory: its exact top-k/unique counts group every
        # distinct value (every id, nearly every text) by key, which on the DirectRunner holds
        # them all at once; the sketches (Misra-Gries, exact up to 1024 distinct values, as
        # a label's; KMV for the unique count) do not.
        options = text_length_stats_options()
        options.use_sketch_based_topk_uniques = True
        _ = (read.batches
             | "ToRecordBatch" >> beam.Map(_record_batch)
             | "Statistics" >> tfdv.GenerateStatistics(options)
             | "WriteStatistics" >> beam.Map(
                 write_split_statistics, fileio.join(staging, STATS_FILE),
                 fileio.join(staging, TEXT_LENGTH_STATS_FILE)))
    tallies = (
        (read[_COUNTS], scored[_COUNTS]) | "FlattenCounts" >> beam.Flatten()
        | "SumCounts" >> beam.CombineGlobally(_sum_counts)
        | "KeyCounts" >> beam.Map(lambda c: ("counts", c)),
        scored[_FILES] | "CollectFiles" >> beam.combiners.ToList()
        | "KeyFiles" >> beam.Map(lambda files: ("files", sorted(map(list, files))))
    ) | "FlattenTallies" >> beam.Flatten()
    _ = (tallies
         | "CollectTallies" >> beam.combiners.ToDict()
         | "TalliesToJson" >> beam.Map(json.dumps)
         | "WriteTallies" >> beam.io.WriteToText(fileio.join(staging, TALLY_FILE),
                                                 shard_name_template=""))


def shard_name(prefix: str, shard: int, num_shards: int, suffix: str) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"


def number_shards(files: Sequence[Sequence[Any]], directory: str, formats: Sequence[str],
                  columns: _Columns) -> Tuple[int, Dict[str, int]]:
    """Renames the workers' files `[(stem, format, path, rows)]` into `directory` as
    predictions-SSSSS-of-NNNNN.<suffix>, shards numbered in stem order (so shard i holds the
    same rows in every format); with no rows, one empty shard per format (a CSV header, a
    Parquet schema). Returns (shards, {format: rows})."""
    stems = sorted({stem for stem, *_ in files}) or [None]
    number = {stem: i for i, stem in enumerate(stems)}
    rows = {f: 0 for f in formats}
    fileio.makedirs(directory)
    for stem, fmt, path, n in files:
        fileio.rename(path, fileio.join(directory, shard_name(
            PREDICTIONS_PREFIX, number[stem], len(stems), SUFFIXES[fmt])))
        rows[fmt] += n
    if stems == [None]:
        for fmt in formats:
            _WRITERS[fmt](fileio.join(directory, shard_name(
                PREDICTIONS_PREFIX, 0, 1, SUFFIXES[fmt])), columns).close()
    return len(stems), rows


def class_value(classes: Sequence[str]) -> Callable[[str], Any]:
    """How a class is written out: as a JSON number when every class is an integer ("0", "1"),
    as such labels usually come in; else as its name. (Probability keys stay names: JSON object
    keys are strings.)"""
    if all(is_integer_class(c) for c in classes):
        return lambda name: int(name) if is_integer_class(name) else name
    return lambda name: name


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def resolve_model(model_base: str, version: Optional[int]) -> Tuple[str, str]:
    """(version directory, version): `version`, or the one TF Serving serves (models.config;
    after a rollback, not the newest), or the newest when that one is not complete."""
    found = versions(model_base)
    if not found:
        raise UserInputError(f"{model_base} holds no pushed version (<int>/saved_model.pb)")
    if version is None:
        served = served_version(model_base)
        version = served if served in found else found[-1]
    elif version not in found:
        raise UserInputError(f"{model_base} has no version {version}; it has "
                             f"{', '.join(map(str, found))}")
    return fileio.join(model_base, str(version)), str(version)


def _validated_features(schema) -> List[str]:
    """The serving features: the text, and the id when the schema declares one (scoring gives
    rows without an id `source:line`, which a schema without `id` knows nothing of). A label,
    when the input has one, is carried along for reporting accuracy only."""
    declared = {f.name for f in schema.feature}
    return [features.TEXT] + ([features.ID] if features.ID in declared else [])


def resolve_schema(model_dir: str, schema_path: Optional[str], fallback: str) -> str:
    """The schema to validate against: the one given, else the one pushed with the model."""
    if schema_path is None:
        pushed = fileio.join(model_dir, SCHEMA_FILE)
        schema_path = pushed if fileio.exists(pushed) else fallback
    check_schema_path(schema_path)
    if schema_path == INFER:
        raise UserInputError("scoring validates the data against a schema file; `infer` is "
                             "for training runs")
    return schema_path


def check_skew(model_dir: str, staging: str, settings: ScoreSettings) -> Dict[str, Any]:
    """The scoring data (statistics in `staging`) against the training statistics pushed
    with the model: drift.check_skew's result, its anomalies in `skew_anomalies.pbtxt`.
    Blocking skew stops the job only with `skew_blocking` and without `allow_anomalies`."""
    result = drift.check_skew(
        model_dir, fileio.join(staging, STATS_FILE),
        fileio.join(staging, TEXT_LENGTH_STATS_FILE), settings.skew_label_linf,
        settings.skew_text_length_jsd, blocking=settings.skew_blocking,
        anomalies_path=fileio.join(staging, drift.SKEW_ANOMALIES_FILE))
    if result.get("blocking") and not settings.allow_anomalies:
        raise BlockingAnomaliesError(
            "the scoring data is skewed against the model's training data:\n  "
            + "\n  ".join(result["messages"]) + "\nNothing was published. Check the data, or "
            "pass --allow-anomalies.")
    return result


def _only_features(stats, names: Sequence[str]):
    """A copy of a DatasetFeatureStatisticsList with only the features `names`."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    out = statistics_pb2.DatasetFeatureStatisticsList()
    for dataset in stats.datasets:
        part = out.datasets.add()
        part.CopyFrom(dataset)
        del part.features[:]
        part.features.extend(f for f in dataset.features if list(f.path.step)[-1:] in
                             [[n] for n in names])
    return out


def validate(staging: str, schema, settings: ScoreSettings) -> List[str]:
    """The staged statistics of the serving features against the schema's SERVING
    environment (anomalies in `anomalies.pbtxt`); raises BlockingAnomaliesError on blocking
    ones unless `allow_anomalies`."""
    import tensorflow_data_validation as tfdv

    stats = _only_features(tfdv.load_stats_binary(fileio.join(staging, STATS_FILE)),
                           _validated_features(schema))
    result = tfdv.validate_statistics(stats, schema, environment=features.SERVING)
    tfdv.write_anomalies_text(result, fileio.join(staging, ANOMALIES_FILE))
    anomalies = describe_anomalies(SCORE_SPLIT, result)
    if is_blocking(result) and not settings.allow_anomalies:
        raise BlockingAnomaliesError(
            "the scoring data does not match the schema's SERVING environment:\n  "
            + "\n  ".join(anomalies) + "\nNothing was published. Fix the data, or pass "
            "--allow-anomalies.")
    return anomalies


# ---------------------------------------------------------------------------------------------
# The request, the output's state, publication.


@dataclasses.dataclass(frozen=True)
class Request:
    """What a scoring run's result depends on; `fingerprint` identifies it."""

    model_dir: str
    version: str
    model_fingerprint: str
    inputs: Tuple[Tuple[str, str], ...]  # (path, content id) per input file
    schema_path: str
    schema_sha256: str
    reader: Dict[str, Any]
    settings: Dict[str, Any]

    @property
    def fingerprint(self) -> str:
        payload = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def make_request(model_dir: str, version: str, items: Sequence[Tuple[str, str]],
                 schema_path: str, reader: rd.ExampleGenSettings,
                 settings: ScoreSettings) -> Request:
    """The request for these inputs: the model's and each input file's content identified
    (sha256 of a local file, the store's checksum on object storage)."""
    paths = sorted({path for path, _ in items})
    outcome = {k: v for k, v in dataclasses.asdict(settings).items() if k != "batch_size"}
    return Request(model_dir=model_dir, version=version,
                   model_fingerprint=fingerprint_dir(model_dir),
                   inputs=tuple((p, content_id(p)) for p in paths), schema_path=schema_path,
                   schema_sha256=hashlib.sha256(
                       fileio.read_text(schema_path).encode("utf-8")).hexdigest(),
                   reader=dataclasses.asdict(reader), settings=outcome)


# What `prepare_output` found.
FRESH, RESUME, DONE = "fresh", "resume", "done"


def published_summary(output_dir: str) -> Optional[Dict[str, Any]]:
    """The summary of the result published in `output_dir`, None when there is none."""
    if not fileio.exists(fileio.join(output_dir, SUCCESS_FILE)):
        return None
    return fileio.read_json(fileio.join(output_dir, SUMMARY_FILE))


def _read_ready(staging: str) -> Optional[Dict[str, Any]]:
    """The staged result's READY_FILE, or None when there is none (or it was cut short)."""
    path = fileio.join(staging, READY_FILE)
    if not fileio.exists(path):
        return None
    try:
        ready = fileio.read_json(path)
    except ValueError:
        return None
    return ready if isinstance(ready, dict) and {"request", "entries"} <= set(ready) else None


def _discard(staging: str) -> None:
    """Removes a staging directory, its READY_FILE first: a removal cut short never leaves a
    partial result that looks whole."""
    ready = fileio.join(staging, READY_FILE)
    if fileio.exists(ready):
        fileio.remove(ready)
    fileio.rmtree(staging)


def prepare_output(output_dir: str, request: Request, overwrite: bool,
                   keep: Sequence[str] = ()) -> str:
    """What to do for `request` in `output_dir` (call it holding the output's lock):

    RESUME: a staged result of the same request is whole (a run died while publishing it):
    publish it. DONE: the published result is this request's (and not `overwrite`). FRESH:
    score; a dead run's staging is removed first. A published result of another request, or
    files that no scoring run wrote, are refused (OutputExistsError) unless `overwrite`
    (which never removes files that no scoring run wrote); a refused run removes nothing.
    `keep`: names in the output that belong to the caller (its lock, its store).
    """
    staging = fileio.join(output_dir, STAGING_DIR)
    ready = _read_ready(staging)
    if ready is not None and ready["request"] == request.fingerprint:
        return RESUME
    published = published_summary(output_dir)
    if published is not None:
        if published.get("request") == request.fingerprint and not overwrite:
            return DONE
        if not overwrite:
            raise OutputExistsError(
                f"{output_dir} holds a published scoring result of another request (model "
                f"version {published.get('version')}, {published.get('scored')} rows scored by "
                f"run {published.get('run_id')}): pass --overwrite to replace it, or choose "
                "another --output")
    else:
        others = sorted(set(fileio.listdir(output_dir) if fileio.exists(output_dir) else [])
                        - {STAGING_DIR, *keep})
        ours = all(n in PUBLISHED + EARLIER_VERSIONS for n in others)
        if others and not (ours and overwrite):
            raise OutputExistsError(
                f"output directory {output_dir} is not empty and holds no published scoring "
                f"result ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})"
                + ("; pass --overwrite to replace what an unfinished scoring run left"
                   if ours else "; choose another --output"))
    _discard(staging)
    return FRESH


def _move(source: str, target: str) -> None:
    """A file or directory moved: one rename on a local disk, file by file elsewhere."""
    if fileio.rename_is_atomic(target) or not fileio.isdir(source):
        fileio.rename(source, target, overwrite=True)
        return
    for root, _, files in fileio.walk(source):
        for name in files:
            path = fileio.join(root, name)
            destination = fileio.join(target, path[len(source.rstrip("/")) + 1:])
            if fileio.is_local(destination):  # (a local disk treated as object storage)
                fileio.makedirs(fileio.dirname(destination))
            fileio.rename(path, destination, overwrite=True)
    fileio.rmtree(source)


def _check_published(output_dir: str, summary: Dict[str, Any]) -> None:
    """The published predictions are the shards the summary counts, in every format."""
    names = fileio.listdir(fileio.join(output_dir, PREDICTIONS_DIR))
    expected = sorted(shard_name(PREDICTIONS_PREFIX, i, summary["shards"], SUFFIXES[f])
                      for i in range(summary["shards"]) for f in summary["formats"])
    if sorted(names) != expected:
        raise RuntimeError(f"{output_dir}/{PREDICTIONS_DIR} holds {len(names)} files, not the "
                           f"{len(expected)} shards staged; not published")


def publish(output_dir: str) -> Dict[str, Any]:
    """Publishes the staged result (its READY_FILE written): the marker removed, the entries
    of an earlier result removed (once: CLEARED_FILE), the staged ones moved in (on object
    storage file by file: a move cut short goes on where it stopped), the predictions checked
    against the summary, the marker written last. Safe to repeat after a crash at any point.
    Returns the published summary."""
    staging = fileio.join(output_dir, STAGING_DIR)
    ready = _read_ready(staging)
    if ready is None:
        raise RuntimeError(f"{staging} holds no whole staged result to publish")
    marker = fileio.join(output_dir, SUCCESS_FILE)
    if fileio.exists(marker):
        fileio.remove(marker)
    cleared = fileio.join(staging, CLEARED_FILE)
    if not fileio.exists(cleared):
        for name in PUBLISHED + EARLIER_VERSIONS:
            fileio.rmtree(fileio.join(output_dir, name))
        fileio.write_text(cleared, "")
    for name in ready["entries"]:
        staged = fileio.join(staging, name)
        if fileio.exists(staged):
            _move(staged, fileio.join(output_dir, name))
    summary = fileio.read_json(fileio.join(output_dir, SUMMARY_FILE))
    _check_published(output_dir, summary)
    fileio.replace_text(marker, json.dumps({"run_id": summary.get("run_id"),
                                            "request": summary["request"]}))
    fileio.rmtree(staging)
    return summary


# ---------------------------------------------------------------------------------------------


def run_score(model_base: str, version: Optional[int], inputs: Sequence[str], output_dir: str,
              schema_path: Optional[str], fallback_schema: str, reader: rd.ExampleGenSettings,
              settings: ScoreSettings, beam_options, overwrite: bool = False,
              run: Optional[Dict[str, Any]] = None, keep: Sequence[str] = (),
              on_request: Optional[Callable[[Request], None]] = None) -> Dict[str, Any]:
    """Scores `inputs` with a pushed version into `output_dir`, published whole; returns the
    published summary (with "outcome": scored, resumed (a dead run's staged result
    published) or already published).

    The data is validated against `schema_path`, or when None the schema pushed with the
    model, or `fallback_schema`; then compared with the model's training statistics when the
    version has them (summary["skew"], see `check_skew`). Call holding the output's lock.
    `run`: what the caller records of the run (its id, its store), written into the summary.
    `keep`: names in `output_dir` that are the caller's. `on_request` is called with the
    request before any work.
    """
    # Paths absolute: the request (and so "already published") must not depend on the
    # directory the command was started in.
    model_dir, version_name = resolve_model(fileio.absolute(model_base), version)
    schema_path = fileio.absolute(resolve_schema(model_dir, schema_path, fallback_schema))
    schema = load_schema(schema_path)
    classes = fileio.read_json(fileio.join(model_dir, METADATA_FILE))["classes"]
    reader = dataclasses.replace(reader, require_label=False)
    items = rd.discover_inputs([fileio.absolute(p) for p in inputs], reader)
    request = make_request(model_dir, version_name, items, schema_path, reader, settings)
    if on_request is not None:
        on_request(request)
    state = prepare_output(output_dir, request, overwrite, keep)
    if state == DONE:
        return dict(published_summary(output_dir), outcome="already published")
    if state == RESUME:  # the staged result, published by this run
        staged = fileio.join(output_dir, STAGING_DIR, SUMMARY_FILE)
        if fileio.exists(staged):  # (not yet moved into the output)
            summary = fileio.read_json(staged)
            fileio.replace_text(staged, json.dumps(dict(
                summary, resumed_from=summary.get("run_id"), **(run or {})), indent=2,
                sort_keys=True))
        return dict(publish(output_dir), outcome="resumed")

    staging = fileio.join(output_dir, STAGING_DIR)
    fileio.makedirs(fileio.join(staging, PIECES_DIR))
    columns = _Columns(classes, version_name)
    planned = plan_reading(items, reader, staging, beam_options)
    with beam_pipeline(beam_options) as p:
        _ = p | "ScoreRows" >> ScoreRows(planned, reader, model_dir, columns, settings, staging)
    tally = fileio.read_json(fileio.join(staging, TALLY_FILE))
    raw_counts = tally.get("counts") or {}
    counts = rd.summarize_counts(raw_counts, splits=(SCORE_SPLIT,))
    scored = counts["written"]
    labelled, correct = raw_counts.get(_LABELLED, 0), raw_counts.get(_CORRECT, 0)
    shards, published = number_shards(tally.get("files") or [],
                                      fileio.join(staging, PREDICTIONS_DIR),
                                      settings.formats, columns)
    fileio.rmtree(fileio.join(staging, PIECES_DIR))  # what retried bundles left, if anything
    fileio.remove(fileio.join(staging, TALLY_FILE))
    if any(n != scored for n in published.values()):
        raise RuntimeError(f"scored {scored} rows but wrote {published}")
    if counts["read"] != scored + counts["quarantined"]:
        raise RuntimeError(f"scoring counts do not reconcile: read {counts['read']}, scored "
                           f"{scored}, quarantined {counts['quarantined']}")

    anomalies: List[str] = []
    skew: Dict[str, Any] = {"skipped": "no rows to score"}
    if not settings.statistics:
        skew = {"skipped": "statistics are off (score.statistics = false)"}
    elif scored:
        try:
            anomalies = validate(staging, schema, settings)
            skew = check_skew(model_dir, staging, settings)
        except BlockingAnomaliesError:
            fileio.rmtree(staging)  # nothing is published
            raise
    summary = {"model": model_dir, "version": version_name,
               "model_fingerprint": request.model_fingerprint, "schema": schema_path,
               "inputs": [list(i) for i in request.inputs], "output": output_dir,
               "request": request.fingerprint, "formats": list(settings.formats),
               "read": counts["read"], "scored": scored, "quarantined": counts["quarantined"],
               "quarantine_reasons": counts["quarantine_reasons"], "anomalies": anomalies,
               "statistics": settings.statistics, "skew": skew, "shards": shards,
               "classes": classes, "labelled": labelled,
               "accuracy": correct / labelled if labelled else None, **(run or {})}
    fileio.write_json(fileio.join(staging, SUMMARY_FILE), summary, indent=2, sort_keys=True)
    entries = [n for n in PUBLISHED if fileio.exists(fileio.join(staging, n))]
    fileio.replace_text(fileio.join(staging, READY_FILE),
                        json.dumps({"request": request.fingerprint, "entries": entries}))
    return dict(publish(output_dir), outcome="scored")
