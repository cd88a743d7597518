"""ExampleValidator: each split's statistics against the schema; blocking anomalies stop the run."""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Sequence

from components import features
from components.artifacts import staged_output
from components.errors import UserInputError
from components.statistics_gen import load_statistics, value_counts

ANOMALIES_FILE = "anomalies.pbtxt"


@dataclasses.dataclass(frozen=True)
class ExampleValidatorSettings:
    # A class with fewer training examples than this gets a warning (not a stop): the model
    # can hardly learn it, and its eval/test scores rest on a handful of documents.
    min_train_examples_per_class: int = 5

    def __post_init__(self):
        if self.min_train_examples_per_class < 0:
            raise UserInputError("example_validator.min_train_examples_per_class must be >= 0")


def describe_anomalies(split: str, anomalies) -> List[str]:
    """One readable line per anomalous feature: split, feature, what is wrong."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    lines = []
    for name, info in sorted(anomalies.anomaly_info.items()):
        severity = anomalies_pb2.AnomalyInfo.Severity.Name(info.severity)
        kinds = ", ".join(anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason)
        lines.append(f"split {split!r}, feature {name!r}: {info.description or info.short_description}"
                     f" [{kinds}; {severity}]")
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        lines.append(f"split {split!r}, dataset: {info.description}")
    return lines


def is_blocking(anomalies) -> bool:
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    infos = list(anomalies.anomaly_info.values())
    if anomalies.HasField("dataset_anomaly_info"):
        infos.append(anomalies.dataset_anomaly_info)
    return any(i.severity == anomalies_pb2.AnomalyInfo.ERROR for i in infos)


def run_example_validator(stats_dir: str, schema, splits: Sequence[str], output_dir: str
                          ) -> Dict[str, dict]:
    """Writes `Split-<s>/anomalies.pbtxt`; returns {split: {"blocking": bool, "messages": [...]}}."""
    import tensorflow_data_validation as tfdv

    result = {}
    with staged_output(output_dir) as tmp:
        for split in splits:
            anomalies = tfdv.validate_statistics(
                load_statistics(stats_dir, split), schema, environment=features.TRAINING)
            split_dir = os.path.join(tmp, features.split_dir_name(split))
            os.makedirs(split_dir)
            tfdv.write_anomalies_text(anomalies, os.path.join(split_dir, ANOMALIES_FILE))
            result[split] = {"blocking": is_blocking(anomalies),
                             "messages": describe_anomalies(split, anomalies)}
    return result


def rare_class_warnings(stats_dir: str, classes: Sequence[str],
                        settings: ExampleValidatorSettings) -> List[str]:
    """One line per class with fewer training examples than the settings ask for."""
    counts = value_counts(load_statistics(stats_dir, features.TRAIN), features.LABEL)
    if counts is None:  # more distinct labels than the statistics keep: nothing to compare
        return []
    return [f"class {c!r} has {counts.get(c, 0)} training example(s), fewer than "
            f"{settings.min_train_examples_per_class}: expect poor recall on it and noisy "
            "eval/test scores for it"
            for c in classes if counts.get(c, 0) < settings.min_train_examples_per_class]
