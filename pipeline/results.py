"""Typed stage results: what each stage reports, named once.

A stage's details are recorded as JSON (the run's summary.json, the ML Metadata store); the
modules that read them (the console summary, the report, `lineage`, the Python API, the
benchmark) read them through these types instead of spelling keys. `result_of(stage, details)`
takes the details of any age: a field an older record lacks is None (or empty), and a key
that no field names is kept in `extra`, so an old `summary.json` still reads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Type, TypeVar

from pipeline import configs

T = TypeVar("T", bound="StageDetails")


@dataclasses.dataclass(frozen=True)
class StageDetails:
    """The details of a stage, typed; `extra` holds recorded keys no field names."""

    extra: Dict[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_details(cls: Type[T], details: Optional[Mapping[str, Any]]) -> T:
        details = dict(details or {})
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in details.items() if k in names and v is not None}
        return cls(extra={k: v for k, v in details.items() if k not in names}, **known)


@dataclasses.dataclass(frozen=True)
class ExampleGenResult(StageDetails):
    read: Optional[int] = None
    written: Optional[int] = None
    quarantined: Optional[int] = None
    splits: Dict[str, int] = dataclasses.field(default_factory=dict)
    quarantine_reasons: Dict[str, int] = dataclasses.field(default_factory=dict)
    quarantine_sample: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    units_parsed: Optional[int] = None
    units_reused: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class StatisticsGenResult(StageDetails):
    splits: Dict[str, str] = dataclasses.field(default_factory=dict)  # split -> statistics
    label_counts: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SchemaGenResult(StageDetails):
    schema: Optional[str] = None
    origin: Optional[str] = None  # "curated" or "inferred"
    classes: List[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class ExampleValidatorResult(StageDetails):
    anomalies: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    drift: Optional[Dict[str, Any]] = None
    allowed: bool = False
    warnings: List[str] = dataclasses.field(default_factory=list)

    @property
    def count(self) -> int:
        """Anomalies found, drift included."""
        return (sum(len(v) for v in self.anomalies.values())
                + len((self.drift or {}).get("messages", [])))


@dataclasses.dataclass(frozen=True)
class TransformResult(StageDetails):
    vocabulary_size: Optional[int] = None
    max_len: Optional[int] = None
    max_len_source: str = "fixed"
    wide_input_dim: Optional[int] = None  # the wide features' n-grams; None: none computed
    warnings: List[str] = dataclasses.field(default_factory=list)
    token_lengths: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    classes: List[str] = dataclasses.field(default_factory=list)

    @property
    def train_truncated_share(self) -> Optional[float]:
        train = self.token_lengths.get("train") or {}
        return train["truncated"] / train["documents"] if train.get("documents") else None


@dataclasses.dataclass(frozen=True)
class TunerResult(StageDetails):
    algorithm: Optional[str] = None
    seed: Optional[int] = None
    trials_run: Optional[int] = None
    trials_failed: int = 0
    stopped_by_time: bool = False
    best_trial: Optional[Any] = None
    best_eval_accuracy: Optional[float] = None
    values: Dict[str, Any] = dataclasses.field(default_factory=dict)
    held: Dict[str, Any] = dataclasses.field(default_factory=dict)
    trials: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    warnings: List[str] = dataclasses.field(default_factory=list)
    search_seconds: Optional[float] = None
    objective: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TrainerResult(StageDetails):
    metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
    epochs_run: Optional[int] = None
    best_epoch: Optional[int] = None
    train_seconds: Optional[float] = None
    replicas: Optional[int] = None
    workers: int = 1
    strategy: Optional[str] = None
    model: Optional[str] = None
    parameters: Optional[int] = None
    # "cnn" (filter_sizes, num_filters, parameters) and, with the wide tower, "wide" (ngrams,
    # ngram_max, parameters)
    towers: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    # name -> {"value": ..., "source": "tuner" | "config" | "default"}
    hyperparameters: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)
    settings: Dict[str, Any] = dataclasses.field(default_factory=dict)
    warnings: List[str] = dataclasses.field(default_factory=list)

    @property
    def accuracies(self) -> Dict[str, float]:
        """{split: accuracy} of the trained model."""
        return {k[:-len("_accuracy")]: v for k, v in self.metrics.items()
                if k.endswith("_accuracy")}

    def towers_text(self) -> str:
        """The model's towers in words, e.g. "CNN (kernels 3,4,5 x 100 filters) + wide
        (95,559 n-grams up to 2 words)"; "" when the run did not record them."""
        parts = []
        cnn, wide = self.towers.get("cnn"), self.towers.get("wide")
        if cnn:
            parts.append(f"CNN (kernels {','.join(str(k) for k in cnn['filter_sizes'])} x "
                         f"{cnn['num_filters']} filters, {cnn['parameters']:,} parameters)")
        if wide:
            parts.append(f"wide (TF-IDF over {wide['ngrams']:,} n-grams of up to "
                         f"{wide['ngram_max']} words, {wide['parameters']:,} parameters)")
        return " + ".join(parts)


ACCURACY = "sparse_categorical_accuracy"
OVERALL = "Overall"


@dataclasses.dataclass(frozen=True)
class EvaluatorResult(StageDetails):
    blessed: Optional[bool] = None
    split: Optional[str] = None
    classes: List[str] = dataclasses.field(default_factory=list)
    metrics: Dict[str, Dict[str, Any]] = dataclasses.field(default_factory=dict)  # per slice
    baseline: Optional[str] = None
    baseline_metrics: Optional[Dict[str, Dict[str, Any]]] = None
    thresholds: Dict[str, Any] = dataclasses.field(default_factory=dict)
    failures: List[str] = dataclasses.field(default_factory=list)

    @property
    def overall(self) -> Dict[str, Any]:
        return self.metrics.get(OVERALL) or {}

    @property
    def baseline_overall(self) -> Dict[str, Any]:
        return (self.baseline_metrics or {}).get(OVERALL) or {}

    @property
    def accuracy(self) -> Optional[float]:
        return self.overall.get(ACCURACY)


@dataclasses.dataclass(frozen=True)
class PusherResult(StageDetails):
    pushed: bool = True  # False: the model was judged not blessed
    version: Optional[int] = None
    path: Optional[str] = None
    not_blessed: Optional[str] = None
    removed: List[str] = dataclasses.field(default_factory=list)  # old versions retention removed
    # The version already held this model (a push killed before it was recorded): not pushed
    # again; `served` says whether it is served (not when it was rolled back or replaced since).
    already_pushed: bool = False
    served: bool = True


RESULT_TYPES: Dict[str, Type[StageDetails]] = {
    configs.EXAMPLE_GEN: ExampleGenResult,
    configs.STATISTICS_GEN: StatisticsGenResult,
    configs.SCHEMA_GEN: SchemaGenResult,
    configs.EXAMPLE_VALIDATOR: ExampleValidatorResult,
    configs.TRANSFORM: TransformResult,
    configs.TUNER: TunerResult,
    configs.TRAINER: TrainerResult,
    configs.EVALUATOR: EvaluatorResult,
    configs.PUSHER: PusherResult,
}
assert set(RESULT_TYPES) == set(configs.STAGES)


def result_of(stage: str, details: Optional[Mapping[str, Any]]) -> StageDetails:
    """The typed details of `stage` (a stage this version does not know: `StageDetails`)."""
    return RESULT_TYPES.get(stage, StageDetails).from_details(details)


def stage_results(summary: Mapping[str, Any]) -> Dict[str, StageDetails]:
    """{stage: typed details} of a run summary (the last record of each stage)."""
    return {s.get("name"): result_of(s.get("name"), s.get("details"))
            for s in summary.get("stages") or []}
