"""Drift and skew: how far the label and text-length distributions of two datasets are apart.

Drift compares Split-train of this run with the training data of an earlier run; skew compares
the data being scored with the training data of the model scoring it (the Pusher copies the
train split's statistics into the version as TRAIN_STATS_FILE and TRAIN_TEXT_LENGTH_STATS_FILE).
Both use TFDV's own comparators on a small schema built for the purpose: the L-infinity distance
between the label shares, and the Jensen-Shannon divergence between the histograms of
`text_length` (StatisticsGen's `TextLengthStats.pb`). A threshold of 0 turns its comparison off.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional

from components import features, fileio
from components.schema_gen import sort_classes
from components.statistics_gen import STATS_FILE, TEXT_LENGTH, TEXT_LENGTH_STATS_FILE, \
    find_feature, value_counts

TRAIN_STATS_FILE = "train_FeatureStats.pb"
TRAIN_TEXT_LENGTH_STATS_FILE = "train_TextLengthStats.pb"
DRIFT_ANOMALIES_FILE = "drift_anomalies.pbtxt"
SKEW_ANOMALIES_FILE = "skew_anomalies.pbtxt"
DRIFT = "drift"
SKEW = "skew"
NO_TRAINING_STATISTICS = "the model version has no training statistics"

_COMPARATOR_ANOMALIES = ("COMPARATOR_L_INFTY_HIGH", "COMPARATOR_JENSEN_SHANNON_DIVERGENCE_HIGH")
_QUANTILES = {"p10": 0.1, "p90": 0.9}


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison: its name in messages ("previous", "now", "training",
    "scoring"), the statistics holding `label` and those holding `text_length` (None: absent)."""
    name: str
    labels: Any = None
    text_length: Any = None


def train_statistics_files(stats_dir: str) -> Dict[str, str]:
    """{file name in a pushed version: source path} of a StatisticsGen artifact's Split-train
    statistics, for the Pusher's `extra_files`; files the artifact lacks are left out."""
    split_dir = fileio.join(stats_dir, features.split_dir_name(features.TRAIN))
    files = {TRAIN_STATS_FILE: fileio.join(split_dir, STATS_FILE),
             TRAIN_TEXT_LENGTH_STATS_FILE: fileio.join(split_dir, TEXT_LENGTH_STATS_FILE)}
    return {name: path for name, path in files.items() if fileio.exists(path)}


def check_drift(current_stats_dir: str, previous_stats_dir: str, settings,
                anomalies_path: Optional[str] = None) -> Dict[str, Any]:
    """Split-train of `current_stats_dir` against the training data of `previous_stats_dir`.

    Both are StatisticsGen artifacts (`Split-train/*.pb`); the previous one may also be a
    pushed version holding TRAIN_STATS_FILE / TRAIN_TEXT_LENGTH_STATS_FILE. `settings` is an
    ExampleValidatorSettings (drift_label_linf, drift_text_length_jsd, drift_blocking).
    Returns the result of `compare_statistics`; the drift anomalies go to `anomalies_path`.
    """
    return compare_statistics(
        _training_side("previous", previous_stats_dir), _training_side("now", current_stats_dir),
        settings.drift_label_linf, settings.drift_text_length_jsd, mode=DRIFT,
        where="on Split-train", blocking=settings.drift_blocking, anomalies_path=anomalies_path)


def check_skew(model_dir: str, label_stats_path: str, text_length_stats_path: str,
               label_linf: float, text_length_jsd: float, blocking: bool = False,
               anomalies_path: Optional[str] = None) -> Dict[str, Any]:
    """The scoring data's statistics against the training statistics pushed with the model.

    {"skipped": NO_TRAINING_STATISTICS} when the version has none (pushed before they were);
    else the result of `compare_statistics`, "blocking" only when `blocking` is set.
    """
    training = Side("training", _load(fileio.join(model_dir, TRAIN_STATS_FILE)),
                    _load(fileio.join(model_dir, TRAIN_TEXT_LENGTH_STATS_FILE)))
    if training.labels is None and training.text_length is None:
        return {"skipped": NO_TRAINING_STATISTICS}
    scoring = Side("scoring", _load(label_stats_path), _load(text_length_stats_path))
    return compare_statistics(training, scoring, label_linf, text_length_jsd, mode=SKEW,
                              where="between the model's training data and the scoring data",
                              blocking=blocking, anomalies_path=anomalies_path)


def compare_statistics(previous: Side, current: Side, label_linf: float, text_length_jsd: float,
                       mode: str = DRIFT, where: str = "", blocking: bool = True,
                       anomalies_path: Optional[str] = None) -> Dict[str, Any]:
    """Compares `label` (L-infinity) and `text_length` (Jensen-Shannon divergence) with TFDV's
    drift comparators (mode DRIFT: `current` against `previous`) or skew comparators (SKEW:
    `previous` is the training data, `current` the serving data).

    Returns {"blocking", "messages" (one line per feature over its threshold, with both
    distributions), "notes" (comparisons skipped, and why), "label": {"previous", "current"
    (class shares), "linf", "threshold"} or {"skipped": why}, "text_length": {"previous",
    "current" (mean, quantiles, histogram), "jsd", "threshold"} or {"skipped": why}}.
    Writes TFDV's comparator anomalies to `anomalies_path` when given.
    """
    import tensorflow_data_validation as tfdv

    label = _label_comparison(previous, current, label_linf)
    length = _text_length_comparison(previous, current, text_length_jsd)
    parts = {features.LABEL: label, TEXT_LENGTH: length}
    anomalies = _validate(previous, current, mode,
                          {name: part for name, part in parts.items() if "skipped" not in part})
    if anomalies_path:
        tfdv.write_anomalies_text(anomalies, anomalies_path)
    messages = []
    if "skipped" not in label:
        measured = _measurement(anomalies, mode, features.LABEL)
        label["linf"] = measured if measured is not None else _linf(label)
        if features.LABEL in anomalies.anomaly_info:
            messages.append(_label_message(mode, where, previous, current, label))
    if "skipped" not in length:
        length["jsd"] = _measurement(anomalies, mode, TEXT_LENGTH)
        if TEXT_LENGTH in anomalies.anomaly_info:
            messages.append(_text_length_message(mode, where, previous, current, length))
    notes = [f"{name!r} not compared: {part['skipped']}" for name, part in parts.items()
             if "skipped" in part]
    return {"blocking": blocking and bool(messages), "messages": messages, "notes": notes,
            **parts}


def _validate(previous: Side, current: Side, mode: str, compared: Dict[str, Dict[str, Any]]):
    """TFDV's comparator anomalies (and measurements) for the compared features."""
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    if not compared:
        return anomalies_pb2.Anomalies()
    schema = _comparator_schema(mode, compared)
    base, other = _combined(previous, compared), _combined(current, compared)
    if mode == DRIFT:
        found = tfdv.validate_statistics(other, schema, previous_statistics=base)
    else:
        found = tfdv.validate_statistics(base, schema, serving_statistics=other)
    return _comparator_anomalies(found)


def _load(path: str):
    import tensorflow_data_validation as tfdv

    return tfdv.load_stats_binary(path) if fileio.exists(path) else None


def _training_side(name: str, stats_dir: str) -> Side:
    """Split-train of a StatisticsGen artifact, or the training statistics of a pushed version."""
    split_dir = fileio.join(stats_dir, features.split_dir_name(features.TRAIN))
    if fileio.isdir(split_dir):
        return Side(name, _load(fileio.join(split_dir, STATS_FILE)),
                    _load(fileio.join(split_dir, TEXT_LENGTH_STATS_FILE)))
    return Side(name, _load(fileio.join(stats_dir, TRAIN_STATS_FILE)),
                _load(fileio.join(stats_dir, TRAIN_TEXT_LENGTH_STATS_FILE)))


def _label_comparison(previous: Side, current: Side, threshold: float) -> Dict[str, Any]:
    """{"previous", "current": {class: share} over the classes of both, "threshold"}, or
    {"skipped": why}."""
    if threshold == 0:
        return {"skipped": "turned off (threshold 0)"}
    counts_of = {}
    for key, side in (("previous", previous), ("current", current)):
        if side.labels is None:
            return {"skipped": f"the {side.name} statistics have no {STATS_FILE}"}
        counts = value_counts(side.labels, features.LABEL)
        if counts is None:
            return {"skipped": f"the {side.name} data has more distinct labels than the "
                               "statistics keep"}
        if not sum(counts.values()):
            return {"skipped": f"the {side.name} data has no labels"}
        counts_of[key] = counts
    classes = sort_classes(set(counts_of["previous"]) | set(counts_of["current"]))
    shares = {key: {c: round(counts.get(c, 0) / sum(counts.values()), 4) for c in classes}
              for key, counts in counts_of.items()}
    return {"previous": shares["previous"], "current": shares["current"], "threshold": threshold}


def _text_length_comparison(previous: Side, current: Side, threshold: float) -> Dict[str, Any]:
    """{"previous", "current": summaries, "threshold"}, or {"skipped": why}."""
    if threshold == 0:
        return {"skipped": "turned off (threshold 0)"}
    summaries = {}
    for key, side in (("previous", previous), ("current", current)):
        if side.text_length is None:
            return {"skipped": f"the {side.name} statistics have no {TEXT_LENGTH_STATS_FILE} "
                               "(made before text lengths were recorded)"}
        feature = find_feature(side.text_length, TEXT_LENGTH)
        if feature is None or not feature.num_stats.common_stats.num_non_missing:
            return {"skipped": f"the {side.name} data has no texts"}
        summaries[key] = _length_summary(feature.num_stats)
    return {"previous": summaries["previous"], "current": summaries["current"],
            "threshold": threshold}


def _length_summary(num_stats) -> Dict[str, Any]:
    """Count, mean, quantiles and the equal-width histogram (the one the divergence uses)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    quantiles = {}
    for histogram in num_stats.histograms:
        if histogram.type == statistics_pb2.Histogram.QUANTILES and histogram.buckets:
            buckets = histogram.buckets
            quantiles = {name: buckets[max(0, round(q * len(buckets)) - 1)].high_value
                         for name, q in _QUANTILES.items()}
    summary = {"count": int(num_stats.common_stats.num_non_missing),
               "mean": round(num_stats.mean, 2), "min": num_stats.min,
               "p10": quantiles.get("p10"), "median": num_stats.median,
               "p90": quantiles.get("p90"), "max": num_stats.max}
    summary["histogram"] = [
        [round(b.low_value, 2), round(b.high_value, 2), round(b.sample_count, 2)]
        for h in num_stats.histograms if h.type == statistics_pb2.Histogram.STANDARD
        for b in h.buckets]
    return summary


def _comparator_schema(mode: str, compared: Dict[str, Dict[str, Any]]):
    """A schema of only the compared features, each with its drift or skew comparator."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    if features.LABEL in compared:
        feature = schema.feature.add(name=features.LABEL, type=schema_pb2.BYTES)
        _comparator(feature, mode).infinity_norm.threshold = compared[features.LABEL]["threshold"]
    if TEXT_LENGTH in compared:
        feature = schema.feature.add(name=TEXT_LENGTH, type=schema_pb2.INT)
        _comparator(feature, mode).jensen_shannon_divergence.threshold = (
            compared[TEXT_LENGTH]["threshold"])
    return schema


def _comparator(feature, mode: str):
    return feature.drift_comparator if mode == DRIFT else feature.skew_comparator


def _combined(side: Side, compared: Dict[str, Any]):
    """One dataset holding the compared features of a side (they live in two files)."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    stats = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = stats.datasets.add()
    for name, source in ((features.LABEL, side.labels), (TEXT_LENGTH, side.text_length)):
        if name in compared:
            dataset.num_examples = max(dataset.num_examples, source.datasets[0].num_examples)
            dataset.features.add().CopyFrom(find_feature(source, name))
    return stats


def _comparator_anomalies(anomalies):
    """Only the comparators' findings: the small schema says nothing else worth reporting."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    kinds = {anomalies_pb2.AnomalyInfo.Type.Value(k) for k in _COMPARATOR_ANOMALIES}
    result = anomalies_pb2.Anomalies()
    result.CopyFrom(anomalies)
    result.ClearField("dataset_anomaly_info")
    for name in list(result.anomaly_info):
        info = result.anomaly_info[name]
        reasons = [r for r in info.reason if r.type in kinds]
        if reasons:
            del info.reason[:]
            info.reason.extend(reasons)
        else:
            del result.anomaly_info[name]
    return result


def _measurement(anomalies, mode: str, name: str) -> Optional[float]:
    """TFDV's own measured distance for a feature (recorded whether or not over threshold)."""
    for info in anomalies.drift_skew_info:
        if list(info.path.step) == [name]:
            measurements = info.drift_measurements if mode == DRIFT else info.skew_measurements
            for m in measurements:
                return float(m.value)
    return None


def _linf(label: Dict[str, Any]) -> float:
    """The largest change of a class's share (what TFDV measures on the rank histograms)."""
    return max(abs(label["current"][c] - label["previous"][c]) for c in label["current"])


def _what(mode: str, name: str, where: str) -> str:
    return f"{mode} in {name!r} {where}".rstrip()


def _label_message(mode: str, where: str, previous: Side, current: Side,
                   label: Dict[str, Any]) -> str:
    def shares(side: Dict[str, float]) -> str:
        return ", ".join(f"{c} {share:.2f}" for c, share in side.items())

    return (f"{_what(mode, features.LABEL, where)}: L-infinity distance {label['linf']:.2f} > "
            f"{label['threshold']:g} ({previous.name}: {shares(label['previous'])}; "
            f"{current.name}: {shares(label['current'])})")


def _text_length_message(mode: str, where: str, previous: Side, current: Side,
                         length: Dict[str, Any]) -> str:
    def summary(s: Dict[str, Any]) -> str:
        return ", ".join(f"{k} {s[k]:g}" for k in ("mean", "p10", "median", "p90", "max")
                         if s[k] is not None)

    jsd = "n/a" if length["jsd"] is None else f"{length['jsd']:.2f}"
    return (f"{_what(mode, TEXT_LENGTH, where)} (whitespace tokens per text): Jensen-Shannon "
            f"divergence {jsd} > {length['threshold']:g} ({previous.name}: "
            f"{summary(length['previous'])}; {current.name}: {summary(length['current'])})")
