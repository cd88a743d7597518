"""Bulk offline scoring with Beam's RunInference on a pushed model.

Two Beam jobs: the first reads the inputs with ExampleGen's readers (a label is optional),
quarantines unusable rows, writes tf.Examples and their TFDV statistics; the statistics are
validated against the schema's SERVING environment, and compared with the training statistics
pushed with the model (skew: text lengths, and labels when the rows have them); the second runs
the model's raw-text signature through RunInference (batched, the model loaded once per worker)
and writes JSONL (and optionally CSV) shards. Rows read = rows scored + rows quarantined, or the
job fails.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult, \
    RunInference

from components import drift
from components import example_gen as eg
from components import export, features
from components.errors import BlockingAnomaliesError, UserInputError
from components.example_validator import check_threshold, describe_anomalies, is_blocking
from components.pusher import METADATA_FILE, versions
from components.schema_gen import (INFER, SCHEMA_FILE, check_schema_path, is_integer_class,
                                   load_schema)
from components.statistics_gen import TEXT_LENGTH_STATS_FILE, TextLengthStatistics

PREDICTIONS_DIR = "predictions"
EXAMPLES_DIR = ".examples"
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

    def __post_init__(self):
        for name in ("skew_label_linf", "skew_text_length_jsd"):
            check_threshold(name, getattr(self, name))


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


def _to_scoring_example(record: eg.RawRecord, settings: eg.ExampleGenSettings):
    """(id, serialized tf.Example) or a quarantine record; the id defaults to source:line."""
    _, values, problem = eg.check_record(record, settings)
    if problem:
        return beam.pvalue.TaggedOutput("quarantine", eg.quarantine_record(record, *problem))
    if features.ID not in values:
        values[features.ID] = f"{record.source}:{record.line}".encode("utf-8")
    return eg.to_tf_example(values)


@beam.ptransform_fn
def IngestForScoring(pipeline, items, settings: eg.ExampleGenSettings, work_dir: str,
                     validated_features: Sequence[str]):
    import tensorflow_data_validation as tfdv
    from tfx_bsl.coders.example_coder import ExamplesToRecordBatchDecoder

    records = (pipeline
               | "CreateWorkItems" >> beam.Create(items)
               | "ReadRecords" >> beam.FlatMap(eg.read_records, settings)
               | "Redistribute" >> beam.Reshuffle())
    routed = records | "Check" >> beam.Map(_to_scoring_example, settings).with_outputs(
        "quarantine", main="examples")
    examples, quarantined = routed.examples, routed.quarantine
    _ = examples | "WriteExamples" >> beam.io.WriteToTFRecord(
        os.path.join(work_dir, EXAMPLES_DIR, "examples"), file_name_suffix=".gz",
        compression_type=CompressionTypes.GZIP)
    _ = quarantined | "WriteQuarantine" >> eg.WriteQuarantine(work_dir)
    batches = (examples
               | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=1024)
               | "ToRecordBatch" >> beam.Map(
                   lambda b: ExamplesToRecordBatchDecoder().DecodeBatch(b)))
    _ = (batches
         | "Statistics" >> tfdv.GenerateStatistics(tfdv.StatsOptions(
             feature_allowlist=list(validated_features)))
         | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(
             os.path.join(work_dir, STATS_FILE)))
    _ = batches | "TextLengthStatistics" >> TextLengthStatistics(
        os.path.join(work_dir, TEXT_LENGTH_STATS_FILE))
    _ = (batches
         | "LabelStatistics" >> tfdv.GenerateStatistics(tfdv.StatsOptions(
             feature_allowlist=[features.LABEL]))
         | "WriteLabelStatistics" >> tfdv.WriteStatisticsToBinaryFile(
             os.path.join(work_dir, LABEL_STATS_FILE)))
    _ = (records, examples | "KeyOk" >> beam.Map(lambda _: f"split:{SCORE_SPLIT}"),
         quarantined) | "WriteCounts" >> eg.WriteCounts(work_dir)


def _parse_example(serialized: bytes) -> Tuple[Tuple[str, Optional[str]], str]:
    """((id, label or None), text): the key rides along RunInference untouched."""
    import tensorflow as tf

    f = tf.train.Example.FromString(serialized).features.feature
    label = (f[features.LABEL].bytes_list.value[0].decode("utf-8")
             if features.LABEL in f else None)
    return ((f[features.ID].bytes_list.value[0].decode("utf-8"), label),
            f[features.TEXT].bytes_list.value[0].decode("utf-8"))


def class_value(classes: Sequence[str]) -> Callable[[str], Any]:
    """How a class is written out: as a JSON number when every class is an integer ("0", "1"),
    as such labels usually come in; else as its name. (Probability keys stay names: JSON object
    keys are strings.)"""
    if all(is_integer_class(c) for c in classes):
        return lambda name: int(name) if is_integer_class(name) else name
    return lambda name: name


def _format(keyed: Tuple[Tuple[str, Optional[str]], PredictionResult], classes: Sequence[str],
            version: str, value: Callable[[str], Any]) -> Dict[str, Any]:
    (row_id, label), result = keyed
    row = {"id": row_id, "predicted_class": value(result.inference["predicted_class"]),
           "probabilities": dict(zip(classes, result.inference["probabilities"])),
           "model_version": version}
    if label is not None:
        row["label"] = value(label)
    return row


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
    return os.path.join(model_base, str(version)), str(version)


def _validated_features(schema) -> List[str]:
    """The serving features: the text, and the id when the schema declares one (scoring gives
    rows without an id `source:line`, which a schema without `id` knows nothing of). A label,
    when the input has one, is carried along for reporting accuracy only."""
    declared = {f.name for f in schema.feature}
    return [features.TEXT] + ([features.ID] if features.ID in declared else [])


def resolve_schema(model_dir: str, schema_path: Optional[str], fallback: str) -> str:
    """The schema to validate against: the one given, else the one pushed with the model."""
    if schema_path is None:
        pushed = os.path.join(model_dir, SCHEMA_FILE)
        schema_path = pushed if os.path.exists(pushed) else fallback
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
        model_dir, os.path.join(output_dir, LABEL_STATS_FILE),
        os.path.join(output_dir, TEXT_LENGTH_STATS_FILE), settings.skew_label_linf,
        settings.skew_text_length_jsd, blocking=settings.skew_blocking,
        anomalies_path=os.path.join(output_dir, drift.SKEW_ANOMALIES_FILE))
    if result.get("blocking") and not settings.allow_anomalies:
        raise BlockingAnomaliesError(
            "the scoring data is skewed against the model's training data:\n  "
            + "\n  ".join(result["messages"]) + "\nCheck the data, or pass --allow-anomalies.")
    return result


def run_score(model_base: str, version: Optional[int], inputs: Sequence[str], output_dir: str,
              schema_path: Optional[str], fallback_schema: str, reader: eg.ExampleGenSettings,
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
    with open(os.path.join(model_dir, METADATA_FILE)) as f:
        classes = json.load(f)["classes"]
    reader = dataclasses.replace(reader, require_label=False)
    items = eg.discover_inputs(inputs, reader)
    if os.path.exists(output_dir) and os.listdir(output_dir):
        raise UserInputError(f"output directory {output_dir} is not empty")

    with beam.Pipeline(options=beam_options) as p:
        _ = p | "IngestForScoring" >> IngestForScoring(items, reader, output_dir,
                                                        _validated_features(schema))
    with open(os.path.join(output_dir, eg.COUNTS_FILE)) as f:
        counts = eg.summarize_counts(json.load(f), splits=(SCORE_SPLIT,))

    anomalies, skew = [], {"skipped": "no rows to score"}
    if counts["written"]:
        stats = tfdv.load_stats_binary(os.path.join(output_dir, STATS_FILE))
        result = tfdv.validate_statistics(stats, schema, environment=features.SERVING)
        tfdv.write_anomalies_text(result, os.path.join(output_dir, "anomalies.pbtxt"))
        anomalies = describe_anomalies(SCORE_SPLIT, result)
        if is_blocking(result) and not settings.allow_anomalies:
            raise BlockingAnomaliesError(
                "the scoring data does not match the schema's SERVING environment:\n  "
                + "\n  ".join(anomalies) + "\nFix the data, or pass --allow-anomalies.")
        skew = check_skew(model_dir, output_dir, settings)

    handler = KeyedModelHandler(RawTextModelHandler(model_dir, settings.min_batch_size,
                                                    settings.max_batch_size))
    with beam.Pipeline(options=beam_options) as p:
        rows = (p
                | "ReadExamples" >> beam.io.ReadFromTFRecord(
                    os.path.join(output_dir, EXAMPLES_DIR, "*"))
                | "Parse" >> beam.Map(_parse_example)
                | "RunInference" >> RunInference(handler)
                | "Format" >> beam.Map(_format, classes, version_name, class_value(classes)))
        _ = (rows
             | "ToJson" >> beam.Map(json.dumps, ensure_ascii=False)
             | "WriteJsonl" >> beam.io.WriteToText(
                 os.path.join(output_dir, PREDICTIONS_DIR, "predictions"),
                 file_name_suffix=".jsonl"))
        # Rows scored, and how many of those with a label were predicted right.
        _ = (rows
             | "Tally" >> beam.Map(lambda r: (1, int("label" in r),
                                              int(r.get("label") == r["predicted_class"])))
             | "SumTally" >> beam.CombineGlobally(
                 lambda ts: tuple(map(sum, zip(*ts))) if ts else (0, 0, 0))
             | "TallyToJson" >> beam.Map(json.dumps)
             | "WriteTally" >> beam.io.WriteToText(os.path.join(output_dir, ".scored"),
                                                   shard_name_template=""))
        if settings.write_csv:
            header = _csv_line(["id", "predicted_class"] + [f"p_{c}" for c in classes]
                               + ["model_version"])
            _ = (rows
                 | "ToCsv" >> beam.Map(_to_csv, classes)
                 | "WriteCsv" >> beam.io.WriteToText(
                     os.path.join(output_dir, PREDICTIONS_DIR, "predictions"),
                     file_name_suffix=".csv", header=header))
    with open(os.path.join(output_dir, ".scored")) as f:
        scored, labelled, correct = json.load(f)
    os.remove(os.path.join(output_dir, ".scored"))
    shutil.rmtree(os.path.join(output_dir, EXAMPLES_DIR))  # an intermediate copy of the input
    summary = {"model": model_dir, "version": version_name, "schema": schema_path,
               "read": counts["read"],
               "scored": scored, "quarantined": counts["quarantined"],
               "quarantine_reasons": counts["quarantine_reasons"], "anomalies": anomalies,
               "skew": skew,
               "classes": classes, "labelled": labelled,
               "accuracy": correct / labelled if labelled else None}
    if summary["read"] != summary["scored"] + summary["quarantined"]:
        raise RuntimeError(f"scoring counts do not reconcile: {summary}")
    with open(os.path.join(output_dir, SUMMARY_FILE), "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True)
    return summary
