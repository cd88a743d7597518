"""Wires the stages: each gets its input artifact directories and its own settings, nothing else."""
from __future__ import annotations

import datetime
import json
import logging
import os
import secrets
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from components.artifacts import artifact_dir
from components.errors import BlockingAnomaliesError
from components.example_gen import run_example_gen
from components.example_validator import run_example_validator
from components.schema_gen import load_schema, run_schema_gen
from components.statistics_gen import available_splits, run_statistics_gen
from pipeline import configs


def default_beam_args() -> List[str]:
    """DirectRunner, multi-processing, one worker per core; any of these can be overridden."""
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
            f"--direct_num_workers={os.cpu_count() or 1}"]


def beam_options(beam_args: Sequence[str]) -> PipelineOptions:
    # Later flags win in Beam's parser, so the user's flags go after the defaults.
    return PipelineOptions(default_beam_args() + list(beam_args))


def new_run_id() -> str:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{now}-{secrets.token_hex(3)}"


class RunRecorder:
    """Times stages and writes `<root>/runs/<run_id>/summary.json` however the run ends."""

    def __init__(self, config: configs.PipelineConfig, run_id: str, beam_args: Sequence[str]):
        self.summary: Dict[str, Any] = {
            "run_id": run_id,
            "pipeline": configs.PIPELINE_NAME,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "status": "running",
            "config": configs.to_dict(config),
            "beam_args": default_beam_args() + list(beam_args),
            "stages": [],
        }
        self.path = os.path.join(config.pipeline_root, "runs", run_id, "summary.json")

    def stage(self, name: str, output_dir: str, fn: Callable[[], Dict[str, Any]]):
        logging.info("%s: starting -> %s", name, output_dir)
        start = time.monotonic()
        entry = {"name": name, "output": output_dir}
        self.summary["stages"].append(entry)
        try:
            entry["details"] = fn()
            entry["status"] = "ok"
            return entry["details"]
        except BaseException as e:
            entry["status"] = "failed"
            entry["error"] = str(e)
            raise
        finally:
            entry["seconds"] = round(time.monotonic() - start, 2)

    def finish(self, status: str, exit_code: int) -> None:
        self.summary["status"] = status
        self.summary["exit_code"] = exit_code
        self.summary["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.summary, f, indent=2, sort_keys=True, default=str)
        os.replace(tmp, self.path)


def run_pipeline(config: configs.PipelineConfig, beam_args: Sequence[str],
                 recorder: RunRecorder) -> None:
    """Runs the stages in order up to `config.until`; raises on a failed stage."""
    run_id = recorder.summary["run_id"]
    options = beam_options(beam_args)
    root = config.pipeline_root
    dirs = {stage: artifact_dir(root, stage, run_id) for stage in configs.STAGES}
    last = configs.STAGES.index(config.until)

    recorder.stage(configs.EXAMPLE_GEN, dirs[configs.EXAMPLE_GEN], lambda: run_example_gen(
        config.inputs, dirs[configs.EXAMPLE_GEN], config.example_gen, options))
    if last < 1:
        return
    recorder.stage(configs.STATISTICS_GEN, dirs[configs.STATISTICS_GEN], lambda: {
        "splits": run_statistics_gen(dirs[configs.EXAMPLE_GEN], dirs[configs.STATISTICS_GEN],
                                     options)})
    if last < 2:
        return
    schema_info = recorder.stage(configs.SCHEMA_GEN, dirs[configs.SCHEMA_GEN], lambda: dict(zip(
        ("schema", "origin"),
        run_schema_gen(dirs[configs.STATISTICS_GEN], dirs[configs.SCHEMA_GEN],
                       config.schema_path))))
    if last < 3:
        return

    def validate():
        result = run_example_validator(
            dirs[configs.STATISTICS_GEN], load_schema(schema_info["schema"]),
            available_splits(dirs[configs.EXAMPLE_GEN]), dirs[configs.EXAMPLE_VALIDATOR])
        messages = [m for r in result.values() for m in r["messages"]]
        for m in messages:
            logging.warning("anomaly: %s", m)
        if any(r["blocking"] for r in result.values()) and not config.allow_anomalies:
            raise BlockingAnomaliesError(
                "data validation found blocking anomalies (see "
                f"{dirs[configs.EXAMPLE_VALIDATOR]}/Split-*/anomalies.pbtxt):\n  "
                + "\n  ".join(messages)
                + "\nFix the data or the schema, or pass --allow-anomalies to proceed knowingly.")
        return {"anomalies": {s: r["messages"] for s, r in result.items()},
                "allowed": bool(messages) and config.allow_anomalies}

    recorder.stage(configs.EXAMPLE_VALIDATOR, dirs[configs.EXAMPLE_VALIDATOR], validate)


def format_summary(summary: Dict[str, Any]) -> str:
    """A short human summary: stages, durations, counts."""
    lines = [f"run {summary['run_id']}: {summary['status']}"]
    for stage in summary["stages"]:
        lines.append(f"  {stage['name']:<17} {stage.get('status', '?'):<7} "
                     f"{stage.get('seconds', 0):>7.1f}s  {stage['output']}")
        details = stage.get("details") or {}
        if stage["name"] == configs.EXAMPLE_GEN and details:
            splits = ", ".join(f"{k} {v}" for k, v in details["splits"].items() if v)
            lines.append(f"      rows read {details['read']} = written {details['written']} "
                         f"({splits}) + quarantined {details['quarantined']}")
            for reason, n in sorted(details["quarantine_reasons"].items()):
                lines.append(f"      quarantined {n}: {reason}")
        if stage["name"] == configs.SCHEMA_GEN and details:
            lines.append(f"      schema {details['origin']}: {details['schema']}")
        if stage["name"] == configs.EXAMPLE_VALIDATOR and details:
            n = sum(len(v) for v in details["anomalies"].values())
            lines.append(f"      anomalies: {n}" + (" (allowed)" if details["allowed"] else ""))
    return "\n".join(lines)
