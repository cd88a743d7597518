"""StatisticsGen: TFDV statistics of every split, computed in one Beam pipeline over TFXIO.

Beside each split's `FeatureStats.pb` (the raw features, which SchemaGen infers from and the
ExampleValidator validates) it writes `TextLengthStats.pb`: statistics of one derived feature,
`text_length`, the number of whitespace-separated tokens of a text. It is a file of its own so
the schemas never see a feature that is not in the data; drift and skew checks compare it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import apache_beam as beam

from components import features, fileio
from components.artifacts import staged_output
from components.beam_pipeline import beam_pipeline

STATS_FILE = "FeatureStats.pb"
TEXT_LENGTH_STATS_FILE = "TextLengthStats.pb"
TEXT_LENGTH = "text_length"
# The Jensen-Shannon divergence of `text_length` is computed on TFDV's equal-width histogram.
# Token counts are integers: buckets narrower than a token leave empty gaps that differ between
# two samples of the same distribution (measured: a JSD of ~0.3 at 50 buckets on TREC-like
# lengths, ~0.01 at 20), so 20 buckets between the min and the max. 20 quantile buckets give
# the 5% quantiles for the summaries.
TEXT_LENGTH_HISTOGRAM_BUCKETS = 20
TEXT_LENGTH_QUANTILE_BUCKETS = 20


def split_data_pattern(examples_dir: str, split: str) -> str:
    return fileio.join(examples_dir, features.split_dir_name(split), "*")


def available_splits(examples_dir: str) -> Sequence[str]:
    return [s for s in features.SPLITS
            if fileio.isdir(fileio.join(examples_dir, features.split_dir_name(s)))]


def run_statistics_gen(examples_dir: str, output_dir: str, beam_options) -> Dict[str, str]:
    """Writes `Split-<s>/FeatureStats.pb` and `Split-<s>/TextLengthStats.pb` for each split of
    `examples_dir`; returns {split: path of FeatureStats.pb}."""
    import tensorflow_data_validation as tfdv
    from tfx_bsl.public import tfxio

    splits = available_splits(examples_dir)
    paths = {}
    with staged_output(output_dir) as tmp:
        with beam_pipeline(beam_options) as p:
            for split in splits:
                source = tfxio.TFExampleRecord(
                    split_data_pattern(examples_dir, split),
                    telemetry_descriptors=["textcnn_pipeline", "StatisticsGen"])
                split_dir = fileio.join(tmp, features.split_dir_name(split))
                # One statistics pass per split: `text_length` is computed beside the raw
                # features and written to a file of its own (see `write_split_statistics`).
                _ = (p
                     | f"Read[{split}]" >> source.BeamSource()
                     | f"AddTextLength[{split}]" >> beam.Map(with_text_length)
                     | f"GenerateStatistics[{split}]" >> tfdv.GenerateStatistics(
                         text_length_stats_options())
                     | f"WriteStatistics[{split}]" >> beam.Map(
                         write_split_statistics, fileio.join(split_dir, STATS_FILE),
                         fileio.join(split_dir, TEXT_LENGTH_STATS_FILE)))
        for split in splits:
            paths[split] = fileio.join(output_dir, features.split_dir_name(split), STATS_FILE)
    return paths


def with_text_length(record_batch):
    """Arrow record batch of tf.Examples -> the same with a `text_length` column added."""
    import pyarrow as pa

    if TEXT_LENGTH in record_batch.schema.names:
        raise ValueError(f"the examples already have a feature named {TEXT_LENGTH!r}")
    lengths = text_length_batch(record_batch).column(0)
    return pa.RecordBatch.from_arrays(list(record_batch.columns) + [lengths],
                                      list(record_batch.schema.names) + [TEXT_LENGTH])


def write_split_statistics(stats_list, features_path: str, text_length_path: str) -> None:
    """Statistics of the raw features and of `text_length`, computed together, -> the two
    files: `features_path` without `text_length`, `text_length_path` with it alone."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    outputs = {features_path: statistics_pb2.DatasetFeatureStatisticsList(),
               text_length_path: statistics_pb2.DatasetFeatureStatisticsList()}
    for dataset in stats_list.datasets:
        for path, keep_length in ((features_path, False), (text_length_path, True)):
            part = outputs[path].datasets.add()
            part.CopyFrom(dataset)
            del part.features[:]
            part.features.extend(f for f in dataset.features
                                 if (list(f.path.step) == [TEXT_LENGTH]) == keep_length)
    for path, stats in outputs.items():
        with fileio.open_file(path, "wb") as f:
            f.write(stats.SerializeToString(deterministic=True))  # as ProtoCoder writes


def token_count(text_values: Optional[List[bytes]]) -> Optional[int]:
    """Whitespace-separated tokens of a `text` feature's values (ASCII whitespace, as
    tf.strings.split splits before the Transform's own tokenizing); None when it has no value."""
    if text_values is None:
        return None
    return sum(len(v.split()) for v in text_values)


def text_length_batch(record_batch):
    """Arrow record batch with `text` -> one with only `text_length` (list<int64>)."""
    import pyarrow as pa

    names = record_batch.schema.names
    texts = (record_batch.column(names.index(features.TEXT)).to_pylist()
             if features.TEXT in names else [None] * record_batch.num_rows)
    lengths = [None if n is None else [n] for n in map(token_count, texts)]
    return pa.RecordBatch.from_arrays([pa.array(lengths, type=pa.list_(pa.int64()))],
                                      [TEXT_LENGTH])


def text_length_stats_options():
    import tensorflow_data_validation as tfdv

    return tfdv.StatsOptions(num_histogram_buckets=TEXT_LENGTH_HISTOGRAM_BUCKETS,
                             num_quantiles_histogram_buckets=TEXT_LENGTH_QUANTILE_BUCKETS)


@beam.ptransform_fn
def TextLengthStatistics(record_batches, output_path: str):
    """Arrow record batches of tf.Examples -> TFDV statistics of `text_length`, written to
    `output_path` (StatisticsGen's per split, and the scorer's for its data)."""
    import tensorflow_data_validation as tfdv

    return (record_batches
            | "ToTextLength" >> beam.Map(text_length_batch)
            | "GenerateStatistics" >> tfdv.GenerateStatistics(text_length_stats_options())
            | "WriteStatistics" >> tfdv.WriteStatisticsToBinaryFile(output_path))


def value_counts(stats, feature_name: str) -> Optional[Dict[str, int]]:
    """{value: count} of a string feature from its rank histogram, most frequent first.

    {} when the split has no such feature; None when it has more distinct values than the
    histogram holds (TFDV keeps `StatsOptions.num_rank_histogram_buckets`, 1000 by default) or
    is not a string.
    """
    feature = find_feature(stats, feature_name)
    if feature is None:
        return {}
    if not feature.HasField("string_stats"):
        return None
    string_stats = feature.string_stats
    buckets = string_stats.rank_histogram.buckets
    if string_stats.unique > len(buckets):
        return None
    return {b.label: int(round(b.sample_count)) for b in buckets}


def find_feature(stats, name: str):
    """The statistics of feature `name` (by path or name), or None when absent or no stats."""
    if stats is None:
        return None
    for dataset in stats.datasets:
        for feature in dataset.features:
            if list(feature.path.step) == [name] or feature.name == name:
                return feature
    return None


def load_statistics(stats_dir: str, split: str, name: str = STATS_FILE):
    """A split's statistics: `FeatureStats.pb`, or another file of the split, e.g.
    TEXT_LENGTH_STATS_FILE."""
    import tensorflow_data_validation as tfdv

    return tfdv.load_stats_binary(fileio.join(stats_dir, features.split_dir_name(split), name))
