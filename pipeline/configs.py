"""Pipeline configuration: one typed object, loaded from a JSON or TOML file and CLI flags.

Each stage's settings are the stage's own dataclass (defined beside the stage in `components/`,
which never imports this package); this module composes them and owns every default that is not
a stage's.

A config file mirrors the dataclasses, one table per stage, e.g. (TOML):

    schema_path = "schemas/schema.pbtxt"   # or "infer"

    [example_gen]
    text_key = "sentence"
    eval_ratio = 0.2

    [trainer.model]
    embeddings = "data/glove.6B.50d.txt"
    embeddings_trainable = true

    [tuner]                                # off unless enabled (or --tune)
    enabled = true
    max_trials = 20

    [tuner.space]
    dropout_rate = [0.3, 0.5]
    learning_rate = { min = 0.0003, max = 0.003, sampling = "log" }

    [alerts]                               # none unless a command or a webhook is set
    webhook = "https://hooks.slack.com/services/..."
    on = ["failure", "anomalies", "not_blessed"]
    [window]                               # inputs with a {date} placeholder (pipeline/windows.py)
    days = 7                               # the last 7 days up to --date (date = "..." per run)
    allow_missing = false
    [retention]                            # what `gc` (or each run, after_run) removes
    keep_runs = 7
    after_run = true
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, Dict, List, Optional

from components import fileio
from components.errors import UserInputError
from components.evaluator import EvaluatorSettings
from components.readers import ExampleGenSettings
from components.example_validator import ExampleValidatorSettings
from components.pusher import PusherSettings
from components.score_settings import ScoreSettings
from components.trainer import TrainerSettings
from components.transform import TransformSettings
from components.tuner import TunerSettings
from pipeline.alerts import AlertSettings, recorded as recorded_alerts
from pipeline.windows import WindowSettings
from pipeline.retention import RetentionSettings

PIPELINE_NAME = "textcnn"
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SCHEMA = os.path.join(PROJECT_ROOT, "schemas", "schema.pbtxt")

# Stage names, in order (TFX's names).
EXAMPLE_GEN = "ExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "SchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
TRANSFORM = "Transform"
TUNER = "Tuner"
TRAINER = "Trainer"
EVALUATOR = "Evaluator"
PUSHER = "Pusher"
STAGES = (EXAMPLE_GEN, STATISTICS_GEN, SCHEMA_GEN, EXAMPLE_VALIDATOR, TRANSFORM, TUNER,
          TRAINER, EVALUATOR, PUSHER)
GIVEN_KEYS = "given_keys"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    pipeline_root: str = "pipeline_root"  # a local directory, or gs://, s3://, hdfs://...
    # Where the ML Metadata store (metadata.sqlite) and the run lock live: a local directory,
    # or one on a disk the machines that run the pipeline share. Default: the pipeline root,
    # which must then be local (see `metadata_dir_for`).
    metadata_dir: Optional[str] = None
    inputs: tuple = ()
    schema_path: str = DEFAULT_SCHEMA  # a curated schema file, or "infer" (schema_gen.INFER)
    allow_anomalies: bool = False
    until: str = STAGES[-1]
    example_gen: ExampleGenSettings = ExampleGenSettings()
    example_validator: ExampleValidatorSettings = ExampleValidatorSettings()
    transform: TransformSettings = TransformSettings()
    tuner: TunerSettings = TunerSettings()
    trainer: TrainerSettings = TrainerSettings()
    evaluator: EvaluatorSettings = EvaluatorSettings()
    pusher: PusherSettings = PusherSettings()
    score: ScoreSettings = ScoreSettings()  # bulk scoring (`score`); no pipeline stage reads it
    alerts: AlertSettings = AlertSettings()  # where `api.run` sends a run's ending; none by default
    # Which dates the inputs' {date} placeholders are read for (`pipeline.windows`); the run
    # replaces them with the concrete paths before ExampleGen sees `inputs`.
    window: WindowSettings = WindowSettings()
    retention: RetentionSettings = RetentionSettings()  # what `gc` keeps; no stage reads it
    # Set by `load_config`, not by a config file: the dotted keys the config file and the
    # command line gave (e.g. "trainer.model.dropout_rate"). Such trainer settings win over
    # the Tuner's values.
    given_keys: tuple = ()

    def __post_init__(self):
        if self.until not in STAGES:
            raise UserInputError(f"--until must be one of {', '.join(STAGES)}; got {self.until!r}")


def _build(cls, values: Dict[str, Any], where: str):
    """Builds dataclass `cls` from a dict, rejecting unknown keys and wrong types by name."""
    if not isinstance(values, dict):
        raise UserInputError(f"{where or 'config'} must be a table/object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}" if where else key
        if key not in fields:
            raise UserInputError(f"unknown config key {name!r}; known: {', '.join(fields)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, name)
        elif hint is tuple:
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        else:
            expected = typing.get_args(hint) or (hint,)
            expected = tuple(t for t in expected if isinstance(t, type))
            if expected and not isinstance(value, expected) or (
                    isinstance(value, bool) and bool not in expected):
                raise UserInputError(f"config key {name!r} must be "
                                     f"{' or '.join(t.__name__ for t in expected)}; got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def load_config(path: Optional[str], overrides: Dict[str, Any]) -> PipelineConfig:
    """Reads a JSON or TOML config file (optional) and applies CLI overrides on top."""
    values: Dict[str, Any] = {}
    if path:
        if not os.path.exists(path):
            raise UserInputError(f"config file {path} does not exist")
        try:
            if path.endswith(".toml"):
                import tomllib

                with open(path, "rb") as f:
                    values = tomllib.load(f)
            else:
                with open(path) as f:
                    values = json.load(f)
        except (ValueError, OSError) as e:
            raise UserInputError(f"config file {path} does not parse: {e}")
    if GIVEN_KEYS in values:
        raise UserInputError(f"unknown config key {GIVEN_KEYS!r} (the pipeline records it)")
    _merge(values, overrides)
    config = _build(PipelineConfig, values, "")
    config = dataclasses.replace(config, given_keys=tuple(sorted(_given_keys(config, values))))
    return with_wide_features(config)


def wants_wide_tower(config: PipelineConfig) -> bool:
    """Whether a model of this run may have the wide tower: trainer.model.wide true or "auto",
    or a Tuner whose space lists wide = true."""
    if config.trainer.model.wide is not False:
        return True
    # A wide the config gives explicitly is held at its value by the search (false here).
    space = (config.tuner.space.get("wide", []) if config.tuner.enabled
             and "trainer.model.wide" not in config.given_keys else [])
    return isinstance(space, (list, tuple)) and True in space


def with_wide_features(config: PipelineConfig) -> PipelineConfig:
    """The config with transform.wide on when a model of the run may have the wide tower (its
    input is the Transform's wide features), and off when none can (unless the config gives
    it); a config that turns them off explicitly for a wide tower gets an error."""
    wanted = wants_wide_tower(config)
    if wanted == config.transform.wide:
        return config
    if not wanted:
        if "transform.wide" in config.given_keys:
            return config  # computed as asked, e.g. for a later `train` with the tower
        return dataclasses.replace(config, transform=dataclasses.replace(config.transform,
                                                                         wide=False))
    if "transform.wide" in config.given_keys:
        raise UserInputError(
            "trainer.model.wide (or tuner.space.wide) needs the Transform's wide features, "
            "and the config sets transform.wide = false: remove that setting, or the wide tower")
    return dataclasses.replace(config, transform=dataclasses.replace(config.transform,
                                                                     wide=True))


def _given_keys(config: Any, values: Dict[str, Any], prefix: str = "") -> List[str]:
    """The dotted names of the settings `values` gives: a table is followed down when its
    setting is a dataclass, and is one setting otherwise (e.g. tuner.space)."""
    keys = []
    for key, value in values.items():
        setting = getattr(config, key)
        if dataclasses.is_dataclass(setting):
            keys += _given_keys(setting, value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def given_hyperparameters(config: PipelineConfig) -> List[str]:
    """The hyperparameters the Tuner may set that the config gives explicitly (they win)."""
    from components.tuner import MODEL_KEYS, TRAINER_KEYS

    given = set(config.given_keys)
    return sorted([k for k in MODEL_KEYS if f"trainer.model.{k}" in given]
                  + [k for k in TRAINER_KEYS if f"trainer.{k}" in given])


def _merge(values: Dict[str, Any], overrides: Dict[str, Any]) -> None:
    """Deep-merges `overrides` (nested dicts; None means "not given") into `values`."""
    for key, value in overrides.items():
        if isinstance(value, dict):
            if not isinstance(values.get(key, {}), dict):
                raise UserInputError(f"config key {key!r} must be a table/object")
            _merge(values.setdefault(key, {}), value)
        elif value is not None:
            values[key] = value


def to_dict(config: PipelineConfig) -> Dict[str, Any]:
    """The config as runs record it (summary.json, the store, a pushed version's metadata.json):
    everything, except a webhook's secret path (`pipeline.alerts.recorded`)."""
    return dict(dataclasses.asdict(config), alerts=recorded_alerts(config.alerts))


def metadata_dir_for(pipeline_root: str, metadata_dir: Optional[str] = None) -> str:
    """Where a root's ML Metadata store and run lock live: `metadata_dir`, else the root.

    SQLite and flock need a POSIX file system, so a root given as a URL (gs://, s3://...) needs
    a `metadata_dir` (UserInputError, exit 2, otherwise). A local default beside the
    launching process (say under ~/.cache) would give each machine its own store and lock:
    runs from two machines would not see each other, so there is none.
    """
    if metadata_dir:
        if "://" in metadata_dir:
            raise UserInputError(
                f"--metadata-dir {metadata_dir} must be a local path (a directory on this "
                "machine, or on a disk the machines share), not a URL: ML Metadata's SQLite "
                "database and the run lock need a POSIX file system")
        return os.path.abspath(metadata_dir)
    if "://" not in pipeline_root:
        return os.path.abspath(pipeline_root)
    raise UserInputError(
        f"the pipeline root {pipeline_root} is a URL, and ML Metadata's SQLite database and the "
        "run lock cannot live there: pass --metadata-dir DIR (or set metadata_dir in the "
        "config), a local directory, or one on a disk shared by the machines that run the "
        "pipeline")


def with_absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """The config with local paths made absolute: the run records them (summary, ML Metadata,
    cache keys), and later runs or `lineage` may start from another directory."""
    return dataclasses.replace(
        config, pipeline_root=fileio.absolute(config.pipeline_root),
        metadata_dir=config.metadata_dir and fileio.absolute(config.metadata_dir),
        inputs=tuple(fileio.absolute(p) for p in config.inputs),
        schema_path=config.schema_path if config.schema_path == "infer"
        else fileio.absolute(config.schema_path),
        pusher=dataclasses.replace(config.pusher,
                                   serving_dir=fileio.absolute(config.pusher.serving_dir)),
        trainer=dataclasses.replace(config.trainer, model=dataclasses.replace(
            config.trainer.model, embeddings=config.trainer.model.embeddings
            and fileio.absolute(config.trainer.model.embeddings))))
