"""Text-length statistics, drift between training sets, and skew at scoring (in-memory Beam)."""
import json
import os
import shutil

import components  # noqa: F401  (legacy Keras before TensorFlow)
import pytest

from components import drift, features
from components import readers as rd
from components.errors import BlockingAnomaliesError, UserInputError
from components.example_validator import ExampleValidatorSettings
from components.schema_gen import load_schema
from components.scorer import ScoreSettings, check_skew, run_score
from components.statistics_gen import (STATS_FILE, TEXT_LENGTH, TEXT_LENGTH_STATS_FILE,
                                       load_statistics, run_statistics_gen, token_count)
from conftest import IN_MEMORY, REPO, write_examples

CLASSES = ["DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC"]
SCHEMA = os.path.join(REPO, "schemas", "schema.pbtxt")


def beam_options():
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(["--runner=DirectRunner"] + IN_MEMORY)


def short_text(i):
    return f"question {i} " + "about things " * (i % 4) + "?"  # 3 to 9 tokens


def long_text(i):
    return " ".join(f"word{j}" for j in range(40 + i % 10))  # 40 to 49 tokens


BALANCED = [(short_text(i), CLASSES[i % 6]) for i in range(120)]
SHIFTED = [(short_text(i), "DESC" if i % 5 else CLASSES[i % 6]) for i in range(120)]
LONG = [(long_text(i), CLASSES[i % 6]) for i in range(120)]


@pytest.fixture(scope="module")
def stats(tmp_path_factory):
    """StatisticsGen artifacts of three training sets: {name: stats dir}."""
    tmp = tmp_path_factory.mktemp("drift")
    out = {}
    for name, rows in (("balanced", BALANCED), ("shifted", SHIFTED), ("long", LONG)):
        examples = tmp / f"examples-{name}"
        splits = {"train": rows, "eval": rows[:12]} if name == "balanced" else {"train": rows}
        write_examples(examples, splits)
        out[name] = str(tmp / f"stats-{name}")
        paths = run_statistics_gen(str(examples), out[name], beam_options())
        assert paths == {s: os.path.join(out[name], f"Split-{s}", STATS_FILE) for s in splits}
    return out


def test_token_count_is_whitespace_tokens():
    assert token_count([b"  How far\tis it ?\n"]) == 5
    assert token_count([b""]) == 0 and token_count([b"   "]) == 0
    assert token_count(None) is None


def test_text_lengths_are_a_file_of_their_own(stats):
    import tensorflow_data_validation as tfdv

    main = load_statistics(stats["balanced"], "train")
    assert {f.path.step[0] for f in main.datasets[0].features} == {"text", "label"}
    # The curated schema still sees exactly the data's features: no anomaly.
    anomalies = tfdv.validate_statistics(main, load_schema(SCHEMA),
                                         environment=features.TRAINING)
    assert not anomalies.anomaly_info

    lengths = load_statistics(stats["balanced"], "train", TEXT_LENGTH_STATS_FILE)
    [feature] = lengths.datasets[0].features
    assert feature.path.step == [TEXT_LENGTH]
    expected = [len(t.split()) for t, _ in BALANCED]
    assert feature.num_stats.min == min(expected) and feature.num_stats.max == max(expected)
    assert feature.num_stats.mean == pytest.approx(sum(expected) / len(expected))
    assert os.path.exists(os.path.join(stats["balanced"], "Split-eval", TEXT_LENGTH_STATS_FILE))


def test_label_shift_is_blocking_drift_showing_both_distributions(stats, tmp_path):
    anomalies_path = str(tmp_path / drift.DRIFT_ANOMALIES_FILE)
    result = drift.check_drift(stats["shifted"], stats["balanced"], ExampleValidatorSettings(),
                               anomalies_path)
    assert result["blocking"]
    [message] = result["messages"]
    assert message.startswith("drift in 'label' on Split-train: L-infinity distance 0.67 > 0.1")
    assert "(previous: ABBR 0.17, DESC 0.17," in message
    assert "; now: ABBR 0.03, DESC 0.83" in message
    label = result["label"]
    assert label["previous"]["DESC"] == pytest.approx(1 / 6, abs=1e-4)
    assert label["current"]["DESC"] == pytest.approx(100 / 120, abs=1e-4)
    assert label["linf"] == pytest.approx(100 / 120 - 1 / 6) and label["threshold"] == 0.1
    assert result["text_length"]["jsd"] == 0 and not result["notes"]

    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    written = tfdv.load_anomalies_text(anomalies_path)
    assert list(written.anomaly_info) == ["label"]
    assert [r.type for r in written.anomaly_info["label"].reason] == [
        anomalies_pb2.AnomalyInfo.COMPARATOR_L_INFTY_HIGH]


def test_same_data_is_no_drift(stats):
    result = drift.check_drift(stats["balanced"], stats["balanced"], ExampleValidatorSettings())
    assert not result["blocking"] and result["messages"] == [] and result["notes"] == []
    assert result["label"]["linf"] == 0 and result["text_length"]["jsd"] == 0
    summary = result["text_length"]["current"]
    assert summary["min"] == 3 and summary["max"] == 9 and summary["count"] == 120
    assert 3 <= summary["p10"] <= summary["median"] <= summary["p90"] <= 9
    assert sum(count for _, _, count in summary["histogram"]) == pytest.approx(120, abs=0.5)


def test_longer_documents_are_text_length_drift(stats):
    result = drift.check_drift(stats["long"], stats["balanced"], ExampleValidatorSettings())
    assert result["blocking"] and result["label"]["linf"] == 0
    [message] = result["messages"]
    assert message.startswith("drift in 'text_length' on Split-train (whitespace tokens per "
                              "text): Jensen-Shannon divergence 1.00 > 0.1 (previous: mean 6")
    assert "; now: mean 44.5, p10 4" in message
    assert result["text_length"]["jsd"] > 0.9
    assert result["text_length"]["current"]["median"] >= 40


def test_drift_settings_warn_or_turn_comparisons_off(stats):
    warn = drift.check_drift(stats["shifted"], stats["balanced"],
                             ExampleValidatorSettings(drift_blocking=False))
    assert not warn["blocking"] and len(warn["messages"]) == 1
    off = drift.check_drift(stats["long"], stats["balanced"],
                            ExampleValidatorSettings(drift_text_length_jsd=0))
    assert not off["blocking"] and off["text_length"] == {"skipped": "turned off (threshold 0)"}
    assert off["notes"] == ["'text_length' not compared: turned off (threshold 0)"]
    loose = drift.check_drift(stats["shifted"], stats["balanced"],
                              ExampleValidatorSettings(drift_label_linf=0.7))
    assert not loose["blocking"] and loose["label"]["linf"] == pytest.approx(100 / 120 - 1 / 6)


def test_previous_artifact_without_text_lengths_compares_labels_only(stats, tmp_path):
    old = str(tmp_path / "old")
    shutil.copytree(stats["balanced"], old)
    os.remove(os.path.join(old, "Split-train", TEXT_LENGTH_STATS_FILE))
    result = drift.check_drift(stats["long"], old, ExampleValidatorSettings())
    assert not result["blocking"] and result["label"]["linf"] == 0
    assert "skipped" in result["text_length"]
    assert "previous" in result["notes"][0] and TEXT_LENGTH_STATS_FILE in result["notes"][0]


def test_drift_against_a_pushed_version(stats, tmp_path):
    version = tmp_path / "serving" / "1"
    version.mkdir(parents=True)
    files = drift.train_statistics_files(stats["balanced"])
    assert set(files) == {drift.TRAIN_STATS_FILE, drift.TRAIN_TEXT_LENGTH_STATS_FILE}
    for name, source in files.items():
        shutil.copyfile(source, version / name)
    result = drift.check_drift(stats["shifted"], str(version), ExampleValidatorSettings())
    assert result["blocking"] and result["text_length"]["jsd"] == 0



def test_thresholds_are_checked():
    with pytest.raises(UserInputError, match="drift_label_linf must be a number >= 0"):
        ExampleValidatorSettings(drift_label_linf=-0.1)
    with pytest.raises(UserInputError, match="skew_text_length_jsd"):
        ScoreSettings(skew_text_length_jsd=float("nan"))
    from pipeline import configs

    config = configs.load_config(None, {"example_validator": {"drift_label_linf": 0,
                                                              "drift_blocking": False}})
    assert config.example_validator.drift_label_linf == 0.0
    assert not config.example_validator.drift_blocking


def test_skew_needs_training_statistics_in_the_version(stats, tmp_path):
    split = os.path.join(stats["long"], "Split-train")
    result = drift.check_skew(str(tmp_path), os.path.join(split, STATS_FILE),
                              os.path.join(split, TEXT_LENGTH_STATS_FILE), 0.1, 0.1)
    assert result == {"skipped": drift.NO_TRAINING_STATISTICS}


# --------------------------------------------------------------- skew in a scoring job


def push_fake_model(version_dir, stats_dir):
    """A pushed version whose serving_default always answers DESC, with the training
    statistics the Pusher copies beside it."""
    import tensorflow as tf

    class AlwaysDesc(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text):
            n = tf.shape(text)[0]
            return {"probabilities": tf.tile([[1.0] + [0.0] * 5], [n, 1]),
                    "predicted_class": tf.fill([n], "DESC"),
                    "predicted_class_id": tf.zeros([n], tf.int64)}

    model = AlwaysDesc()
    tf.saved_model.save(model, str(version_dir),
                        signatures={"serving_default": model.serve.get_concrete_function()})
    (version_dir / "metadata.json").write_text(json.dumps({"classes": CLASSES}))
    shutil.copyfile(SCHEMA, version_dir / "schema.pbtxt")
    for name, source in drift.train_statistics_files(stats_dir).items():
        shutil.copyfile(source, version_dir / name)


def score(tmp_path, model_base, rows, name, **settings):
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_score(model_base, None, [str(data)], str(tmp_path / name), None, SCHEMA,
                     rd.ExampleGenSettings(), ScoreSettings(**settings), beam_options())


def test_scoring_summary_reports_skew_against_the_training_data(stats, tmp_path):
    push_fake_model(tmp_path / "textcnn" / "1", stats["balanced"])
    base = str(tmp_path / "textcnn")
    labelled = [{"text": t, "label": "HUM"} for t, _ in LONG[:30]]
    summary = score(tmp_path, base, labelled, "labelled")
    assert summary["scored"] == 30 and summary["accuracy"] == 0
    skew = summary["skew"]
    assert not skew["blocking"] and len(skew["messages"]) == 2  # reported, not blocking
    assert skew["messages"][0].startswith(
        "skew in 'label' between the model's training data and the scoring data: L-infinity "
        "distance 0.83 > 0.1 (training: ABBR 0.17,")
    assert "scoring: ABBR 0.00, DESC 0.00, ENTY 0.00, HUM 1.00" in skew["messages"][0]
    assert skew["messages"][1].startswith("skew in 'text_length'")
    assert skew["text_length"]["current"]["count"] == 30
    with open(tmp_path / "labelled" / "summary.json") as f:
        assert json.load(f)["skew"] == skew
    assert os.path.exists(tmp_path / "labelled" / drift.SKEW_ANOMALIES_FILE)

    with pytest.raises(BlockingAnomaliesError, match="skewed(.|\n)*'text_length'"):
        score(tmp_path, base, [{"text": t} for t, _ in LONG[:30]], "blocked", skew_blocking=True)
    assert not os.path.exists(tmp_path / "blocked" / "predictions")

    # Texts like the training data's, without labels: nothing to report.
    alike = score(tmp_path, base, [{"text": t} for t, _ in BALANCED], "alike",
                  skew_blocking=True)["skew"]
    assert not alike["blocking"] and not alike["messages"]
    assert alike["text_length"]["jsd"] == 0
    assert alike["label"] == {"skipped": "the scoring data has no labels"}

    # A version pushed before training statistics were: nothing to compare with.
    for name in (drift.TRAIN_STATS_FILE, drift.TRAIN_TEXT_LENGTH_STATS_FILE):
        os.remove(tmp_path / "textcnn" / "1" / name)
    older = check_skew(str(tmp_path / "textcnn" / "1"), str(tmp_path / "labelled"),
                       ScoreSettings())
    assert older == {"skipped": "the model version has no training statistics"}
