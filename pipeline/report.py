"""The run report: one self-contained HTML page per run, rendered from its `summary.json`.

It shows what a run did without reading JSON: stages, config changes, data counts, validation,
training curves, the evaluation against its thresholds and baseline, and the push. Charts are
matplotlib PNGs inlined as data URIs and the CSS is inline, so the file needs no network and no
JavaScript. A run that failed or was blocked gets a report of what it reached: every section reads
its stage's details with `.get` and says "not reached" when the stage did not run.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from components import export, features, fileio
from components.errors import UserInputError
from components.evaluator import ACCURACY
from components.trainer import load_history
from components.tuner import format_value
from pipeline import configs, results, windows

RUNS_DIR = "runs"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"

LABEL_SLICE = f"{features.LABEL}:"
LENGTH_SLICE = f"{export.LENGTH_BUCKET}:"
QUARANTINE_SAMPLE_CHARS = 120
ERROR_PREVIEW_CHARS = 200
_ABSENT = object()  # a recorded config key the current defaults lack

CSS = """
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #222; max-width: 1100px;
       margin: 24px auto; padding: 0 16px; line-height: 1.4; }
h1 { margin-bottom: 4px; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
h3 { margin-bottom: 6px; }
table { border-collapse: collapse; margin: 6px 0 12px; }
th, td { border: 1px solid #d0d0d0; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.raw { font-family: monospace; font-size: 90%; word-break: break-all; }
.badge { display: inline-block; padding: 2px 10px; border-radius: 4px; font-weight: bold;
         color: #fff; }
.ok { background: #2e7d32; } .bad { background: #c62828; } .warn { background: #ef6c00; }
.skip { background: #9e9e9e; }
.box { padding: 8px 14px; margin: 10px 0; border-left: 6px solid; }
.warnings { background: #fff4e5; border-color: #ef6c00; }
.error { background: #fdecea; border-color: #c62828; white-space: pre-wrap;
         font-family: monospace; font-size: 90%; }
.muted { color: #757575; }
nav a { margin-right: 14px; }
img { max-width: 100%; display: block; margin: 8px 0; }
.big { font-size: 130%; }
.row { display: flex; flex-wrap: wrap; gap: 32px; align-items: flex-start; }
.row > .grow { flex: 1 1 300px; }
"""


class _Html(str):
    """Markup that table cells insert as it is (everything else is escaped)."""


class _Seconds(float):
    """A duration, shown with one decimal."""


def find_run_dir(pipeline_root: str, run_id: Optional[str] = None) -> str:
    """`<pipeline_root>/runs/<run_id>`; by default the newest run (run ids start with the time)."""
    runs = fileio.join(pipeline_root, RUNS_DIR)
    recorded = [name for name in fileio.listdir(runs)
                if fileio.exists(fileio.join(runs, name, SUMMARY_FILE))]
    if run_id is None:
        if not recorded:
            raise UserInputError(f"no recorded run under {runs}: run the pipeline with "
                                 f"--pipeline-root {pipeline_root} first")
        run_id = recorded[-1]
    if run_id not in recorded:
        raise UserInputError(f"no run {run_id!r} under {runs}; recorded runs: "
                             f"{', '.join(recorded) or 'none'}")
    return fileio.join(runs, run_id)


def write_report(run_dir: str) -> str:
    """Renders `<run_dir>/summary.json` (and the Trainer's history) to `<run_dir>/report.html`."""
    summary = fileio.read_json(fileio.join(run_dir, SUMMARY_FILE))
    trainer_output = _stage(summary, configs.TRAINER).get("output")
    history = load_history(trainer_output) if trainer_output else None
    path = fileio.join(run_dir, REPORT_FILE)
    fileio.replace_text(path, render_report(summary, history))
    return path


def render_report(summary: Dict[str, Any], history: Optional[Dict[str, Any]]) -> str:
    """The whole page for one run summary and the Trainer's `history.json` (or None)."""
    sections = [
        ("run", "Run", _run_section(summary)),
        ("data", "Data", _data_section(summary)),
        ("validation", "Validation", _validation_section(summary)),
        ("tuning", "Tuning", _tuning_section(summary)),
        ("training", "Training", _training_section(summary, history or {})),
        ("evaluation", "Evaluation", _evaluation_section(summary)),
        ("push", "Push", _push_section(summary)),
    ]
    run_id = html.escape(str(summary.get("run_id", "?")))
    nav = " ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title, _ in sections)
    body = "\n".join(f'<section id="{anchor}"><h2>{title}</h2>\n{content}</section>'
                     for anchor, title, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{summary.get('pipeline', '')} run {run_id}</title>"
            f"<style>{CSS}</style></head><body>\n"
            f"<h1>Run {run_id} {_status_badge(summary.get('status'))}</h1>\n"
            f"{_warnings(summary.get('warnings') or [])}<nav>{nav}</nav>\n{body}\n"
            "</body></html>\n")


# --- the sections ---------------------------------------------------------------------------

def _run_section(summary: Dict[str, Any]) -> str:
    started, finished = summary.get("started"), summary.get("finished")
    columns = ["pipeline", "status", "exit code", "started", "finished", "duration"]
    facts = [_fmt(summary.get("pipeline")), _fmt(summary.get("status")),
             _fmt(summary.get("exit_code")), _timestamp(started), _timestamp(finished),
             _duration(started, finished)]
    window = summary.get("window")  # a run over a window of dates (pipeline/windows.py)
    return "\n".join([
        _table(columns, [facts]),
        f"<p>{html.escape(windows.summary_line(window))}</p>" if window else "",
        "<h3>Stages</h3>", _stages_table(summary),
        "<h3>Config changed from the defaults</h3>", _config_table(summary.get("config")),
        f'<p class="muted">Beam flags: {html.escape(" ".join(summary.get("beam_args") or []))}'
        "</p>",
    ])


def _data_section(summary: Dict[str, Any]) -> str:
    stage = _stage(summary, configs.EXAMPLE_GEN)
    if not stage:
        return _not_reached(summary, configs.EXAMPLE_GEN)
    r = _result(stage)
    parts = [_failure(stage)]
    if r.read is not None:
        parts.append(f'<p class="big">Rows read <b>{_fmt(r.read)}</b> = written '
                     f'<b>{_fmt(r.written)}</b> + quarantined '
                     f'<b>{_fmt(r.quarantined)}</b></p>')
    if r.splits:
        parts.append(_table(["split", "rows written"], sorted(
            r.splits.items(), key=lambda kv: _split_order(kv[0]))))
    parts.append(_quarantine(r))
    parts += ["<h3>Labels per split</h3>", _label_distribution(summary),
              "<h3>Token lengths and vocabulary</h3>", _token_lengths(summary)]
    return "\n".join(parts)


def _validation_section(summary: Dict[str, Any]) -> str:
    parts = []
    schema = _stage(summary, configs.SCHEMA_GEN)
    if schema:
        r = _result(schema)
        classes = ", ".join(r.classes) or "not recorded"
        parts += [_failure(schema),
                  f"<p>Schema: {html.escape(str(r.origin or '?'))} "
                  f"(<code>{html.escape(str(r.schema or ''))}</code>); "
                  f"classes: {html.escape(classes)}</p>"]
    stage = _stage(summary, configs.EXAMPLE_VALIDATOR)
    if not stage:
        return "\n".join(parts + [_not_reached(summary, configs.EXAMPLE_VALIDATOR)])
    v = _result(stage)
    parts.append(_failure(stage))
    anomalies = v.anomalies
    messages = [m for split in sorted(anomalies, key=_split_order) for m in anomalies[split]]
    if messages:  # each message names its split and feature
        allowed = " (allowed with --allow-anomalies)" if v.allowed else ""
        parts.append(f"<p><b>Anomalies{allowed}:</b></p>" + _list(messages))
    elif stage.get("status") in ("ok", "reused"):
        parts.append("<p><b>Anomalies:</b> none.</p>")
    parts.append(_drift(v.drift))
    shown = set(summary.get("warnings") or [])  # the run's warnings are at the top already
    warnings = [w for w in v.warnings if w not in shown]
    if warnings:
        parts.append("<p><b>Validation warnings:</b></p>" + _list(warnings))
    return "\n".join(parts)


def _drift(drift: Optional[Dict[str, Any]]) -> str:
    """The drift comparison: distances against thresholds, and what went over."""
    if not drift:
        return "<p><b>Drift:</b> not checked (no earlier accepted training data).</p>"
    rows = []
    for feature, distance in (("label", "linf"), ("text_length", "jsd")):
        found = drift.get(feature) or {}
        value = found.get(distance)
        rows.append((feature, {"linf": "L-infinity", "jsd": "Jensen-Shannon"}[distance],
                     found.get("skipped") or ("" if value is None else f"{value:.3f}"),
                     found.get("threshold", "")))
    parts = [f"<p><b>Drift</b> against <code>{html.escape(str(drift.get('previous_statistics')))}"
             "</code>:</p>", _table(["feature", "distance", "value", "threshold"], rows)]
    if drift.get("messages"):
        parts.append(_list(drift["messages"]))
    return "\n".join(parts)


def _tuning_section(summary: Dict[str, Any]) -> str:
    """The Tuner's trials (the best one marked) and where each training setting came from."""
    stage = _stage(summary, configs.TUNER)
    chosen = _result(_stage(summary, configs.TRAINER), configs.TRAINER).hyperparameters
    parts = []
    if not stage:
        if _tuner_off(summary):
            parts.append('<p class="muted">Off: the Trainer used the config\'s settings '
                         "(<code>--tune</code> or <code>[tuner] enabled = true</code> searches "
                         "them first).</p>")
        else:
            parts.append(_not_reached(summary, configs.TUNER))
    else:
        tuned = _result(stage)
        parts.append(_failure(stage))
        if stage.get("details"):
            reused = (f" Reused from run {stage['reused_from']} (same Transform output, space "
                      "and settings)." if stage.get("reused_from") else "")
            timed = " The search stopped at tuner.max_seconds." if tuned.stopped_by_time else ""
            parts.append(f"<p>{html.escape(str(tuned.algorithm))} search, seed "
                         f"{html.escape(str(tuned.seed))}: {_fmt(tuned.trials_run)} trials "
                         f"in {_fmt(_seconds(tuned.search_seconds))} s; objective "
                         f"{html.escape(str(tuned.objective))}.{html.escape(timed + reused)}"
                         "</p>")
            rows = []
            for t in tuned.trials:
                mark = " (best)" if t.get("trial") == tuned.best_trial else ""
                values = ", ".join(f"{k} {format_value(v)}"
                                   for k, v in (t.get("values") or {}).items())
                rows.append((f"{t.get('trial')}{mark}", t.get("status"), t.get("eval_accuracy"),
                             t.get("epochs"), _seconds(t.get("seconds")),
                             values + (f" — {t['error']}" if t.get("error") else "")))
            parts.append(_table(["trial", "status", "eval accuracy", "epochs", "seconds",
                                 "values"], rows))
            if tuned.held:
                parts.append("<p>Held at the config's value (given explicitly): " + html.escape(
                    ", ".join(f"{k} {format_value(v)}" for k, v in tuned.held.items())) + "</p>")
    if chosen:
        parts += ["<h3>Settings the Trainer used</h3>",
                  _table(["hyperparameter", "value", "from"],
                         [(k, format_value(c["value"]), c["source"])
                          for k, c in chosen.items()])]
    return "\n".join(p for p in parts if p)


def _tuner_off(summary: Dict[str, Any]) -> bool:
    return not ((summary.get("config") or {}).get("tuner") or {}).get("enabled")


def _training_section(summary: Dict[str, Any], history: Dict[str, Any]) -> str:
    stage = _stage(summary, configs.TRAINER)
    if not stage:
        return _not_reached(summary, configs.TRAINER)
    r = _result(stage)
    metrics = r.metrics
    best = history.get("best_epoch", r.best_epoch)
    parts = [_failure(stage)]
    facts = [f"{_fmt(r.epochs_run)} epochs run" if r.epochs_run else "",
             f"best epoch {best} (its weights kept)" if best else "",
             f"{_fmt(_seconds(r.train_seconds))} s of training"
             if r.train_seconds is not None else "",
             f"{_fmt(r.replicas)} replica(s)" if r.replicas else "",
             f"{_fmt(r.workers)} workers" if r.workers > 1 else "",
             f"{_fmt(r.parameters)} parameters" if r.parameters else ""]
    if any(facts):
        parts.append(f"<p>{html.escape(', '.join(f for f in facts if f))}.</p>")
    rows = [(split, metrics.get(f"{split}_accuracy"), metrics.get(f"{split}_loss"))
            for split in features.SPLITS if f"{split}_accuracy" in metrics]
    if rows:
        parts.append(_table(["split", "accuracy", "loss"], rows))
    curves = history.get("history") or {}
    parts.append(_chart(lambda: _curves_figure(curves, best), "loss and accuracy per epoch") if curves
                 else '<p class="muted">No per-epoch history was recorded.</p>')
    if r.towers:
        parts.append(f"<p>Towers: {html.escape(r.towers_text())}.</p>")
    if r.model:
        parts.append(f"<p>Model: <code>{html.escape(str(r.model))}</code></p>")
    return "\n".join(parts)


def _evaluation_section(summary: Dict[str, Any]) -> str:
    stage = _stage(summary, configs.EVALUATOR)
    if not stage:
        return _not_reached(summary, configs.EVALUATOR)
    e = _result(stage)
    parts = [_failure(stage)]
    if not stage.get("details"):
        return "\n".join(parts)
    metrics, overall = e.metrics, e.overall
    classes = e.classes or _classes(summary)
    parts += [_blessing(e), _headline_table(e)]
    if overall.get("confusion_matrix"):
        parts.append('<div class="row"><div><h3>Confusion matrix</h3>'
                     + _chart(lambda: _confusion_figure(overall["confusion_matrix"], classes),
                            "confusion matrix")
                     + '</div><div class="grow"><h3>Per class</h3>'
                     + _per_class_table(overall, classes) + "</div></div>")
    parts += ["<h3>By text length (words)</h3>",
              _slice_table(metrics, LENGTH_SLICE, "bucket", with_macro_f1=True),
              "<h3>By label (accuracy = the label's recall)</h3>",
              _slice_table(metrics, LABEL_SLICE, "label", with_macro_f1=False)]
    return "\n".join(parts)


def _push_section(summary: Dict[str, Any]) -> str:
    if _result(_stage(summary, configs.EVALUATOR), configs.EVALUATOR).blessed is False:
        return '<p class="big"><b>Not pushed:</b> the model was not blessed (see Evaluation).</p>'
    stage = _stage(summary, configs.PUSHER)
    if not stage:
        return _not_reached(summary, configs.PUSHER)
    push = _result(stage)
    parts = [_failure(stage)]
    if stage.get("details"):
        by = (f" by run {html.escape(stage['reused_from'])}: nothing new to push"
              if stage.get("reused_from") else "")
        parts.append(f'<p class="big">Pushed version <b>{html.escape(str(push.version))}'
                     f"</b> to <code>{html.escape(str(push.path))}</code>{by}</p>")
    if push.removed:
        parts.append("<p>Removed old versions:</p>" + _list(push.removed))
    return "\n".join(parts)


# --- parts of sections ----------------------------------------------------------------------

def _stages_table(summary: Dict[str, Any]) -> str:
    """Every stage in order: status (a failed one with its error's first line), time, output."""
    recorded = {s.get("name"): s for s in summary.get("stages") or []}
    rows = []
    for name in list(configs.STAGES) + [n for n in recorded if n not in configs.STAGES]:
        stage = recorded.get(name)
        if stage is None:
            what = "off" if name == configs.TUNER and _tuner_off(summary) else "not reached"
            rows.append((name, _Html(f'<span class="muted">{what}</span>'), "", ""))
            continue
        status = str(stage.get("status", "?"))
        error = str(stage.get("error") or "").strip().split("\n")[0][:ERROR_PREVIEW_CHARS]
        if stage.get("reused_from"):  # not executed: an earlier run's output, same cache key
            error = f"from run {stage['reused_from']}"
        badge = (f'<span class="badge {"ok" if status in ("ok", "reused") else "bad"}">'
                 f"{html.escape(status)}</span> {html.escape(error)}")
        output = f"<code>{html.escape(str(stage.get('output', '')))}</code>"
        rows.append((name, _Html(badge), _seconds(stage.get("seconds")), _Html(output)))
    return _table(["stage", "status", "seconds", "output"], rows)


def _config_diff(config: Optional[Dict[str, Any]]) -> List[Tuple[str, Any, Any]]:
    """(dotted key, default, value) for each recorded config key whose value is not the default.

    Keys the recorded config lacks (added to the code after the run) are not changes; keys the
    defaults lack (since removed) have the default `_ABSENT`.
    """
    defaults = _flatten(json.loads(json.dumps(configs.to_dict(configs.PipelineConfig()),
                                              default=str)))
    values = _flatten({k: v for k, v in (config or {}).items() if k != configs.GIVEN_KEYS})
    return [(key, defaults.get(key, _ABSENT), value) for key, value in sorted(values.items())
            if defaults.get(key, _ABSENT) != value]


def _config_table(config: Optional[Dict[str, Any]]) -> str:
    if not config:
        return '<p class="muted">No config recorded.</p>'
    changes = _config_diff(config)
    if not changes:
        return "<p>All defaults.</p>"
    return _table(["key", "default", "→ value"],
                  [(key, "(absent)" if default is _ABSENT else json.dumps(default),
                    json.dumps(value)) for key, default, value in changes])


def _quarantine(r: results.ExampleGenResult) -> str:
    parts = []
    if r.quarantine_reasons:
        parts.append(_table(["quarantine reason", "rows"], sorted(r.quarantine_reasons.items())))
    sample = r.quarantine_sample
    if sample:
        rows = [(r.get("source"), r.get("line"), r.get("reason"), r.get("detail"),
                 _Html(f'<span class="raw">{html.escape(_truncate(r.get("raw")))}</span>'))
                for r in sample]
        parts += [f"<p>The first {len(sample)} of {_fmt(r.quarantined)} quarantined "
                  "rows:</p>",
                  _table(["source", "line", "reason", "detail", "raw"], rows)]
    return "\n".join(parts)


def _label_distribution(summary: Dict[str, Any]) -> str:
    stage = _stage(summary, configs.STATISTICS_GEN)
    if not stage:
        return _not_reached(summary, configs.STATISTICS_GEN)
    counts = _result(stage).label_counts
    if not counts:
        return _failure(stage) + '<p class="muted">Label counts were not recorded.</p>'
    known = _classes(summary)
    labels = known + sorted({lab for c in counts.values() for lab in c} - set(known))
    splits = sorted(counts, key=_split_order)
    return _failure(stage) + _chart(lambda: _label_figure(labels, splits, counts), "labels per split")


def _token_lengths(summary: Dict[str, Any]) -> str:
    stage = _stage(summary, configs.TRANSFORM)
    if not stage:
        return _not_reached(summary, configs.TRANSFORM)
    d = stage.get("details") or {}
    r = _result(stage)
    lengths = r.token_lengths
    max_len = r.max_len
    source = {"auto": "chosen automatically", "fixed": "fixed by the config"}.get(
        r.max_len_source, "")
    parts = [_failure(stage)]
    if d:
        parts.append(f"<p>Vocabulary: <b>{_fmt(r.vocabulary_size)}</b> tokens (from "
                     f"Split-train); max_len <b>{_fmt(max_len)}</b>"
                     + (f" ({source})" if source else "") + ".</p>")
        if r.wide_input_dim is not None:
            parts.append(f"<p>Wide features: <b>{_fmt(r.wide_input_dim)}</b> n-grams (TF-IDF "
                         f"weighted, from Split-train).</p>")
    train = lengths.get(features.TRAIN) or {}
    if train.get("histogram"):
        parts.append(_chart(lambda: _length_figure(train["histogram"], max_len),
                          "token lengths of the training split"))
    if train.get("documents"):
        parts.append(f"<p>{_fmt(train.get('truncated'))} of {_fmt(train['documents'])} training "
                     f"documents ({_share(train.get('truncated'), train['documents'])}) are "
                     f"longer than max_len and were truncated.</p>")
    oov = [f"Split-{split}: {_share(s.get('oov_tokens'), s['tokens'])} of its "
           f"{_fmt(s['tokens'])} tokens are out of vocabulary ({_fmt(s.get('oov_tokens'))})"
           for split in (features.EVAL, features.TEST)
           for s in [lengths.get(split) or {}] if s.get("tokens")]
    if oov:
        parts.append(_list(oov))
    elif d and not lengths:
        parts.append('<p class="muted">Token lengths were not recorded.</p>')
    return "\n".join(parts)


def _blessing(e: results.EvaluatorResult) -> str:
    count = e.overall.get("example_count")
    where = (f"on Split-{html.escape(str(e.split or '?'))}"
             + (f" ({_fmt(_count(count))} examples)" if count is not None else ""))
    if e.blessed is None:
        return f"<p>{where}</p>"
    badge = ('<span class="badge ok">BLESSED</span>' if e.blessed
             else '<span class="badge bad">NOT BLESSED</span>')
    failed = ("<p><b>Failed thresholds:</b></p>" + _list(e.failures)) if e.failures else ""
    return f'<p class="big">{badge} {where}</p>{failed}'


def _headline_table(e: results.EvaluatorResult) -> str:
    overall, base, thresholds = e.overall, e.baseline_overall, e.thresholds
    floor, drop = thresholds.get("min_accuracy"), thresholds.get("max_accuracy_drop")
    accuracy_rule = [f"≥ {floor}" if floor is not None else ""]
    if base.get(ACCURACY) is not None and drop is not None:
        accuracy_rule.append(f"≥ baseline − {drop} = {base[ACCURACY] - drop:.3f}")
    no_baseline = "no baseline" if not e.baseline else "n/a"
    rows = [("accuracy", overall.get(ACCURACY), base.get(ACCURACY, no_baseline),
             " and ".join(r for r in accuracy_rule if r)),
            ("macro-F1", overall.get("macro_f1"), base.get("macro_f1", no_baseline), "")]
    baseline_path = (f'<p class="muted">Baseline: <code>{html.escape(str(e.baseline))}'
                     "</code></p>") if e.baseline else ""
    return _table(["metric", "candidate", "baseline", "threshold"], rows) + baseline_path


def _per_class_table(overall: Dict[str, Any], classes: Sequence[str]) -> str:
    matrix = overall.get("confusion_matrix") or []
    rows = [(_class_name(classes, i), overall.get(f"precision/class_{i}"),
             overall.get(f"recall/class_{i}"), overall.get(f"f1/class_{i}"), sum(matrix[i]))
            for i in range(len(matrix))]
    return (_table(["class", "precision", "recall", "F1", "examples"], rows)
            + '<p class="muted">n/a: no prediction of, or no example of, the class '
              "(counts as F1 0 in macro-F1).</p>")


def _slice_table(metrics: Dict[str, Dict[str, Any]], prefix: str, title: str,
                 with_macro_f1: bool) -> str:
    """One row per slice whose name starts with `prefix` ("label:", "text_length_bucket:")."""
    rows = [(name[len(prefix):], _count(m.get("example_count")), m.get(ACCURACY))
            + ((m.get("macro_f1"),) if with_macro_f1 else ())
            for name, m in sorted(metrics.items()) if name.startswith(prefix)]
    if not rows:
        return '<p class="muted">No such slices were recorded.</p>'
    return _table([title, "examples", "accuracy"] + (["macro-F1"] if with_macro_f1 else []),
                  rows)


# --- charts ---------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    """A figure drawn by the Agg canvas directly: no pyplot, no global backend state."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


# Longer user strings (labels, class names) are cut on charts, with an ellipsis; the tables
# show them whole.
CHART_TEXT_MAX = 40


def _chart(draw: Callable[[], Figure], alt: str) -> str:
    """`draw()`'s figure as an inline PNG.

    User strings are drawn as written: matplotlib's mathtext is off while the figure is made
    and drawn, so a class named `$money$` is not set as italic math (and `$\\frac$` is no
    parse error). A chart that cannot be drawn all the same becomes a line saying so: the
    report is never lost to a chart.
    """
    try:
        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            fig = draw()
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight",
                        metadata={"Software": None})
    except Exception as e:  # noqa: BLE001  (whatever a string did to matplotlib)
        return (f'<p class="muted">The chart of {html.escape(alt)} could not be drawn: '
                f"{html.escape(type(e).__name__)}: {html.escape(str(e)[:300])}</p>")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def chart_text(value: Any) -> str:
    """A user string as a chart shows it: whole up to CHART_TEXT_MAX characters."""
    text = str(value)
    return text if len(text) <= CHART_TEXT_MAX else text[:CHART_TEXT_MAX - 1] + "\u2026"


def _label_figure(labels: Sequence[str], splits: Sequence[str],
                  counts: Dict[str, Dict[str, int]]) -> Figure:
    fig = _figure(max(6.0, 0.9 * len(labels) * max(1, len(splits)) / 2 + 2), 3.6)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(splits))
    for k, split in enumerate(splits):
        xs = [i + (k - (len(splits) - 1) / 2) * width for i in range(len(labels))]
        bars = ax.bar(xs, [counts[split].get(lab, 0) for lab in labels], width, label=split)
        ax.bar_label(bars, fontsize=8)
    ax.set_xticks(range(len(labels)), labels=[chart_text(lab) for lab in labels])
    ax.set_ylabel("examples")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(title="split")
    ax.margins(y=0.15)
    return fig


def _length_figure(histogram: Sequence[Sequence[int]], max_len: Optional[int]) -> Figure:
    fig = _figure(8, 3.2)
    ax = fig.add_subplot()
    lengths, counts = zip(*sorted((int(n), int(c)) for n, c in histogram))
    ax.bar(lengths, counts, width=0.9, color="#4c72b0")
    if max_len is not None:
        ax.axvline(max_len + 0.5, color="#c62828", linestyle="--", label=f"max_len = {max_len}")
        ax.legend()
    ax.set_xlabel("tokens per document (Split-train)")
    ax.set_ylabel("documents")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(MaxNLocator(integer=True))
    return fig


def _curves_figure(curves: Dict[str, List[float]], best: Optional[int]) -> Figure:
    fig = _figure(10, 3.4)
    for k, (metric, title) in enumerate([("loss", "loss"), ("accuracy", "accuracy")]):
        ax = fig.add_subplot(1, 2, k + 1)
        for key, label in [(metric, "train"), (f"val_{metric}", "eval")]:
            if curves.get(key):
                ax.plot(range(1, len(curves[key]) + 1), curves[key], marker="o", label=label)
        if best:
            ax.axvline(best, color="#757575", linestyle="--", label=f"best epoch {best}")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
    return fig


def _confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    n = len(matrix)
    fig = _figure(max(4.0, 0.7 * n + 2.5), max(3.5, 0.6 * n + 1.8))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    names = [chart_text(_class_name(classes, i)) for i in range(n)]
    ax.set_xticks(range(n), labels=names, rotation=45, ha="right")
    ax.set_yticks(range(n), labels=names)
    top = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center",
                    color="white" if top and value > top / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    fig.colorbar(image, ax=ax, shrink=0.8).locator = MaxNLocator(integer=True)
    return fig


# --- small helpers --------------------------------------------------------------------------

def _stage(summary: Dict[str, Any], name: str) -> Dict[str, Any]:
    """The recorded stage `name`, or {} when the run did not reach it."""
    return next((s for s in summary.get("stages") or [] if s.get("name") == name), {})


def _classes(summary: Dict[str, Any]) -> List[str]:
    """The class list (index order) from the first stage that recorded one."""
    for name in (configs.EVALUATOR, configs.TRANSFORM, configs.SCHEMA_GEN):
        classes = _result(_stage(summary, name), name).classes
        if classes:
            return list(classes)
    return []


def _result(stage: Dict[str, Any], name: Optional[str] = None):
    """A recorded stage's details, typed (`pipeline.results`); a stage not reached (`stage` is
    {}: give its `name`) has empty ones."""
    return results.result_of(name or stage.get("name"), stage.get("details"))


def _not_reached(summary: Dict[str, Any], stage: str) -> str:
    until = (summary.get("config") or {}).get("until")
    if until in configs.STAGES and configs.STAGES.index(stage) > configs.STAGES.index(until):
        why = f" (the run was asked to stop after {until} with --until)"
    else:
        why = ""
    return f'<p class="muted">{stage}: not reached{why}.</p>'


def _failure(stage: Dict[str, Any]) -> str:
    if stage.get("status") != "failed":
        return ""
    return (f'<p><span class="badge bad">{stage.get("name")} failed</span></p>'
            f'<div class="box error">{html.escape(str(stage.get("error", "")))}</div>')


def _warnings(warnings: Sequence[str]) -> str:
    if not warnings:
        return ""
    return f'<div class="box warnings"><b>Warnings</b>{_list(warnings)}</div>'


def _status_badge(status: Optional[str]) -> str:
    kind = {"succeeded": "ok", "running": "warn"}.get(status or "", "bad")
    if (status or "").startswith("partial"):  # a run made stage by stage, between its parts
        kind = "warn"
    text = "status not recorded" if status is None else str(status)
    return f'<span class="badge {kind}">{html.escape(text)}</span>'


def _table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """An HTML table; numbers are right-aligned and formatted, other cells escaped."""
    head = "<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in columns) + "</tr>"
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, _Html):
        return f"<td>{value}</td>"
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return f'<td class="num">{_fmt(value)}</td>'
    return f"<td>{html.escape(_fmt(value))}</td>"


def _list(items: Iterable[Any]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in items) + "</ul>"


def _fmt(value: Any) -> str:
    """Counts with thousands separators, scores with 3 decimals, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, _Seconds):
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _count(value: Optional[float]) -> Optional[int]:
    """TFMA's example counts are doubles."""
    return None if value is None else int(round(value))


def _seconds(value: Optional[float]) -> Optional[_Seconds]:
    return None if value is None else _Seconds(value)


def _share(part: Optional[int], whole: Optional[int]) -> str:
    return f"{part / whole:.1%}" if part is not None and whole else "n/a"


def _truncate(text: Any) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= QUARANTINE_SAMPLE_CHARS else text[:QUARANTINE_SAMPLE_CHARS] + "…"


def _class_name(classes: Sequence[str], index: int) -> str:
    return classes[index] if index < len(classes) else f"class {index}"


def _split_order(split: str) -> Tuple[int, str]:
    """train, eval, test first, in that order; anything else after, by name."""
    return (features.SPLITS.index(split) if split in features.SPLITS else len(features.SPLITS),
            split)


def _flatten(values: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: Dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _timestamp(iso: Optional[str]) -> str:
    """An ISO timestamp to the second, e.g. 2025-01-01 00:00:00 UTC."""
    try:
        return datetime.datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    except (TypeError, ValueError):
        return _fmt(iso)


def _duration(started: Optional[str], finished: Optional[str]) -> Optional[str]:
    try:
        seconds = (datetime.datetime.fromisoformat(finished)
                   - datetime.datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return None
    return f"{seconds:.1f} s"
