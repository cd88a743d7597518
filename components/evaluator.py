"""Evaluator: TFMA on Beam, on the test split (else eval), through the serving path.

The candidate is judged on the serialized-example signature, as TFX does; the label is the same
class index the model predicts, produced by the model's own `transform_features` signature
(TFMA's `preprocessing_function_names`, as in TFX's penguin example). Blessing: an absolute floor
on accuracy and, when a pushed baseline exists, a change threshold against it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence

from components import export, features, fileio
from components.artifacts import staged_output
from components.beam_pipeline import beam_pipeline
from components.errors import UserInputError

BLESSED = "BLESSED"
NOT_BLESSED = "NOT_BLESSED"
RESULT_FILE = "evaluation.json"
TFMA_DIR = "tfma"
CANDIDATE = "candidate"
BASELINE = "baseline"
ACCURACY = "sparse_categorical_accuracy"


@dataclasses.dataclass(frozen=True)
class EvaluatorSettings:
    """Blessing thresholds, with TFMA's semantics (higher accuracy is better)."""

    min_accuracy: float = 0.5  # value_threshold: the candidate's accuracy must be at least this
    max_accuracy_drop: float = 0.01  # change_threshold: candidate - baseline >= -max_accuracy_drop

    def __post_init__(self):
        if not 0.0 <= self.min_accuracy <= 1.0 or self.max_accuracy_drop < 0:
            raise UserInputError("evaluator.min_accuracy must be in [0, 1] and "
                                 "evaluator.max_accuracy_drop >= 0")


def eval_config(settings: EvaluatorSettings, num_classes: int, with_baseline: bool):
    import tensorflow_model_analysis as tfma

    def spec(name, is_baseline=False):
        return tfma.ModelSpec(
            name=name, signature_name=export.SERVING_EXAMPLES,
            preprocessing_function_names=[export.TRANSFORM_FEATURES],
            label_key=features.transformed_name(features.LABEL),
            prediction_key=export.PROBABILITIES, is_baseline=is_baseline)

    threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": settings.min_accuracy}))
    if with_baseline:
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER,
            absolute={"value": -settings.max_accuracy_drop}))
    return tfma.EvalConfig(
        model_specs=[spec(CANDIDATE)] + ([spec(BASELINE, True)] if with_baseline else []),
        slicing_specs=[
            tfma.SlicingSpec(),
            tfma.SlicingSpec(feature_keys=[features.LABEL]),
            tfma.SlicingSpec(feature_keys=[export.LENGTH_BUCKET]),
        ],
        metrics_specs=[
            tfma.MetricsSpec(metrics=[
                tfma.MetricConfig(class_name="ExampleCount"),
                # Thresholds judge the overall slice; the other slices are for reading.
                tfma.MetricConfig(class_name="SparseCategoricalAccuracy", per_slice_thresholds=[
                    tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()],
                                                 threshold=threshold)]),
                tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot"),
            ]),
        ])


def _slice_name(slice_key) -> str:
    import tensorflow_model_analysis as tfma

    return tfma.slicer.stringify_slice_key(
        tfma.slicer.deserialize_slice_key(slice_key)) or "Overall"


def _metrics_by_slice(tfma_dir: str, model_name: str, num_classes: int
                      ) -> Dict[str, Dict[str, Any]]:
    """{slice: {metric: value}} of one model ('' when TFMA evaluated a single model).

    Per-class precision, recall and F1 and macro-F1 come from TFMA's multi-class confusion
    matrix (top-1 prediction), which is also written out as `confusion_matrix[actual][predicted]`.
    """
    import tensorflow_model_analysis as tfma

    out: Dict[str, Dict[str, Any]] = {}
    for slice_metrics in tfma.load_metrics(tfma_dir):
        values = out.setdefault(_slice_name(slice_metrics.slice_key), {})
        for keyed in slice_metrics.metric_keys_and_values:
            if keyed.key.model_name == model_name and not keyed.key.is_diff and \
                    keyed.value.HasField("double_value"):
                value = keyed.value.double_value.value
                values[keyed.key.name] = None if math.isnan(value) else value
    for plots in tfma.load_plots(tfma_dir):
        values = out.setdefault(_slice_name(plots.slice_key), {})
        for keyed in plots.plot_keys_and_values:
            if keyed.key.model_name != model_name:
                continue
            matrices = keyed.value.multi_class_confusion_matrix_at_thresholds.matrices
            if matrices:
                matrix = [[0] * num_classes for _ in range(num_classes)]
                for entry in matrices[0].entries:
                    if 0 <= entry.actual_class_id < num_classes and \
                            0 <= entry.predicted_class_id < num_classes:
                        matrix[entry.actual_class_id][entry.predicted_class_id] = int(
                            round(entry.num_weighted_examples))
                values["confusion_matrix"] = matrix
                values.update(per_class_scores(matrix))
    return out


def per_class_scores(matrix: List[List[int]]) -> Dict[str, Optional[float]]:
    """Precision, recall and F1 per class, and macro-F1, from matrix[actual][predicted].

    Undefined precision or recall (no prediction or no example of a class) is None and counts as
    F1 0 in the macro mean, as scikit-learn's default does.
    """
    n = len(matrix)
    scores: Dict[str, Optional[float]] = {}
    f1s = []
    for c in range(n):
        tp = matrix[c][c]
        predicted = sum(matrix[a][c] for a in range(n))
        actual = sum(matrix[c])
        p = tp / predicted if predicted else None
        r = tp / actual if actual else None
        f1 = 2 * p * r / (p + r) if p and r else 0.0
        scores[f"precision/class_{c}"], scores[f"recall/class_{c}"] = p, r
        scores[f"f1/class_{c}"] = f1
        f1s.append(f1)
    scores["macro_f1"] = sum(f1s) / n if n else None
    return scores


def _failures(tfma_dir: str) -> List[str]:
    import tensorflow_model_analysis as tfma

    result = tfma.load_validation_result(tfma_dir)
    messages = []
    for failure in result.metric_validations_per_slice:
        for f in failure.failures:
            kind = "change" if f.metric_key.is_diff else "value"
            messages.append(
                f"{f.metric_key.name} ({kind}) = {f.metric_value.double_value.value:.4f} fails "
                f"{f.metric_threshold}".replace("\n", " ").strip())
    if result.missing_thresholds:
        messages.append(f"thresholds not computed: {list(result.missing_thresholds)}")
    return messages, result.validation_ok


def run_evaluator(examples_dir: str, model_dir: str, classes: Sequence[str],
                  baseline_dir: Optional[str], output_dir: str, settings: EvaluatorSettings,
                  beam_options) -> Dict[str, Any]:
    """Evaluates the candidate (and baseline); writes BLESSED or NOT_BLESSED and evaluation.json."""
    import tensorflow_model_analysis as tfma
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from components.statistics_gen import available_splits, split_data_pattern
    from components.transform import raw_feature_spec

    splits = available_splits(examples_dir)
    split = features.TEST if features.TEST in splits else features.EVAL
    config = eval_config(settings, len(classes), baseline_dir is not None)
    models = [tfma.default_eval_shared_model(model_dir, eval_config=config,
                                             model_name=CANDIDATE)]
    if baseline_dir:
        models.append(tfma.default_eval_shared_model(baseline_dir, eval_config=config,
                                                     model_name=BASELINE))
    with staged_output(output_dir) as tmp:
        tfma_dir = fileio.join(tmp, TFMA_DIR)
        source = tfxio.TFExampleRecord(
            split_data_pattern(examples_dir, split),
            schema=schema_utils.schema_from_feature_spec(raw_feature_spec()),
            raw_record_column_name=tfma.ARROW_INPUT_COLUMN,
            telemetry_descriptors=["textcnn_pipeline", "Evaluator"])
        with beam_pipeline(beam_options) as p:
            _ = (p
                 | "ReadExamples" >> source.BeamSource()
                 | "ExtractEvaluateAndWrite" >> tfma.ExtractEvaluateAndWriteResults(
                     eval_shared_model=models, eval_config=config, output_path=tfma_dir,
                     tensor_adapter_config=source.TensorAdapterConfig()))
        failures, ok = _failures(tfma_dir)
        candidate = _metrics_by_slice(tfma_dir, CANDIDATE if baseline_dir else "", len(classes))
        baseline = (_metrics_by_slice(tfma_dir, BASELINE, len(classes)) if baseline_dir
                    else None)
        result = {
            "blessed": bool(ok),
            "split": split,
            "classes": list(classes),
            "metrics": candidate,
            "baseline": baseline_dir,
            "baseline_metrics": baseline,
            "thresholds": dataclasses.asdict(settings),
            "failures": failures,
        }
        fileio.write_json(fileio.join(tmp, RESULT_FILE), result, indent=2, sort_keys=True)
        fileio.write_text(fileio.join(tmp, BLESSED if ok else NOT_BLESSED), "")
    return result
