"""The Tuner stage: its settings and space, the search itself, and the pipeline around it."""
import json
import os

import pytest

from components.errors import UserInputError
from components.model import ModelSettings
from components.trainer import TrainerSettings
from components.tuner import (BEST_FILE, TRIALS_FILE, TunerSettings, apply_hyperparameters,
                              decode_values, format_value, resolve_space, run_tuner,
                              with_values)
from conftest import IN_MEMORY, run_cli
from pipeline import configs
from test_cli import TINY_TRAINER, summary_of, trec_like, write_csv
from test_trainer import make_transformed

SMALL = TrainerSettings(model=ModelSettings(embedding_dim=8, num_filters=4), batch_size=8)


# --- settings and space (no TensorFlow) -------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"algorithm": "grid"}, "tuner.algorithm must be one of"),
    ({"max_trials": 0}, "at least 1"),
    ({"max_seconds": -1.0}, "must not be negative"),
    ({"space": {"dropout": [0.3]}}, "tuner.space.dropout: not a hyperparameter"),
    ({"space": {"dropout_rate": []}}, "an empty list"),
    ({"space": {"dropout_rate": [0.3, 0.3]}}, "listed twice"),
    ({"space": {"dropout_rate": 0.3}}, "a list of values or a range"),
    ({"space": {"dropout_rate": {"min": 0.1}}}, "needs min and max"),
    ({"space": {"dropout_rate": {"min": 0.5, "max": 0.1}}}, "min must be below max"),
    ({"space": {"num_filters": {"min": 8, "max": 32.5}}}, "a whole number"),
    ({"space": {"pooling": {"min": 1, "max": 2}}}, "only a number can be a range"),
    ({"space": {"learning_rate": {"min": 0, "max": 1, "sampling": "log"}}}, "needs min > 0"),
    ({"space": {"filter_sizes": [3, 4]}}, "each value is a list of kernel sizes"),
    ({"space": {"multichannel": [0, 1]}}, "the values are true and false"),
    ({"space": {"batch_size": [32, 40.5]}}, "40.5 is not a whole number"),
    ({"space": {"dropout_rate": ["high"]}}, "'high' is not a number"),
    ({"space": {"num_filters": {"min": 8, "max": 32, "step": 0}}}, "step must be above 0"),
    ({"space": {"dropout_rate": {"min": 0.0, "max": 0.5, "step": 1}}}, "leaves only min"),
    ({"space": {"num_filters": {"min": 8, "max": 32, "step": 1, "sampling": "log"}}},
     "with log sampling above 1"),
])
def test_bad_tuner_settings_name_the_problem(kwargs, message):
    with pytest.raises(UserInputError, match=message):
        TunerSettings(**kwargs)


def test_space_is_checked_against_the_trainer_settings():
    with pytest.raises(UserInputError, match=r"tuner.space.dropout_rate: 1.5 is not a valid"):
        resolve_space(TunerSettings(space={"dropout_rate": [0.5, 1.5]}), SMALL)
    with pytest.raises(UserInputError, match=r"tuner.space.num_filters: 0 is not a valid"):
        resolve_space(TunerSettings(space={"num_filters": [0, 100]}), SMALL)
    with pytest.raises(UserInputError, match="multichannel applies to pretrained vectors"):
        resolve_space(TunerSettings(space={"multichannel": [False, True]}), SMALL)
    # The default space depends on the embeddings: a size for random vectors, modes for GloVe.
    space, held = resolve_space(TunerSettings(), SMALL)
    assert "embedding_dim" in space and "multichannel" not in space and held == {}
    glove = TrainerSettings(model=ModelSettings(embeddings="vectors.txt"))
    space, _ = resolve_space(TunerSettings(), glove)
    assert {"multichannel", "embeddings_trainable", "unknown_vectors"} <= set(space)
    assert "embedding_dim" not in space
    # Settings given explicitly are held at their value, not searched.
    space, held = resolve_space(TunerSettings(space={"dropout_rate": [0.3], "num_filters": [2]}),
                                SMALL, held=["num_filters", "learning_rate"])
    assert space == {"dropout_rate": [0.3]} and held == {"num_filters": 4}
    # Pretrained vectors given as tuned: multichannel (both kinds) would drop that choice.
    space, held = resolve_space(TunerSettings(), glove, held=["embeddings_trainable"])
    assert held == {"embeddings_trainable": False, "multichannel": False}
    assert "multichannel" not in space and "unknown_vectors" in space
    with pytest.raises(UserInputError, match="embedding_dim does not apply"):
        resolve_space(TunerSettings(space={"embedding_dim": [50, 100]}), glove)
    with pytest.raises(UserInputError, match="nothing to search"):
        resolve_space(TunerSettings(space={"num_filters": [2, 8]}), SMALL, held=["num_filters"])


def test_a_list_of_mixed_numbers_and_log_ranges_declare_in_keras_tuner():
    import keras_tuner as kt

    from components.tuner import _Search

    space = {"max_norm": [0, 3.0], "batch_size": [32.0, 64], "num_filters": {
        "min": 50, "max": 400, "sampling": "log"}, "learning_rate": {
        "min": 0.0001, "max": 0.01, "sampling": "log"}}
    tuner = TunerSettings(space=space)
    search = _Search("unused", {}, SMALL, tuner, resolve_space(tuner, SMALL)[0], None)
    values = search.declare(kt.HyperParameters())
    assert values["max_norm"] == 0.0 and values["batch_size"] == 32
    assert 50 <= values["num_filters"] <= 400 and isinstance(values["num_filters"], int)
    assert with_values(SMALL, values).batch_size == 32


def test_best_values_apply_unless_the_config_gives_them():
    best = {"dropout_rate": 0.3, "filter_sizes": [2, 3], "learning_rate": 0.003,
            "batch_size": 32}
    glove = TrainerSettings(model=ModelSettings(embeddings="vectors.txt"))
    settings, sources = apply_hyperparameters(
        glove, {"multichannel": True, "dropout_rate": 0.3}, given=["embeddings_trainable"])
    assert not settings.model.multichannel and sources["multichannel"]["source"] == "config"
    settings, sources = apply_hyperparameters(SMALL, best, given=["learning_rate"])
    assert settings.model.dropout_rate == 0.3 and settings.model.filter_sizes == (2, 3)
    assert settings.batch_size == 32 and settings.learning_rate == SMALL.learning_rate
    assert sources["dropout_rate"] == {"value": 0.3, "source": "tuner"}
    assert sources["learning_rate"] == {"value": 0.001, "source": "config"}
    assert sources["num_filters"] == {"value": 4, "source": "default"}
    assert decode_values({"filter_sizes": "1,2", "multichannel": "true", "tuner/epochs": 3}) == {
        "filter_sizes": [1, 2], "multichannel": True}
    with pytest.raises(UserInputError, match="not hyperparameters"):
        with_values(SMALL, {"epochs": 3})


def test_config_records_the_keys_it_was_given(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[trainer]\nlearning_rate = 0.01\n[trainer.model]\ndropout_rate = 0.2\n'
                    '[tuner]\nenabled = true\n[tuner.space]\nnum_filters = [2, 4]\n')
    config = configs.load_config(str(path), {"trainer": {"model": {"embeddings": None}},
                                             "tuner": {"max_trials": 3}})
    assert config.tuner.enabled and config.tuner.space == {"num_filters": [2, 4]}
    assert "tuner.space" in config.given_keys and "tuner.max_trials" in config.given_keys
    assert configs.given_hyperparameters(config) == ["dropout_rate", "learning_rate"]
    path.write_text('given_keys = ["trainer.learning_rate"]\n')
    with pytest.raises(UserInputError, match="given_keys"):
        configs.load_config(str(path), {})


# --- the search -------------------------------------------------------------------------------

SPACE = {"num_filters": [2, 6], "dropout_rate": [0.2, 0.5],
         "learning_rate": {"min": 0.001, "max": 0.03, "sampling": "log"}}


@pytest.fixture(scope="module")
def transformed(tmp_path_factory):
    from apache_beam.options.pipeline_options import PipelineOptions

    out, _ = make_transformed(tmp_path_factory.mktemp("tuner"), PipelineOptions(IN_MEMORY))
    return out


def test_a_search_is_repeatable_and_writes_its_trials(transformed, tmp_path):
    tuner = TunerSettings(enabled=True, max_trials=2, epochs=1, space=SPACE, seed=7)
    first = run_tuner(transformed, str(tmp_path / "a"), SMALL, tuner)
    again = run_tuner(transformed, str(tmp_path / "b"), SMALL, tuner)
    assert first["trials_run"] == 2 and first["trials_failed"] == 0
    assert [t["values"] for t in first["trials"]] == [t["values"] for t in again["trials"]]
    assert [t["eval_accuracy"] for t in first["trials"]] == [t["eval_accuracy"]
                                                             for t in again["trials"]]
    assert first["values"] == again["values"] and first["best_trial"] == again["best_trial"]
    with open(tmp_path / "a" / BEST_FILE) as f:
        best = json.load(f)
    with open(tmp_path / "a" / TRIALS_FILE) as f:
        trials = json.load(f)["trials"]
    assert best["values"] == first["values"] and set(best["values"]) == set(SPACE)
    assert len(trials) == 2 and all(t["status"] == "completed" and t["epochs"] == 1
                                    and t["seconds"] > 0 for t in trials)
    # The objective is accuracy on Split-eval's 6 texts (make_transformed): a count out of 6,
    # not a loss, nor accuracy on the 47 training texts.
    for t in trials:
        correct = t["eval_accuracy"] * 6
        assert 0 <= correct <= 6 and abs(correct - round(correct)) < 1e-6, t
    assert best["best_eval_accuracy"] == max(t["eval_accuracy"] for t in trials)

    # One worker's Trainer (`train`) takes the search's values; the config's own still win.
    config = tmp_path / "train.toml"
    config.write_text("[trainer]\nepochs = 1\nbatch_size = 8\n[trainer.model]\n"
                      "embedding_dim = 8\nnum_filters = 4\n")
    proc = run_cli("train", "--transform-dir", transformed, "--output", str(tmp_path / "t"),
                   "--config", str(config), "--hyperparameters", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    chosen = {k: v for k, v in best["values"].items() if k != "num_filters"}
    for name, value in chosen.items():
        assert f"{name} {format_value(value)} (tuner)" in proc.stdout
    assert "num_filters 4 (config)" in proc.stdout
    with open(tmp_path / "t" / "history.json") as f:
        used = json.load(f)["settings"]
    assert used["model"]["num_filters"] == 4
    assert used["model"]["dropout_rate"] == best["values"]["dropout_rate"]
    assert used["learning_rate"] == best["values"]["learning_rate"]


def test_bayesian_search_goes_past_its_random_start(transformed, tmp_path):
    # 3 trials: 2 random (at most half the budget), then one the Gaussian process proposes.
    tuner = TunerSettings(enabled=True, algorithm="bayesian", max_trials=3, epochs=1,
                          space=SPACE)
    result = run_tuner(transformed, str(tmp_path / "b"), SMALL, tuner)
    assert result["trials_run"] == 3 and result["trials_failed"] == 0
    assert len({json.dumps(t["values"], sort_keys=True) for t in result["trials"]}) == 3


def test_the_time_cap_stops_the_search(transformed, tmp_path):
    tuner = TunerSettings(enabled=True, max_trials=5, epochs=3, space=SPACE,
                          algorithm="hyperband", max_seconds=0.001)
    result = run_tuner(transformed, str(tmp_path / "t"), SMALL, tuner)
    assert result["stopped_by_time"] and result["trials_run"] == 1
    assert result["trials"][0]["epochs"] == 1  # stopped at the end of its first epoch
    # 3 epochs and factor 3: brackets of 2 trials, and of 3 then 1; 5 trials cut that short.
    assert result["warnings"] and "needs 6 trials for one iteration" in result["warnings"][0]


def test_a_search_whose_trials_all_fail_says_why(transformed, tmp_path, monkeypatch):
    from components import tuner as tuner_module

    def broken(self, hp):
        raise ValueError("no model today")

    monkeypatch.setattr(tuner_module._Search, "build", broken)
    settings = TunerSettings(enabled=True, max_trials=2, epochs=1, space=SPACE)
    with pytest.raises(RuntimeError, match="every Tuner trial failed; the first: .*no model") \
            as failed:
        run_tuner(transformed, str(tmp_path / "f"), SMALL, settings)
    trials = failed.value.details["trials"]  # recorded with the failed stage
    assert [t["status"] for t in trials] == ["failed", "failed"]
    assert all("no model today" in t["error"] for t in trials)
    assert not os.path.exists(tmp_path / "f")


# --- in the pipeline --------------------------------------------------------------------------

# The tiny run of test_cli, with a dropout rate given explicitly (the Trainer keeps it, the
# search holds it) instead of a filter count (searched), and a tiny search.
TUNED = TINY_TRAINER.replace("num_filters = 4", "dropout_rate = 0.25") + """
[tuner]
max_trials = 2
epochs = 1

[tuner.space]
num_filters = [3, 5]
dropout_rate = [0.1, 0.6]
learning_rate = [0.01, 0.003]
"""


def test_tune_runs_the_tuner_and_the_trainer_uses_its_values(tmp_path):
    data = write_csv(tmp_path / "q.csv", trec_like())
    config = tmp_path / "tuned.toml"
    config.write_text(TUNED)
    root = str(tmp_path / "root")
    args = ["run", "--input", data, "--pipeline-root", root, "--config", str(config),
            "--serving-dir", str(tmp_path / "serving"), "--tune", *IN_MEMORY]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(root)
    stages = {s["name"]: s for s in summary["stages"]}
    assert [s["name"] for s in summary["stages"]] == list(configs.STAGES)
    tuner = stages[configs.TUNER]
    assert tuner["status"] == "ok" and len(tuner["details"]["trials"]) == 2
    best = tuner["details"]["values"]
    assert set(best) == {"num_filters", "learning_rate"}  # dropout_rate held
    assert tuner["details"]["held"] == {"dropout_rate": 0.25}
    with open(os.path.join(tuner["output"], BEST_FILE)) as f:
        assert json.load(f)["values"] == best
    trainer = stages[configs.TRAINER]["details"]
    used = trainer["settings"]
    assert used["model"]["num_filters"] == best["num_filters"]
    assert used["learning_rate"] == best["learning_rate"]
    assert used["model"]["dropout_rate"] == 0.25 and used["model"]["embedding_dim"] == 8
    chosen = trainer["hyperparameters"]
    assert chosen["num_filters"]["source"] == "tuner"
    assert chosen["dropout_rate"] == {"value": 0.25, "source": "config"}
    assert chosen["embedding_dim"]["source"] == "config"
    assert chosen["batch_size"] == {"value": 16, "source": "config"}
    assert chosen["pooling"]["source"] == "default"
    assert f"num_filters {best['num_filters']} (tuner)" in proc.stdout
    assert "dropout_rate 0.25 (config)" in proc.stdout
    report = os.path.join(os.path.dirname(tuner["output"]), "..", "runs", summary["run_id"],
                          "report.html")
    with open(report) as f:
        html = f.read()
    assert "Settings the Trainer used" in html and "(best)" in html
    [version] = os.listdir(tmp_path / "serving" / "textcnn")
    with open(tmp_path / "serving" / "textcnn" / version / "metadata.json") as f:
        pushed = json.load(f)["hyperparameters"]
    assert pushed["num_filters"] == {"value": best["num_filters"], "source": "tuner"}

    # The same command again: the search is reused, not run again.
    again = run_cli(*args)
    assert again.returncode == 0, again.stderr
    runs = sorted(os.listdir(os.path.join(root, "runs")))
    with open(os.path.join(root, "runs", runs[-1], "summary.json")) as f:
        second = {s["name"]: s for s in json.load(f)["stages"]}
    assert second[configs.TUNER]["status"] == "reused"
    assert second[configs.TUNER]["reused_from"] == summary["run_id"]

    # Another search space is another search.
    config.write_text(TUNED.replace("num_filters = [3, 5]", "num_filters = [3, 4]"))
    third = run_cli(*args, "--until", configs.TUNER)
    assert third.returncode == 0, third.stderr
    assert "Tuner: started" in third.stderr
