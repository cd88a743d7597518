"""StatisticsGen: TFDV statistics of every split, computed in one Beam pipeline over TFXIO."""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import apache_beam as beam

from components import features
from components.artifacts import staged_output

STATS_FILE = "FeatureStats.pb"


def split_data_pattern(examples_dir: str, split: str) -> str:
    return os.path.join(examples_dir, features.split_dir_name(split), "*")


def available_splits(examples_dir: str) -> Sequence[str]:
    return [s for s in features.SPLITS
            if os.path.isdir(os.path.join(examples_dir, features.split_dir_name(s)))]


def run_statistics_gen(examples_dir: str, output_dir: str, beam_options) -> Dict[str, str]:
    """Writes `Split-<s>/FeatureStats.pb` for each split of `examples_dir`; returns the paths."""
    import tensorflow_data_validation as tfdv
    from tfx_bsl.public import tfxio

    splits = available_splits(examples_dir)
    paths = {}
    with staged_output(output_dir) as tmp:
        with beam.Pipeline(options=beam_options) as p:
            for split in splits:
                source = tfxio.TFExampleRecord(
                    split_data_pattern(examples_dir, split),
                    telemetry_descriptors=["textcnn_pipeline", "StatisticsGen"])
                path = os.path.join(tmp, features.split_dir_name(split), STATS_FILE)
                _ = (
                    p
                    | f"Read[{split}]" >> source.BeamSource()
                    | f"GenerateStatistics[{split}]" >> tfdv.GenerateStatistics(
                        tfdv.StatsOptions())
                    | f"WriteStatistics[{split}]" >> tfdv.WriteStatisticsToBinaryFile(path))
        for split in splits:
            paths[split] = os.path.join(output_dir, features.split_dir_name(split), STATS_FILE)
    return paths


def value_counts(stats, feature_name: str) -> Optional[Dict[str, int]]:
    """{value: count} of a string feature from its rank histogram, most frequent first.

    {} when the split has no such feature; None when it has more distinct values than the
    histogram holds (TFDV keeps `StatsOptions.num_rank_histogram_buckets`, 1000 by default) or
    is not a string.
    """
    for dataset in stats.datasets:
        for feature in dataset.features:
            if feature.path.step == [feature_name] or feature.name == feature_name:
                if not feature.HasField("string_stats"):
                    return None
                string_stats = feature.string_stats
                buckets = string_stats.rank_histogram.buckets
                if string_stats.unique > len(buckets):
                    return None
                return {b.label: int(round(b.sample_count)) for b in buckets}
    return {}


def load_statistics(stats_dir: str, split: str):
    import tensorflow_data_validation as tfdv

    return tfdv.load_stats_binary(
        os.path.join(stats_dir, features.split_dir_name(split), STATS_FILE))
