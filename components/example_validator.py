"""ExampleValidator: each split's statistics against the schema; blocking anomalies stop the run."""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

from components import features
from components.artifacts import staged_output
from components.statistics_gen import load_statistics

ANOMALIES_FILE = "anomalies.pbtxt"


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
