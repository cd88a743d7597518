"""ExampleValidator: each split's statistics against the schema; blocking anomalies stop the run."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Sequence

from components import features, fileio
from components.artifacts import staged_output
from components.errors import UserInputError
from components.statistics_gen import load_statistics, value_counts

ANOMALIES_FILE = "anomalies.pbtxt"


@dataclasses.dataclass(frozen=True)
class ExampleValidatorSettings:
    # A class with fewer training examples than this gets a warning (not a stop): the model
    # can hardly learn it, and its eval/test scores rest on a handful of documents.
    min_train_examples_per_class: int = 5
    # Drift between the training data of the previous run and of this one (components/drift.py):
    # the largest change of a class's share (TFDV's L-infinity distance), and the Jensen-Shannon
    # divergence of the text lengths in tokens. 0 turns a comparison off. Drift over a threshold
    # stops the run when drift_blocking is set, else it is a warning.
    drift_label_linf: float = 0.1
    drift_text_length_jsd: float = 0.1
    drift_blocking: bool = True

    def __post_init__(self):
        if self.min_train_examples_per_class < 0:
            raise UserInputError("example_validator.min_train_examples_per_class must be >= 0")
        for name in ("drift_label_linf", "drift_text_length_jsd"):
            check_threshold(f"example_validator.{name}", getattr(self, name))


def check_threshold(name: str, value: float) -> None:
    """A distance threshold: a number >= 0 (0 turns its comparison off)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise UserInputError(f"{name} must be a number >= 0 (0 turns the comparison off); "
                             f"got {value!r}")


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


def run_example_validator(stats_dir: str, schema, splits: Sequence[str], output_dir: str,
                          previous_stats_dir: Optional[str] = None,
                          settings: ExampleValidatorSettings = ExampleValidatorSettings()
                          ) -> Dict[str, Any]:
    """Writes `Split-<s>/anomalies.pbtxt` and, given the previous training statistics,
    `drift_anomalies.pbtxt`.

    Returns {"splits": {split: {"blocking": bool, "messages": [...]}}, "drift": the drift
    comparison (see `components.drift.check_drift`) or None}.
    """
    import tensorflow_data_validation as tfdv

    from components.drift import DRIFT_ANOMALIES_FILE, check_drift

    result = {}
    with staged_output(output_dir) as tmp:
        for split in splits:
            anomalies = tfdv.validate_statistics(
                load_statistics(stats_dir, split), schema, environment=features.TRAINING)
            split_dir = fileio.join(tmp, features.split_dir_name(split))
            fileio.makedirs(split_dir)
            tfdv.write_anomalies_text(anomalies, fileio.join(split_dir, ANOMALIES_FILE))
            result[split] = {"blocking": is_blocking(anomalies),
                             "messages": describe_anomalies(split, anomalies)}
        drift = None
        if previous_stats_dir and features.TRAIN in splits:
            drift = check_drift(stats_dir, previous_stats_dir, settings,
                                anomalies_path=fileio.join(tmp, DRIFT_ANOMALIES_FILE))
    return {"splits": result, "drift": drift}


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
