"""The run report: rendered from synthetic summaries, and from a real run in headless Chromium."""
import json
import os
import re
import shutil
import subprocess

import pytest

from components.errors import UserInputError
from components.trainer import HISTORY_FILE
from conftest import IN_MEMORY, run_cli
from needs import missing
from pipeline.report import REPORT_FILE, find_run_dir, write_report
from test_cli import TINY_TRAINER, summary_of, trec_like, write_csv

CLASSES = ["DESC", "ENTY", "ABBR"]
# A src/href/url() that would fetch anything: the report must open offline.
NETWORK_REFERENCE = re.compile(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(|@import""",
                               re.IGNORECASE)


def stage(name, details=None, status="ok", error=None, output="/nowhere"):
    entry = {"name": name, "output": output, "status": status, "seconds": 1.25}
    if details is not None:
        entry["details"] = details
    if error is not None:
        entry["error"] = error
    return entry


def summary(stages, status="succeeded", exit_code=0, **extra):
    return {"run_id": "20250101T000000-abcdef", "pipeline": "textcnn",
            "started": "2025-01-01T00:00:00+00:00", "finished": "2025-01-01T00:01:30+00:00",
            "status": status, "exit_code": exit_code, "beam_args": ["--runner=DirectRunner"],
            "config": {"trainer": {"epochs": 3}, "until": "Pusher"}, "stages": stages, **extra}


def write_run(root, record):
    run_dir = os.path.join(str(root), "runs", record["run_id"])
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(record, f)
    return run_dir


def render(root, record):
    path = write_report(write_run(root, record))
    assert path == os.path.join(str(root), "runs", record["run_id"], REPORT_FILE)
    with open(path, encoding="utf-8") as f:
        page = f.read()
    assert not NETWORK_REFERENCE.search(page) and "<script" not in page
    return page


QUARANTINED = {"source": "/data/q.csv", "line": 7, "reason": "missing_label",
               "detail": "column 'label' is empty", "raw": "Why is the sky blue ?," + "x" * 500}
EXAMPLE_GEN = {"read": 122, "written": 120, "quarantined": 2,
               "splits": {"train": 97, "eval": 11, "test": 12},
               "quarantine_reasons": {"missing_label": 1, "empty_text": 1},
               "quarantine_sample": [QUARANTINED]}


def test_failed_example_gen_reports_what_it_reached(tmp_path):
    page = render(tmp_path, summary(
        [stage("ExampleGen", EXAMPLE_GEN, status="failed",
               error="rows read 122 != written 119 + quarantined 2 in /data/q.csv")],
        status="failed", exit_code=1))

    assert "rows read 122 != written 119" in page and "ExampleGen failed" in page
    assert "Rows read <b>122</b> = written <b>120</b> + quarantined <b>2</b>" in page
    assert "column &#x27;label&#x27; is empty" in page and "/data/q.csv" in page
    assert "Why is the sky blue ?," + "x" * 50 in page and "x" * 500 not in page  # truncated
    for later in ("StatisticsGen", "ExampleValidator", "Trainer", "Evaluator", "Pusher"):
        assert f"{later}: not reached." in page
    assert "trainer.epochs" in page and "data:image/png" not in page


def complete_run(trainer_dir):
    """A blessed-or-not run with every stage's details, the NEW fields included."""
    os.makedirs(trainer_dir)
    with open(os.path.join(trainer_dir, HISTORY_FILE), "w") as f:
        json.dump({"best_epoch": 2, "history": {
            "loss": [1.5, 1.1, 0.9], "accuracy": [0.4, 0.6, 0.7],
            "val_loss": [1.4, 1.2, 1.3], "val_accuracy": [0.5, 0.7, 0.65]}}, f)
    overall = {"sparse_categorical_accuracy": 0.8125, "example_count": 16.0, "macro_f1": 0.7071,
               "confusion_matrix": [[5, 1, 0], [2, 4, 0], [0, 0, 4]],
               "precision/class_0": 0.7143, "recall/class_0": 0.8333, "f1/class_0": 0.7692,
               "precision/class_1": 0.8, "recall/class_1": 0.6667, "f1/class_1": 0.7273,
               "precision/class_2": None, "recall/class_2": 1.0, "f1/class_2": 0.0}
    metrics = {"Overall": overall,
               "label:DESC": {"sparse_categorical_accuracy": 0.8333, "example_count": 6.0},
               "text_length_bucket:06-10": {"sparse_categorical_accuracy": 0.9,
                                            "example_count": 10.0, "macro_f1": 0.8},
               "text_length_bucket:11-20": {"sparse_categorical_accuracy": 0.6667,
                                            "example_count": 6.0, "macro_f1": 0.5}}
    lengths = {"histogram": [[3, 10], [5, 40], [8, 30], [14, 17]], "documents": 97,
               "truncated": 7, "tokens": 700, "oov_tokens": 0}
    return summary([
        stage("ExampleGen", EXAMPLE_GEN),
        stage("StatisticsGen", {"splits": {}, "label_counts": {
            "train": {"DESC": 40, "ENTY": 30, "ABBR": 27}, "test": {"DESC": 6, "ENTY": 6}}}),
        stage("SchemaGen", {"schema": "/s/schema.pbtxt", "origin": "curated",
                            "classes": CLASSES}),
        stage("ExampleValidator", {"anomalies": {"train": [], "test": []}, "allowed": False,
                                   "warnings": ["Split-test has no example of ABBR"]}),
        stage("Transform", {"vocabulary_size": 118, "max_len": 12, "max_len_source": "auto",
                            "classes": CLASSES, "token_lengths": {
                                "train": lengths,
                                "eval": {**lengths, "tokens": 200, "oov_tokens": 5},
                                "test": {**lengths, "tokens": 160, "oov_tokens": 8}}}),
        stage("Trainer", {"metrics": {"train_accuracy": 0.7, "eval_accuracy": 0.7,
                                      "test_accuracy": 0.8125}, "epochs_run": 3,
                          "best_epoch": 2, "train_seconds": 12.5, "model": "/t/model"},
              output=trainer_dir),
        stage("Evaluator", {"blessed": False, "split": "test", "classes": CLASSES,
                            "metrics": metrics, "baseline": "/serving/textcnn/100",
                            "baseline_metrics": {"Overall": {
                                "sparse_categorical_accuracy": 0.85, "macro_f1": 0.8}},
                            "thresholds": {"min_accuracy": 0.5, "max_accuracy_drop": 0.01},
                            "failures": ["sparse_categorical_accuracy (change) = -0.0375 fails "
                                         "change_threshold"]}),
        stage("Pusher", status="failed", error="the model was not blessed, so it was not pushed"),
    ], status="not blessed", exit_code=4, warnings=["only 16 test examples: metrics are noisy"])


def test_complete_run_shows_every_section(tmp_path):
    page = render(tmp_path, complete_run(str(tmp_path / "Trainer")))

    assert "only 16 test examples: metrics are noisy" in page  # top-level warnings
    assert "trainer.epochs</td><td>50</td><td>3" in page  # config: default -> value
    assert "Rows read <b>122</b>" in page and "missing_label" in page
    assert "Vocabulary: <b>118</b>" in page and "max_len <b>12</b> (chosen automatically)" in page
    assert "7 of 97 training documents (7.2%)" in page
    assert "Split-eval: 2.5% of its 200 tokens" in page and "Split-test: 5.0%" in page
    assert "<b>Anomalies:</b> none." in page and "Split-test has no example of ABBR" in page
    assert "best epoch 2" in page and "12.5 s of training" in page
    assert "NOT BLESSED" in page and "fails change_threshold" in page
    assert ('<td>accuracy</td><td class="num">0.812</td><td class="num">0.850</td>'
            "<td>≥ 0.5 and ≥ baseline − 0.01 = 0.840</td>") in page
    assert '<td>ABBR</td><td class="num">n/a</td><td class="num">1.000</td>' in page
    assert '<td>06-10</td><td class="num">10</td><td class="num">0.900</td>' in page
    assert '<td>DESC</td><td class="num">6</td><td class="num">0.833</td></tr>' in page
    assert "Not pushed:</b> the model was not blessed" in page
    # Label distribution, token lengths, training curves, confusion matrix.
    assert page.count('src="data:image/png;base64,') == 4


@pytest.mark.parametrize("record", [
    {},
    {"run_id": "x", "stages": [{"name": n} for n in (
        "ExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator", "Transform", "Trainer",
        "Evaluator", "Pusher")]},
    summary([stage("ExampleGen", EXAMPLE_GEN), stage("StatisticsGen", {}),
             stage("SchemaGen", {}), stage("ExampleValidator", status="failed",
                                            error="split 'train', feature 'label': EMOTION")],
            status="blocked by anomalies", exit_code=3),
])
def test_missing_stages_and_fields_still_render(tmp_path, record):
    page = render(tmp_path, {"run_id": "r1", **record})
    for section in ("Run", "Data", "Validation", "Tuning", "Training", "Evaluation", "Push"):
        assert f"<h2>{section}</h2>" in page
    stages = {s["name"] for s in record.get("stages", [])}
    if not stages:  # nothing recorded: every section says its stage was not reached
        assert "status not recorded" in page and "None" not in page
        for name in ("ExampleGen", "ExampleValidator", "Trainer", "Evaluator", "Pusher"):
            assert f"{name}: not reached." in page
    elif not record.get("status"):  # stage names only: what is missing is said, not guessed
        assert "Label counts were not recorded." in page
        assert "No per-epoch history was recorded." in page
        assert "not reached" not in page  # each stage was recorded, with no details
        for name in stages:
            assert f"<td>{name}</td>" in page
    else:
        assert "EMOTION" in page and "Transform: not reached." in page
        assert "Trainer: not reached." in page and "Pusher: not reached." in page
        assert "blocked by anomalies" in page and "Rows read <b>122</b>" in page


def test_find_run_dir_picks_the_newest_or_the_named_run(tmp_path):
    with pytest.raises(UserInputError, match=re.escape(str(tmp_path / "runs"))):
        find_run_dir(str(tmp_path))
    for run_id in ("20250101T000000-aaaaaa", "20250102T000000-bbbbbb"):
        write_run(tmp_path, {"run_id": run_id})
    assert find_run_dir(str(tmp_path)).endswith("20250102T000000-bbbbbb")
    assert find_run_dir(str(tmp_path), "20250101T000000-aaaaaa").endswith("aaaaaa")
    with pytest.raises(UserInputError, match="20250101T000000-aaaaaa"):
        find_run_dir(str(tmp_path), "nope")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One tiny pipeline run to the push, with a quarantined row: (root, summary, stdout)."""
    tmp = tmp_path_factory.mktemp("report_run")
    data = write_csv(tmp / "q.csv", trec_like() + [("", "NUM", "")])
    config = tmp / "tiny.toml"
    config.write_text(TINY_TRAINER)
    root = str(tmp / "root")
    proc = run_cli("run", "--input", data, "--pipeline-root", root, "--serving-dir",
                   str(tmp / "serving"), "--config", str(config), *IN_MEMORY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, summary_of(root), proc.stdout


def test_run_writes_the_report_and_the_report_command_rewrites_it(real_run):
    root, record, stdout = real_run
    path = os.path.join(root, "runs", record["run_id"], REPORT_FILE)
    assert f"report: {path}" in stdout and os.path.getsize(path)
    os.remove(path)
    again = run_cli("report", root)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == f"report: {path}" and os.path.getsize(path)
    missing = run_cli("report", root, "--run", "nope")
    assert missing.returncode == 2 and record["run_id"] in missing.stderr


def test_report_renders_in_headless_chromium(real_run, tmp_path):
    chromium = shutil.which("chromium")
    if not chromium:
        missing("needs a browser to render the report: install Debian's chromium "
                "(apt-get install chromium)")
    root, record, _ = real_run
    url = "file://" + os.path.join(root, "runs", record["run_id"], REPORT_FILE)
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
               f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(browser + ["--dump-dom", url], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-3000:]
    stages = {s["name"]: s.get("details") or {} for s in record["stages"]}
    evaluation = stages["Evaluator"]
    accuracy = evaluation["metrics"]["Overall"]["sparse_categorical_accuracy"]
    assert f"Rows read <b>{stages['ExampleGen']['read']}</b>" in dom.stdout
    assert f'<td class="num">{accuracy:.3f}</td>' in dom.stdout
    assert ("BLESSED" if evaluation["blessed"] else "NOT BLESSED") in dom.stdout
    assert f"Pushed version <b>{stages['Pusher']['version']}</b>" in dom.stdout

    screenshot = tmp_path / "report.png"
    shot = subprocess.run(browser + [f"--screenshot={screenshot}", "--window-size=1200,3000",
                                     url], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0, shot.stderr[-3000:]
    with open(screenshot, "rb") as f:
        png = f.read()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_tuning_section_shows_the_trials_and_where_each_setting_came_from(tmp_path):
    trials = [{"trial": "0", "status": "completed", "eval_accuracy": 0.81, "epochs": 4,
               "seconds": 12.5, "values": {"dropout_rate": 0.3, "filter_sizes": [2, 3]}},
              {"trial": "1", "status": "failed", "eval_accuracy": None, "epochs": None,
               "seconds": 0.4, "values": {"dropout_rate": 0.5, "filter_sizes": [3, 4]},
               "error": "ResourceExhaustedError: <out of memory>"}]
    tuner = {"algorithm": "random", "seed": 42, "trials_run": 2, "search_seconds": 13.0,
             "objective": "val_accuracy", "best_trial": "0", "trials": trials,
             "values": trials[0]["values"], "held": {"learning_rate": 0.002}}
    chosen = {"dropout_rate": {"value": 0.3, "source": "tuner"},
              "learning_rate": {"value": 0.002, "source": "config"},
              "num_filters": {"value": 100, "source": "default"}}
    record = summary([stage("Transform", {}), stage("Tuner", tuner),
                      stage("Trainer", {"hyperparameters": chosen})],
                     config={"until": "Pusher", "tuner": {"enabled": True}})
    page = render(tmp_path, record)
    assert "<td>0 (best)</td><td>completed</td>" in page
    assert "dropout_rate 0.5, filter_sizes 3,4 — ResourceExhaustedError: &lt;out of memory&gt;" \
        in page
    assert "Held at the config's value (given explicitly): learning_rate 0.002" in page
    assert "<td>learning_rate</td><td>0.002</td><td>config</td>" in page
    assert "<td>dropout_rate</td><td>0.3</td><td>tuner</td>" in page

    off = render(tmp_path / "off", summary([stage("Trainer", {})], config={"until": "Pusher"}))
    assert "<td>Tuner</td><td><span class=\"muted\">off</span>" in off
    assert "Off: the Trainer used the config" in off


# Class names as users write them: dollar signs (matplotlib's math delimiters), HTML.
LITERAL = ["$money$", "a$b", "<b>x</b>", "money"]


def test_labels_are_drawn_as_written():
    from pipeline import report

    figures = []

    def keep(fig):
        figures.append(fig)
        return fig

    counts = {"train": {label: 3 for label in LITERAL}}
    drawn = report._chart(lambda: keep(report._label_figure(LITERAL, ["train"], counts)), "x")
    assert drawn.startswith('<img alt="x" src="data:image/png;base64,')
    [fig] = figures
    renderer = fig.canvas.get_renderer()
    ticks = {t.get_text(): t.get_window_extent(renderer).width
             for t in fig.axes[0].get_xticklabels()}
    assert set(ticks) == set(LITERAL)
    # As math, "$money$" is an italic "money" no wider than the plain word; drawn as written
    # it has its two dollar signs too.
    assert ticks["$money$"] > ticks["money"] + 10, ticks

    report._chart(lambda: keep(report._confusion_figure([[1, 0], [0, 1]], ["$\\frac$", "a$b"])),
                  "y")  # not a mathtext parse error
    assert [t.get_text() for t in figures[-1].axes[0].get_yticklabels()] == ["$\\frac$", "a$b"]
    long_name = "x" * 500
    report._chart(lambda: keep(report._label_figure([long_name], ["train"],
                                                     {"train": {long_name: 1}})), "z")
    [tick] = figures[-1].axes[0].get_xticklabels()
    assert tick.get_text() == "x" * (report.CHART_TEXT_MAX - 1) + "\u2026"


def test_a_report_with_such_labels_shows_them_escaped_and_survives_a_broken_chart(
        tmp_path, monkeypatch):
    from pipeline import report

    classes = LITERAL[:3]
    eg = dict(EXAMPLE_GEN, splits={"train": 6, "eval": 0, "test": 3})
    record = summary([
        stage("ExampleGen", eg),
        stage("StatisticsGen", {"label_counts": {"train": {c: 2 for c in classes},
                                                 "test": {c: 1 for c in classes}}}),
        stage("SchemaGen", {"classes": classes, "origin": "inferred", "schema": "/s"}),
        stage("Evaluator", {"blessed": True, "split": "test", "classes": classes,
                            "baseline": None, "failures": [], "thresholds": {},
                            "metrics": {"Overall": {
                                "example_count": 3, "sparse_categorical_accuracy": 1.0,
                                "confusion_matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 1]]}}}),
    ], run_id="r1")
    page = render(tmp_path / "a", record)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page
    assert "$money$" in page and "a$b" in page
    assert page.count('src="data:image/png;base64,') == 2  # labels per split, confusion matrix

    def broken(*args, **kwargs):
        raise ValueError("a label matplotlib cannot draw")

    monkeypatch.setattr(report, "_label_figure", broken)
    page = render(tmp_path / "b", record)
    assert "could not be drawn: ValueError: a label matplotlib cannot draw" in page
    assert page.count('src="data:image/png;base64,') == 1  # the other chart is still there


def test_the_report_names_the_towers_and_the_wide_features(tmp_path):
    towers = {"cnn": {"filter_sizes": [3, 4, 5], "num_filters": 100, "parameters": 1170618},
              "wide": {"ngrams": 95559, "ngram_max": 2, "parameters": 477795}}
    record = summary([stage("ExampleGen", EXAMPLE_GEN),
                      stage("Transform", {"vocabulary_size": 29608, "max_len": 400,
                                          "max_len_source": "auto", "wide_input_dim": 95559}),
                      stage("Trainer", {"towers": towers, "epochs_run": 3})])
    page = render(tmp_path, record)
    assert ("Towers: CNN (kernels 3,4,5 x 100 filters, 1,170,618 parameters) + wide (TF-IDF "
            "over 95,559 n-grams of up to 2 words, 477,795 parameters).") in page
    assert "Wide features: <b>95,559</b> n-grams" in page
    cnn_only = render(tmp_path / "cnn", summary([stage("Trainer", {"towers": {
        "cnn": towers["cnn"]}})]))
    assert "Towers: CNN (kernels 3,4,5 x 100 filters, 1,170,618 parameters)." in cnn_only
