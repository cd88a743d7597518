"""Bulk offline scoring with Beam's RunInference on a pushed model.

Two Beam jobs: the first reads the inputs with ExampleGen's readers (a label is optional),
quarantines unusable rows, writes tf.Examples and their TFDV statistics; the statistics are
validated against the schema's SERVING environment, and compared with the training statistics
pushed with the model (skew: text lengths, and labels when the rows have them); the second runs
the model's raw-text signature through RunInference (batched, the model loaded once per worker)
and writes JSONL (and optionally CSV) shards. Rows read = rows scored + rows quarantined, or the
job fails.

Scale: no step holds the documents in memory, and nothing groups them. The first job writes the
examples in chunks of at most `chunk_rows` rows (their paths and row counts are all that is
collected); their total gives the number of output shards, `ceil(rows / rows_per_shard)`, and
each chunk is assigned whole to one shard. The second job scores chunk by chunk (the unit of
work: as many in parallel as there are workers and chunks), each worker streams its rows into a
piece file per shard, and a last step publishes each shard from its pieces (a rename when it
has one piece, the usual case on one machine; a concatenation otherwise): exactly the planned
shards, each row in one of them once. (Beam's `WriteToText(num_shards=N)` would instead group
every row by shard; on the DirectRunner that grouping holds all of them in memory.)
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import uuid
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordUtil
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, \
    RunInference

from components import drift
from components import readers as rd
from components import export, features, fileio
from components.beam_pipeline import beam_pipeline
from components.errors import BlockingAnomaliesError, UserInputError
from components.example_validator import check_threshold, describe_anomalies, is_blocking
from components.pusher import METADATA_FILE, versions
from components.schema_gen import (INFER, SCHEMA_FILE, check_schema_path, is_integer_class,
                                   load_schema)
from components.statistics_gen import TEXT_LENGTH_STATS_FILE, TextLengthStatistics

PREDICTIONS_DIR = "predictions"
PREDICTIONS_PREFIX = "predictions"  # shards: predictions-00000-of-00003.jsonl (Beam's naming)
EXAMPLES_DIR = ".examples"  # the first job's examples, in chunks; removed at the end
CHUNKS_FILE = "chunks.json"  # [[path, rows], ...] of those chunks
PIECES_DIR = ".pieces"  # the second job's per-worker pieces of the shards; removed at the end
WRITTEN_FILE = ".written"  # rows published per output format, checked against rows scored
LINES_FILE = ".lines"  # lines per piece of a cut input file, while planning the reading
MAX_CHUNK_ROWS = 10_000  # at most this many rows per chunk: the unit of scoring work
MAX_OPEN_PIECES = 16  # piece files a worker keeps open at once (each holds a write buffer)
STATS_FILE = "FeatureStats.pb"
LABEL_STATS_FILE = "LabelStats.pb"  # the labels of labelled rows, for skew only
SUMMARY_FILE = "summary.json"
SCORE_SPLIT = "score"  # the one output of the ingest step, in the counts' "split:<name>" keys


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    min_batch_size: int = 1
    max_batch_size: int = 256
    write_csv: bool = False
    allow_anomalies: bool = False
    # Skew against the model's training data (components/drift.py): thresholds as the
    # ExampleValidator's drift ones (0 turns a comparison off); reported in the summary, and
    # stopping the job (unless allow_anomalies) only when skew_blocking is set.
    skew_label_linf: float = 0.1
    skew_text_length_jsd: float = 0.1
    skew_blocking: bool = False
    # Output shards follow the data: ceil(rows scored / rows_per_shard), at least 1. A million
    # rows (a few hundred MB of JSONL) per shard: one shard for a test set, ~100 for 100M rows.
    rows_per_shard: int = 1_000_000

    def __post_init__(self):
        for name in ("skew_label_linf", "skew_text_length_jsd"):
            check_threshold(name, getattr(self, name))
        if self.rows_per_shard < 1:
            raise UserInputError(f"rows_per_shard must be >= 1; got {self.rows_per_shard}")

    @property
    def chunk_rows(self) -> int:
        """Rows per example chunk: at most a quarter of a shard, so that every planned shard
        gets at least one whole chunk (see `plan_shards`)."""
        return max(1, min(MAX_CHUNK_ROWS, -(-self.rows_per_shard // 4)))


class RawTextModelHandler(ModelHandler[str, PredictionResult, Any]):
    """Runs the SavedModel's `serving_default` (raw strings) on a batch of texts."""

    def __init__(self, model_dir: str, min_batch_size: int = 1, max_batch_size: int = 256):
        self._model_dir = model_dir
        self._batch = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self):
        import components  # noqa: F401  (legacy Keras before TensorFlow, on the worker too)
        import tensorflow as tf

        return tf.saved_model.load(self._model_dir)

    def run_inference(self, batch: Sequence[str], model, inference_args=None
                      ) -> Iterable[PredictionResult]:
        import tensorflow as tf

        out = model.signatures[export.SERVING_DEFAULT](text=tf.constant(list(batch)))
        probabilities = out[export.PROBABILITIES].numpy()
        predicted = out[export.PREDICTED_CLASS].numpy()
        return [PredictionResult(text, {"probabilities": p.tolist(),
                                        "predicted_class": c.decode("utf-8")})
                for text, p, c in zip(batch, probabilities, predicted)]

    def batch_elements_kwargs(self):
        return self._batch

    def share_model_across_processes(self) -> bool:
        return False


def _to_scoring_example(record: rd.RawRecord, settings: rd.ExampleGenSettings):
    """(id, serialized tf.Example) or a quarantine record; the id defaults to source:line."""
    _, values, problem = rd.check_record(record, settings)
    if problem:
        return beam.pvalue.TaggedOutput("quarantine", rd.quarantine_record(record, *problem))
    if features.ID not in values:
        values[features.ID] = f"{record.source}:{record.line}".encode("utf-8")
    return rd.to_tf_example(values)


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


@beam.ptransform_fn
def IngestForScoring(pipeline, items, settings: rd.ExampleGenSettings, work_dir: str,
                     validated_features: Sequence[str], chunk_rows: int = MAX_CHUNK_ROWS):
    import tensorflow_data_validation as tfdv
    from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder

    # Create spreads the work items over the workers; the records of an item stream through
    # the rest of the stage (a Reshuffle of the records would materialise all of them at once
    # in the DirectRunner's memory).
    records = (pipeline
               | "CreateWorkItems" >> beam.Create(items)
               | "ReadRecords" >> beam.FlatMap(_read_piece, settings))
    routed = records | "Check" >> beam.Map(_to_scoring_example, settings).with_outputs(
        "quarantine", main="examples")
    examples, quarantined = routed.examples, routed.quarantine
    _ = (examples
         | "WriteExamples" >> beam.ParDo(_WriteExampleChunks(os.path.join(work_dir, EXAMPLES_DIR),
                                                             chunk_rows))
         | "CollectChunks" >> beam.combiners.ToList()  # [(path, rows)]: a few per shard
         | "ChunksToJson" >> beam.Map(lambda chunks: json.dumps(sorted(chunks)))
         | "WriteChunks" >> beam.io.WriteToText(os.path.join(work_dir, EXAMPLES_DIR, CHUNKS_FILE),
                                                shard_name_template=""))
    _ = quarantined | "WriteQuarantine" >> rd.WriteQuarantine(work_dir)
    batches = (examples
               | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
               | "ToRecordBatch" >> beam.Map(
                   lambda b: ExamplesToRecordBatchDecoder().DecodeBatch(b)))
    # TFDV's statistics in bounded memory: its exact top-k/unique counts group every distinct
    # value (every id, nearly every text) by key, which on the DirectRunner holds them all at
    # once; the sketches (Misra-Gries, 1024 counters: exact up to that many distinct values,
    # as a label's; KMV for the unique count) do not.
    _ = (batches
         | "Statistics" >> tfdv.GenerateStatistics(tfdv.StatsOptions(
             feature_allowlist=list(validated_features), use_sketch_based_topk_uniques=True))
         | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(
             os.path.join(work_dir, STATS_FILE)))
    _ = batches | "TextLengthStatistics" >> TextLengthStatistics(
        os.path.join(work_dir, TEXT_LENGTH_STATS_FILE))
    _ = (batches
         | "LabelStatistics" >> tfdv.GenerateStatistics(tfdv.StatsOptions(
             feature_allowlist=[features.LABEL], use_sketch_based_topk_uniques=True))
         | "WriteLabelStatistics" >> tfdv.WriteStatisticsToBinaryFile(
             os.path.join(work_dir, LABEL_STATS_FILE)))
    _ = (records, examples | "KeyOk" >> beam.Map(lambda _: f"split:{SCORE_SPLIT}"),
         quarantined) | "WriteCounts" >> rd.WriteCounts(work_dir)


class _WriteExampleChunks(beam.DoFn):
    """Serialized tf.Examples -> GZIP TFRecord chunks of at most `chunk_rows` rows in
    `directory`; emits (path, rows) per chunk. Only the chunks of committed bundles are
    emitted: files a failed bundle left behind are never read, and go with the directory."""

    def __init__(self, directory: str, chunk_rows: int):
        self._directory = directory
        self._chunk_rows = chunk_rows
        self._handle = None

    def start_bundle(self):
        self._handle = None

    def _close(self) -> Tuple[str, int]:
        self._handle.close()
        self._handle = None
        return self._path, self._rows

    def process(self, example: bytes):
        if self._handle is None:
            self._path = os.path.join(self._directory, f"{uuid.uuid4().hex}.tfrecord.gz")
            self._handle = FileSystems.create(self._path,
                                              compression_type=CompressionTypes.GZIP)
            self._rows = 0
        _TFRecordUtil.write_record(self._handle, example)
        self._rows += 1
        if self._rows >= self._chunk_rows:
            yield self._close()

    def finish_bundle(self):
        if self._handle is not None:
            yield beam.transforms.window.GlobalWindows.windowed_value(self._close())


def plan_shards(chunks: Sequence[Tuple[str, int]], rows_per_shard: int
                ) -> Tuple[int, List[Tuple[str, int]]]:
    """(number of shards, [(chunk path, shard)]): ceil(rows / rows_per_shard) shards, at least
    one; the chunks, in path order, go whole to consecutive shards, a chunk to the shard its
    first row falls in when the rows are cut into equal parts. With chunks of at most
    rows_per_shard / 4 rows (ScoreSettings.chunk_rows) every shard gets rows."""
    total = sum(rows for _, rows in chunks)
    num_shards = max(1, math.ceil(total / rows_per_shard))
    plan, start = [], 0
    for path, rows in sorted(chunks):
        if rows:
            plan.append((path, min(num_shards - 1, start * num_shards // total)))
        start += rows
    return num_shards, plan


def _parse_example(serialized: bytes) -> Tuple[Tuple[str, Optional[str]], str]:
    """((id, label or None), text)."""
    import tensorflow as tf

    f = tf.train.Example.FromString(serialized).features.feature
    label = (f[features.LABEL].bytes_list.value[0].decode("utf-8")
             if features.LABEL in f else None)
    return ((f[features.ID].bytes_list.value[0].decode("utf-8"), label),
            f[features.TEXT].bytes_list.value[0].decode("utf-8"))


def _read_chunk(chunk: Tuple[str, int]) -> Iterable[Tuple[Tuple[int, str, Optional[str]], str]]:
    """A chunk's rows as ((shard, id, label or None), text), streamed from the file: the key
    rides along RunInference untouched."""
    path, shard = chunk
    with FileSystems.open(path, compression_type=CompressionTypes.GZIP) as f:
        while True:
            record = _TFRecordUtil.read_record(f)
            if record is None:
                return
            (row_id, label), text = _parse_example(record)
            yield (shard, row_id, label), text


def shard_name(prefix: str, shard: int, num_shards: int, suffix: str) -> str:
    return f"{prefix}-{shard:05d}-of-{num_shards:05d}{suffix}"


class _WritePieces(beam.DoFn):
    """(shard, line) -> piece files of the shards in `directory`, one per shard per bundle
    (more only when over MAX_OPEN_PIECES shards come in one bundle); emits (shard, (path,
    rows)) per piece. Each piece starts with the header, when there is one."""

    def __init__(self, directory: str, suffix: str, header: Optional[str]):
        self._directory = directory
        self._suffix = suffix
        self._header = None if header is None else (header + "\n").encode("utf-8")
        self._open: Dict[int, list] = {}

    def start_bundle(self):
        self._open = {}

    def _close(self, shard: int):
        handle, path, rows = self._open.pop(shard)
        handle.close()
        return shard, (path, rows)

    def process(self, element: Tuple[int, str]):
        shard, line = element
        piece = self._open.pop(shard, None)  # re-inserted last: the dict is in recency order
        if piece is None:
            if len(self._open) >= MAX_OPEN_PIECES:
                yield self._close(next(iter(self._open)))
            path = os.path.join(self._directory, f"{shard:05d}-{uuid.uuid4().hex}{self._suffix}")
            piece = [FileSystems.create(path, mime_type="text/plain",
                                        compression_type=CompressionTypes.UNCOMPRESSED), path, 0]
            if self._header is not None:
                piece[0].write(self._header)
        self._open[shard] = piece
        piece[0].write(line.encode("utf-8") + b"\n")
        piece[2] += 1

    def finish_bundle(self):
        for shard in list(self._open):
            yield beam.transforms.window.GlobalWindows.windowed_value(self._close(shard))


def _publish_shard(shard_pieces: Tuple[int, Iterable[Optional[Tuple[str, int]]]],
                   directory: str, prefix: str, suffix: str, num_shards: int,
                   header: Optional[str]) -> int:
    """Publishes one shard from its (path, rows) pieces (and None: the placeholder that every
    shard has, so that one without rows is written too); returns its rows."""
    shard, pieces = shard_pieces
    pieces = sorted(p for p in pieces if p is not None)
    final = os.path.join(directory, shard_name(prefix, shard, num_shards, suffix))
    rows = sum(n for _, n in pieces)
    if FileSystems.exists(final) and not all(FileSystems.exists(p) for p, _ in pieces):
        return rows  # a retry of a publish that got as far as moving or removing its pieces
    if len(pieces) == 1:
        try:
            FileSystems.mkdirs(directory)
        except IOError:
            pass  # there already (object stores have no directories to make)
        FileSystems.rename([pieces[0][0]], [final])
        return rows
    head = b"" if header is None else (header + "\n").encode("utf-8")
    with FileSystems.create(final, mime_type="text/plain",
                            compression_type=CompressionTypes.UNCOMPRESSED) as out:
        out.write(head)
        for path, _ in pieces:
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                f.read(len(head))  # each piece starts with the header
                shutil.copyfileobj(f, out, 1 << 20)
    FileSystems.delete([path for path, _ in pieces])
    return rows


@beam.ptransform_fn
def WriteShards(lines, directory: str, pieces_dir: str, prefix: str, suffix: str,
                num_shards: int, header: Optional[str] = None):
    """(shard, line) -> exactly `num_shards` files `directory/prefix-SSSSS-of-NNNNN<suffix>`,
    without grouping the lines (only the pieces' names are grouped); returns (suffix, rows)
    per shard."""
    pieces = lines | "WritePieces" >> beam.ParDo(_WritePieces(pieces_dir, suffix, header))
    every_shard = (lines.pipeline
                   | "EveryShard" >> beam.Create([(s, None) for s in range(num_shards)]))
    return ((pieces, every_shard)
            | "Flatten" >> beam.Flatten()
            | "GroupPieces" >> beam.GroupByKey()
            | "Publish" >> beam.Map(_publish_shard, directory, prefix, suffix, num_shards, header)
            | "KeyRows" >> beam.Map(lambda rows: (suffix, rows)))


class SumTuples(beam.CombineFn):
    """Element-wise sums of equal-length tuples of counts (the empty input: zeros)."""

    def __init__(self, width: int):
        self._width = width

    def create_accumulator(self):
        return (0,) * self._width

    def add_input(self, accumulator, element):
        return tuple(a + b for a, b in zip(accumulator, element))

    def merge_accumulators(self, accumulators):
        total = self.create_accumulator()
        for accumulator in accumulators:
            total = self.add_input(total, accumulator)
        return total

    def extract_output(self, accumulator):
        return accumulator


def class_value(classes: Sequence[str]) -> Callable[[str], Any]:
    """How a class is written out: as a JSON number when every class is an integer ("0", "1"),
    as such labels usually come in; else as its name. (Probability keys stay names: JSON object
    keys are strings.)"""
    if all(is_integer_class(c) for c in classes):
        return lambda name: int(name) if is_integer_class(name) else name
    return lambda name: name


def _format(keyed: Tuple[Tuple[int, str, Optional[str]], PredictionResult],
            classes: Sequence[str], version: str, value: Callable[[str], Any]
            ) -> Tuple[int, Dict[str, Any]]:
    """(shard, output row)."""
    (shard, row_id, label), result = keyed
    row = {"id": row_id, "predicted_class": value(result.inference["predicted_class"]),
           "probabilities": dict(zip(classes, result.inference["probabilities"])),
           "model_version": version}
    if label is not None:
        row["label"] = value(label)
    return shard, row


def _csv_line(values: Sequence[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(values)
    return buf.getvalue()


def _to_csv(row: Dict[str, Any], classes: Sequence[str]) -> str:
    return _csv_line([row["id"], row["predicted_class"]]
                     + [f"{row['probabilities'][c]:.6g}" for c in classes] + [row["model_version"]])


def resolve_model(model_base: str, version: Optional[int]) -> Tuple[str, str]:
    found = versions(model_base)
    if not found:
        raise UserInputError(f"{model_base} holds no pushed version (<int>/saved_model.pb)")
    if version is None:
        version = found[-1]
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


def check_skew(model_dir: str, output_dir: str, settings: ScoreSettings) -> Dict[str, Any]:
    """The scoring data (statistics in `output_dir`) against the training statistics pushed
    with the model: drift.check_skew's result, its anomalies in `skew_anomalies.pbtxt`.
    Blocking skew stops the job only with `skew_blocking` and without `allow_anomalies`."""
    result = drift.check_skew(
        model_dir, fileio.join(output_dir, LABEL_STATS_FILE),
        fileio.join(output_dir, TEXT_LENGTH_STATS_FILE), settings.skew_label_linf,
        settings.skew_text_length_jsd, blocking=settings.skew_blocking,
        anomalies_path=fileio.join(output_dir, drift.SKEW_ANOMALIES_FILE))
    if result.get("blocking") and not settings.allow_anomalies:
        raise BlockingAnomaliesError(
            "the scoring data is skewed against the model's training data:\n  "
            + "\n  ".join(result["messages"]) + "\nCheck the data, or pass --allow-anomalies.")
    return result


def run_score(model_base: str, version: Optional[int], inputs: Sequence[str], output_dir: str,
              schema_path: Optional[str], fallback_schema: str, reader: rd.ExampleGenSettings,
              settings: ScoreSettings, beam_options) -> Dict[str, Any]:
    """Scores `inputs` with a pushed version; returns the summary also written to the output.

    The data is validated against `schema_path`, or when None the schema pushed with the
    model, or `fallback_schema`; then compared with the model's training statistics when the
    version has them (summary["skew"], see `check_skew`).
    """
    import tensorflow_data_validation as tfdv

    model_dir, version_name = resolve_model(model_base, version)
    schema_path = resolve_schema(model_dir, schema_path, fallback_schema)
    schema = load_schema(schema_path)
    classes = fileio.read_json(fileio.join(model_dir, METADATA_FILE))["classes"]
    reader = dataclasses.replace(reader, require_label=False)
    items = rd.discover_inputs(inputs, reader)
    if fileio.listdir(output_dir):
        raise UserInputError(f"output directory {output_dir} is not empty")

    items = plan_reading(items, reader, output_dir, beam_options)
    with beam_pipeline(beam_options) as p:
        _ = p | "IngestForScoring" >> IngestForScoring(items, reader, output_dir,
                                                        _validated_features(schema),
                                                        settings.chunk_rows)
    counts = rd.summarize_counts(fileio.read_json(fileio.join(output_dir, rd.COUNTS_FILE)),
                                 splits=(SCORE_SPLIT,))
    chunks = [tuple(c) for c in fileio.read_json(fileio.join(output_dir, EXAMPLES_DIR,
                                                             CHUNKS_FILE))]
    if sum(rows for _, rows in chunks) != counts["written"]:
        raise RuntimeError(f"the example chunks hold {sum(rows for _, rows in chunks)} rows, "
                           f"not the {counts['written']} written")

    anomalies, skew = [], {"skipped": "no rows to score"}
    if counts["written"]:
        stats = tfdv.load_stats_binary(fileio.join(output_dir, STATS_FILE))
        result = tfdv.validate_statistics(stats, schema, environment=features.SERVING)
        tfdv.write_anomalies_text(result, fileio.join(output_dir, "anomalies.pbtxt"))
        anomalies = describe_anomalies(SCORE_SPLIT, result)
        if is_blocking(result) and not settings.allow_anomalies:
            raise BlockingAnomaliesError(
                "the scoring data does not match the schema's SERVING environment:\n  "
                + "\n  ".join(anomalies) + "\nFix the data, or pass --allow-anomalies.")
        skew = check_skew(model_dir, output_dir, settings)

    num_shards, plan = plan_shards(chunks, settings.rows_per_shard)
    predictions_dir = fileio.join(output_dir, PREDICTIONS_DIR)
    pieces_dir = fileio.join(output_dir, PIECES_DIR)
    handler = KeyedModelHandler(RawTextModelHandler(model_dir, settings.min_batch_size,
                                                    settings.max_batch_size))
    with beam_pipeline(beam_options) as p:
        rows = (p
                | "CreateChunks" >> beam.Create(plan)  # spread over the workers
                | "ReadChunks" >> beam.FlatMap(_read_chunk)
                | "RunInference" >> RunInference(handler)
                | "Format" >> beam.Map(_format, classes, version_name, class_value(classes)))
        written = [rows
                   | "ToJson" >> beam.MapTuple(
                       lambda shard, row: (shard, json.dumps(row, ensure_ascii=False)))
                   | "WriteJsonl" >> WriteShards(predictions_dir, pieces_dir, PREDICTIONS_PREFIX,
                                                 ".jsonl", num_shards)]
        # Rows scored, and how many of those with a label were predicted right.
        _ = (rows
             | "Tally" >> beam.MapTuple(lambda _, r: (1, int("label" in r),
                                                      int(r.get("label") == r["predicted_class"])))
             | "SumTally" >> beam.CombineGlobally(SumTuples(3))
             | "TallyToJson" >> beam.Map(json.dumps)
             | "WriteTally" >> beam.io.WriteToText(fileio.join(output_dir, ".scored"),
                                                   shard_name_template=""))
        if settings.write_csv:
            header = _csv_line(["id", "predicted_class"] + [f"p_{c}" for c in classes]
                               + ["model_version"])
            written.append(rows
                           | "ToCsv" >> beam.MapTuple(lambda shard, row: (shard,
                                                                          _to_csv(row, classes)))
                           | "WriteCsv" >> WriteShards(predictions_dir, pieces_dir,
                                                       PREDICTIONS_PREFIX, ".csv", num_shards,
                                                       header))
        # Rows published per format, to check against the tally.
        _ = (written
             | "FlattenWritten" >> beam.Flatten()
             | "SumWritten" >> beam.CombinePerKey(sum)
             | "CollectWritten" >> beam.combiners.ToDict()
             | "WrittenToJson" >> beam.Map(json.dumps)
             | "WriteWritten" >> beam.io.WriteToText(fileio.join(output_dir, WRITTEN_FILE),
                                                     shard_name_template=""))
    scored, labelled, correct = fileio.read_json(fileio.join(output_dir, ".scored"))
    published = fileio.read_json(fileio.join(output_dir, WRITTEN_FILE))
    fileio.remove(fileio.join(output_dir, ".scored"))
    fileio.remove(fileio.join(output_dir, WRITTEN_FILE))
    fileio.rmtree(fileio.join(output_dir, EXAMPLES_DIR))  # an intermediate copy of the input
    fileio.rmtree(pieces_dir)  # left only by bundles that were retried
    if any(n != scored for n in published.values()):
        raise RuntimeError(f"scored {scored} rows but published {published}")
    summary = {"model": model_dir, "version": version_name, "schema": schema_path,
               "read": counts["read"],
               "scored": scored, "quarantined": counts["quarantined"],
               "quarantine_reasons": counts["quarantine_reasons"], "anomalies": anomalies,
               "skew": skew, "shards": num_shards,
               "classes": classes, "labelled": labelled,
               "accuracy": correct / labelled if labelled else None}
    if summary["read"] != summary["scored"] + summary["quarantined"]:
        raise RuntimeError(f"scoring counts do not reconcile: {summary}")
    fileio.write_json(fileio.join(output_dir, SUMMARY_FILE), summary, indent=2, sort_keys=True)
    return summary
