"""The release note a pushed version carries (`RELEASE_NOTE.md`, beside `metadata.json`).

Short and for people: how the model did against its baseline and the thresholds, what data it
was trained on (files, rows, the date window), drift against the last accepted data, its
hyperparameters with where each came from, how long training took, and the code that made it.
Everything in it is also in `metadata.json` and ML Metadata; this is the page a reviewer reads
before promoting or rolling back.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from components import features
from pipeline import configs, results, windows

NOTE_FILE = "RELEASE_NOTE.md"
_METRICS = ((results.ACCURACY, "accuracy"), ("macro_f1", "macro F1"))


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _evaluation(evaluation: results.EvaluatorResult) -> List[str]:
    overall, base = evaluation.overall, evaluation.baseline_overall
    thresholds = evaluation.thresholds or {}
    lines = [f"## Evaluation (Split-{evaluation.split})", "",
             f"Blessed: {'yes' if evaluation.blessed else 'no'}. Baseline: "
             + (f"`{evaluation.baseline}`" if evaluation.baseline
                else "none (no version served before)") + ".", "",
             "| metric | this model | baseline | change |", "|---|---|---|---|"]
    for key, name in _METRICS:
        if not isinstance(overall.get(key), (int, float)):
            continue
        ours, theirs = overall[key], base.get(key)
        change = (f"{ours - theirs:+.4f}" if isinstance(theirs, (int, float)) else "")
        lines.append(f"| {name} | {_number(ours)} | "
                     f"{_number(theirs) if theirs is not None else '-'} | {change} |")
    if thresholds:
        lines += ["", f"Thresholds: accuracy at least {thresholds.get('min_accuracy')}"
                  + (f", and at most {thresholds.get('max_accuracy_drop')} below the baseline's"
                     if evaluation.baseline else "") + "."]
    return lines


def _data(inputs: Sequence[Mapping[str, Any]], counts: results.ExampleGenResult,
          window: Optional[Mapping[str, Any]]) -> List[str]:
    lines = ["## Data", ""]
    for item in inputs:
        lines.append(f"- `{item['uri']}` ({item['what']})")
    if counts.read is not None:
        splits = ", ".join(f"{s} {counts.splits[s]}" for s in features.SPLITS
                           if counts.splits.get(s))
        lines.append(f"- rows: read {counts.read} = used {counts.written} ({splits}) + "
                     f"quarantined {counts.quarantined}")
        for reason, n in sorted(counts.quarantine_reasons.items()):
            lines.append(f"  - quarantined {n}: {reason}")
    if window:
        lines.append(f"- date {windows.summary_line(window)}")
    return lines


def _drift(validation: Optional[results.ExampleValidatorResult]) -> List[str]:
    lines = ["## Drift and anomalies", ""]
    if validation is None:
        return lines + ["Not checked."]
    drift = validation.drift or {}
    messages = list(drift.get("messages") or [])
    anomalies = [f"{split}: {m}" for split, found in validation.anomalies.items() for m in found]
    lines += [f"- {m}" for m in anomalies + messages]
    if anomalies or messages:
        if validation.allowed:
            lines.append("- accepted with --allow-anomalies")
    elif not validation.drift:
        lines.append("No anomalies; drift not measured (no earlier accepted data).")
    else:
        lines.append("No anomalies, and no drift beyond the thresholds against "
                     f"`{drift.get('previous_statistics')}`.")
    lines += [f"- {n}" for n in drift.get("notes") or []]
    return lines


def _hyperparameters(trainer: results.TrainerResult) -> List[str]:
    from components.tuner import format_value

    if not trainer.hyperparameters:
        return []
    lines = ["## Hyperparameters", "", "| name | value | from |", "|---|---|---|"]
    for name, choice in sorted(trainer.hyperparameters.items()):
        lines.append(f"| {name} | {format_value(choice.get('value'))} | "
                     f"{choice.get('source')} |")
    return lines


def _training(trainer: results.TrainerResult, seconds: Optional[float]) -> List[str]:
    took = trainer.train_seconds if trainer.train_seconds is not None else seconds
    lines = ["## Training", ""]
    lines.append(f"{trainer.epochs_run} epochs (best {trainer.best_epoch})"
                 + (f" in {took:.1f} s" if isinstance(took, (int, float)) else "")
                 + (f" on {trainer.workers} workers" if trainer.workers > 1 else "")
                 + (f", {trainer.strategy}" if trainer.strategy
                    and not trainer.strategy.startswith("_Default") else "")
                 + (f", {trainer.parameters:,} parameters" if trainer.parameters else "") + ".")
    accuracies = trainer.accuracies
    if accuracies:
        lines.append("Accuracy after training: " + ", ".join(
            f"{split} {acc:.4f}" for split, acc in sorted(accuracies.items())) + ".")
    return lines


def release_note(model_name: str, metadata: Mapping[str, Any],
                 stages: Mapping[str, results.StageDetails], inputs: Sequence[Mapping[str, Any]],
                 trainer_seconds: Optional[float] = None,
                 reused: Mapping[str, str] = {}) -> str:
    """The note, from what a pushed version records (`metadata`, see
    `pipeline.stages.push_metadata`), the run's typed stage details, its input files ({uri,
    what}) and the Trainer's time."""
    evaluation = stages.get(configs.EVALUATOR) or results.EvaluatorResult()
    counts = stages.get(configs.EXAMPLE_GEN) or results.ExampleGenResult()
    trainer = stages.get(configs.TRAINER) or results.TrainerResult()
    lines = [f"# {model_name}: pushed by run {metadata.get('run_id')}", "",
             f"Classes: {', '.join(map(str, metadata.get('classes') or [])) or '?'}. "
             f"Vocabulary: {metadata.get('vocabulary_size')} tokens.", ""]
    lines += _evaluation(evaluation) + [""]
    lines += _data(inputs, counts, metadata.get("window")) + [""]
    lines += _drift(stages.get(configs.EXAMPLE_VALIDATOR)) + [""]
    if reused.get(configs.TRAINER):
        lines += [f"The model was trained by run {reused[configs.TRAINER]} (reused)."]
    lines += _training(trainer, trainer_seconds) + [""]
    hyper = _hyperparameters(trainer)
    lines += hyper + ([""] if hyper else [])
    packages = metadata.get("packages") or {}
    lines += ["## Code", "",
              f"- git commit: {metadata.get('git_commit') or 'unknown (not a git checkout)'}",
              "- packages: " + ", ".join(f"{p} {v}" for p, v in sorted(packages.items())), ""]
    return "\n".join(lines)


def input_lines(files: Sequence[Any]) -> List[Dict[str, str]]:
    """The ExampleGen's input artifacts as {uri, what} (its content id or its file count)."""
    out = []
    for artifact in files:
        props = artifact.properties
        what = (f"sha256 {props['sha256']}" if props.get("sha256") else props.get("checksum")
                or f"{props.get('files')} files")
        out.append({"uri": artifact.uri, "what": str(what)})
    return out
