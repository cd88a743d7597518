"""Tuner: searches the TextCNN's hyperparameters on Split-eval with KerasTuner (TFX's Tuner).

Each trial builds and fits the network as the Trainer does (same datasets, seed, optimizer and
early-stopping rule, fewer epochs) with one set of values from the search space; the objective
is the eval split's accuracy (the best epoch's), so the test split is never seen. The output is
`best_hyperparameters.json` (the winning values) and `trials.json` (every trial: values, eval
accuracy, epochs, seconds). The Trainer applies the winning values with `apply_hyperparameters`.

Repeatable: the algorithm's sampling is seeded, every trial starts from the same random state
(`tf_keras.utils.set_random_seed`) and TensorFlow's ops run deterministically, so the same
space, data and seed give the same trials and the same winner.
"""
from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from components import PROGRESS_LOGGER, features, fileio
from components.artifacts import staged_output
from components.errors import UserInputError
from components.model import ModelSettings, check_wide_features, resolve_wide
from components.trainer import TrainerSettings

BEST_FILE = "best_hyperparameters.json"
TRIALS_FILE = "trials.json"
OBJECTIVE = "val_accuracy"  # accuracy on Split-eval, the best epoch's
ALGORITHMS = ("random", "bayesian", "hyperband")

# What the search may vary: ModelSettings fields, and TrainerSettings' own.
MODEL_KEYS = ("embedding_dim", "filter_sizes", "num_filters", "dropout_rate", "max_norm",
              "pooling", "mask_zero", "embeddings_trainable", "multichannel", "unknown_vectors",
              "wide", "wide_dropout", "wide_l2", "wide_learning_rate_scale")
TRAINER_KEYS = ("learning_rate", "batch_size")
TUNABLE = MODEL_KEYS + TRAINER_KEYS
# KerasTuner: "true"/"false"
_BOOLEANS = ("mask_zero", "embeddings_trainable", "multichannel", "wide")
_NEED_EMBEDDINGS = ("embeddings_trainable", "multichannel", "unknown_vectors")
_RANGE_KEYS = ("min", "max", "step", "sampling")
_SAMPLINGS = ("linear", "log", "reverse_log")

# The space searched when the config gives none (`default_space`).
DEFAULT_SPACE: Dict[str, Any] = {
    "filter_sizes": [[3, 4, 5], [2, 3, 4], [1, 2, 3], [3, 4, 5, 6]],
    "num_filters": [100, 200],
    "dropout_rate": [0.3, 0.5],
    "learning_rate": {"min": 3e-4, "max": 3e-3, "sampling": "log"},
    "batch_size": [32, 64],
    "max_norm": [0.0, 3.0],
}
DEFAULT_RANDOM_SPACE = {"embedding_dim": [64, 128, 300]}  # without pretrained vectors
DEFAULT_PRETRAINED_SPACE = {"embeddings_trainable": [False, True],  # with them
                            "multichannel": [False, True],
                            "unknown_vectors": ["uniform", "variance"]}


@dataclasses.dataclass(frozen=True)
class TunerSettings:
    """The search: off unless enabled; its algorithm, budget, seed and space."""

    enabled: bool = False
    algorithm: str = "random"  # random, bayesian (Gaussian process) or hyperband
    max_trials: int = 10  # trials at most (Hyperband: its brackets are cut there)
    epochs: int = 10  # epochs per trial at most (Hyperband's max_epochs)
    early_stopping_patience: int = 3  # within a trial (random, bayesian); 0: none
    max_seconds: float = 0.0  # wall-clock cap on the search; 0: none. No trial starts after
    # it, and the running one stops at its next epoch end (its best epoch so far counts).
    hyperband_factor: int = 3
    seed: int = 42
    # name -> a list of values to choose from, or a range {min, max, step?, sampling?} for a
    # number. Names: TUNABLE. Empty: DEFAULT_SPACE plus embedding_dim (random vectors) or
    # embeddings_trainable, multichannel and unknown_vectors (pretrained). filter_sizes' values
    # are lists.
    space: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise UserInputError(f"tuner.algorithm must be one of {', '.join(ALGORITHMS)}; got "
                                 f"{self.algorithm!r}")
        if self.max_trials < 1 or self.epochs < 1:
            raise UserInputError("tuner.max_trials and tuner.epochs must be at least 1")
        if self.max_seconds < 0 or self.early_stopping_patience < 0:
            raise UserInputError("tuner.max_seconds and tuner.early_stopping_patience must not "
                                 "be negative")
        if self.hyperband_factor < 2:
            raise UserInputError("tuner.hyperband_factor must be at least 2")
        for name, values in self.space.items():
            _check_dimension(name, values)


def _check_dimension(name: str, values: Any) -> None:
    """A search-space entry's shape: a known name, a non-empty list or a numeric range."""
    where = f"tuner.space.{name}"
    if name not in TUNABLE:
        raise UserInputError(f"{where}: not a hyperparameter the search can vary; known: "
                             f"{', '.join(TUNABLE)}")
    if isinstance(values, (list, tuple)):
        if not values:
            raise UserInputError(f"{where}: an empty list of values")
        if len({_encode(name, v) for v in values}) != len(values):
            raise UserInputError(f"{where}: a value is listed twice in {list(values)}")
        return
    if not isinstance(values, Mapping):
        raise UserInputError(f"{where} must be a list of values or a range table "
                             f"{{min, max, step, sampling}}; got {values!r}")
    unknown = sorted(set(values) - set(_RANGE_KEYS))
    if unknown or "min" not in values or "max" not in values:
        raise UserInputError(f"{where}: a range needs min and max (and optionally step, "
                             f"sampling); got {dict(values)}")
    default = _default(name)
    if isinstance(default, bool) or not isinstance(default, (int, float)):
        raise UserInputError(f"{where}: only a number can be a range; list its values instead")
    bounds = (values["min"], values["max"]) + ((values["step"],) if "step" in values else ())
    if not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        raise UserInputError(f"{where}: min, max and step must be numbers; got {dict(values)}")
    if isinstance(default, int) and not all(float(b).is_integer() for b in bounds):
        raise UserInputError(f"{where}: {name} is a whole number; got {dict(values)}")
    if not values["min"] < values["max"]:
        raise UserInputError(f"{where}: min must be below max; got {dict(values)}")
    sampling = values.get("sampling", "linear")
    if sampling not in _SAMPLINGS:
        raise UserInputError(f"{where}: sampling must be one of {', '.join(_SAMPLINGS)}")
    if sampling != "linear" and values["min"] <= 0:
        raise UserInputError(f"{where}: {sampling} sampling needs min > 0")
    step = values.get("step")
    if step is not None and sampling == "linear" and step > values["max"] - values["min"]:
        raise UserInputError(f"{where}: a step of {step} leaves only min in the range; got "
                             f"{dict(values)}")
    if step is not None and (step <= 0 or sampling != "linear" and step <= 1):
        raise UserInputError(f"{where}: step must be above 0, and with {sampling} sampling above "
                             f"1 (a factor between values); got {step}")


def _default(name: str) -> Any:
    """The settings' default of hyperparameter `name` (which gives its type)."""
    return getattr(ModelSettings() if name in MODEL_KEYS else TrainerSettings(), name)


def _encode(name: str, value: Any) -> Any:
    """A value as KerasTuner holds it (bool, int, float or str): filter_sizes as "3,4,5"."""
    if name == "filter_sizes":
        if not isinstance(value, (list, tuple)) or not value or not all(
                isinstance(k, int) and not isinstance(k, bool) for k in value):
            raise UserInputError(f"tuner.space.filter_sizes: each value is a list of kernel "
                                 f"sizes, e.g. [3, 4, 5]; got {value!r}")
        return ",".join(str(k) for k in value)
    if name in _BOOLEANS:
        if not isinstance(value, bool):
            raise UserInputError(f"tuner.space.{name}: the values are true and false; got "
                                 f"{value!r}")
        return "true" if value else "false"  # a bool Choice would come back as 0 and 1
    if isinstance(value, (list, tuple, Mapping)) or value is None or isinstance(value, bool):
        raise UserInputError(f"tuner.space.{name}: {value!r} is not a single value of its kind")
    default = _default(name)
    if isinstance(default, float):  # a Choice holds one type: 0 and 3.0 are both floats
        if not isinstance(value, (int, float)):
            raise UserInputError(f"tuner.space.{name}: {value!r} is not a number")
        return float(value)
    if isinstance(default, int) and not (isinstance(value, int) or isinstance(value, float)
                                         and value.is_integer()):
        raise UserInputError(f"tuner.space.{name}: {value!r} is not a whole number")
    if isinstance(default, int):
        return int(value)
    if not isinstance(value, str):
        raise UserInputError(f"tuner.space.{name}: {value!r} is not a name")
    return value


def decode_values(values: Mapping[str, Any]) -> Dict[str, Any]:
    """KerasTuner's values (without its own `tuner/...` bookkeeping) as settings values."""
    out = {}
    for name, value in values.items():
        if name.startswith("tuner/"):
            continue
        if name == "filter_sizes":
            value = [int(k) for k in value.split(",")]
        elif name in _BOOLEANS:
            value = value == "true"
        out[name] = value
    return out


def with_values(settings: TrainerSettings, values: Mapping[str, Any]) -> TrainerSettings:
    """`settings` with hyperparameter `values` (names from TUNABLE) set; invalid values raise
    UserInputError with the settings' own message."""
    unknown = sorted(set(values) - set(TUNABLE))
    if unknown:
        raise UserInputError(f"not hyperparameters the Tuner sets: {', '.join(unknown)}")
    model = {k: tuple(v) if k == "filter_sizes" else v for k, v in values.items()
             if k in MODEL_KEYS}
    trainer = {k: v for k, v in values.items() if k in TRAINER_KEYS}
    return dataclasses.replace(settings, model=dataclasses.replace(settings.model, **model),
                               **trainer)


def current_values(settings: TrainerSettings, names: Iterable[str] = TUNABLE) -> Dict[str, Any]:
    """The values `settings` has for the hyperparameters `names` (JSON-ready)."""
    out = {}
    for name in names:
        value = getattr(settings.model if name in MODEL_KEYS else settings, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def default_space(settings: TrainerSettings) -> Dict[str, Any]:
    extra = DEFAULT_PRETRAINED_SPACE if settings.model.embeddings else DEFAULT_RANDOM_SPACE
    return dict(DEFAULT_SPACE, **extra)


def held_names(given: Iterable[str]) -> set:
    """The hyperparameters kept at the config's value when the config gives `given`: those,
    and multichannel with a given embeddings_trainable (both copies would drop that choice)."""
    held = set(given)
    if "embeddings_trainable" in held:
        held.add("multichannel")
    return held


def resolve_space(tuner: TunerSettings, settings: TrainerSettings,
                  held: Iterable[str] = ()) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(the space searched, the hyperparameters held at the Trainer's value).

    The configured space (or `default_space`), less the names in `held` (settings the config
    gives explicitly: the Trainer will use those, so the search does too). Every listed value,
    and each range's ends, must make valid settings (UserInputError otherwise).
    """
    space = dict(tuner.space) or default_space(settings)
    held = held_names(held)
    held_values = current_values(settings, sorted(held & set(space)))
    space = {k: v for k, v in space.items() if k not in held_values}
    for name, values in space.items():
        if name in _NEED_EMBEDDINGS and not settings.model.embeddings:
            raise UserInputError(f"tuner.space.{name} applies to pretrained vectors: set "
                                 f"trainer.model.embeddings (--embeddings), or leave it out of "
                                 f"the space")
        if name == "embedding_dim" and settings.model.embeddings:
            raise UserInputError("tuner.space.embedding_dim does not apply to pretrained "
                                 "vectors (their file sets the size): leave it out of the space")
        candidates = (values if isinstance(values, (list, tuple))
                      else [values["min"], values["max"]])
        for value in candidates:
            try:
                with_values(settings, {name: value})
            except (UserInputError, TypeError, ValueError) as e:
                raise UserInputError(f"tuner.space.{name}: {value!r} is not a valid value: {e}")
    wide_keys = sorted(k for k in space if k.startswith("wide_"))
    if wide_keys and not settings.model.wide and True not in space.get("wide", ()):
        raise UserInputError(
            f"tuner.space.{wide_keys[0]} applies to the wide tower, which no trial has: set "
            f"trainer.model.wide = true, or list wide = [false, true] in the space")
    if not space:
        raise UserInputError("the Tuner has nothing to search: every hyperparameter of "
                             "tuner.space is set explicitly in the trainer config (those win)")
    return space, held_values


def apply_hyperparameters(settings: TrainerSettings, best: Mapping[str, Any],
                          given: Iterable[str] = ()
                          ) -> Tuple[TrainerSettings, Dict[str, Dict[str, Any]]]:
    """The Trainer's settings with the Tuner's `best` values, except those in `given` (set
    explicitly in the config: they win). Returns (settings, {name: {"value", "source"}}) for
    every tunable hyperparameter, source "config", "tuner" or "default"."""
    given = held_names(given)
    tuned = {k: v for k, v in best.items() if k not in given}
    result = with_values(settings, tuned)
    sources = {name: {"value": value,
                      "source": "config" if name in given else
                      "tuner" if name in tuned else "default"}
               for name, value in current_values(result).items()}
    return result, sources


def run_tuner(transform_dir: str, output_dir: str, trainer: TrainerSettings,
              tuner: TunerSettings, held: Iterable[str] = ()) -> Dict[str, Any]:
    """Searches `tuner`'s space around the Trainer's `trainer` settings on the Transform
    output, writes `best_hyperparameters.json` and `trials.json` to `output_dir`; returns the
    best values and the trial table. `held`: hyperparameter names the search keeps at
    `trainer`'s value (see `resolve_space`)."""
    from components.trainer import read_transform_info

    space, held_values = resolve_space(tuner, trainer, held)
    info = read_transform_info(transform_dir)
    trainer = dataclasses.replace(trainer, model=resolve_wide(trainer.model, info))
    if features.EVAL not in info["splits"]:
        raise UserInputError("the Transform output has no Split-eval: the Tuner's objective "
                             "is the eval accuracy")
    if trainer.model.wide or True in space.get("wide", ()):
        check_wide_features(info.get("wide_input_dim"),
                            "the search's wide tower (trainer.model.wide or tuner.space.wide)")
    # The Trainer's runtime settings, so that a trial trains as the Trainer would.
    import tensorflow as tf
    import tf_keras as keras

    from components.trainer import choose_strategy, skip_autograph_for_tf_keras

    strategy = choose_strategy()  # the local devices (the search runs on one machine)
    skip_autograph_for_tf_keras()
    if trainer.deterministic:
        tf.config.experimental.enable_op_determinism()
    search = _Search(transform_dir, info, trainer, tuner, space, strategy)
    start = time.monotonic()
    if trainer.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with tempfile.TemporaryDirectory(prefix="textcnn-tuner-") as work:
            trials = search.run(work)
    finally:
        if trainer.mixed_precision:
            keras.mixed_precision.set_global_policy("float32")
    seconds = round(time.monotonic() - start, 1)
    done = [t for t in trials if t["eval_accuracy"] is not None]
    if not done:
        error = RuntimeError("every Tuner trial failed; the first: "
                             + ((trials[0].get("error") or "no message") if trials
                                else "no trial ran"))
        error.details = {"trials": trials}  # for the run's summary and report
        raise error
    best = max(done, key=lambda t: (t["eval_accuracy"], -int(t["trial"])))
    result = {
        "values": best["values"],
        "best_trial": best["trial"],
        "best_eval_accuracy": best["eval_accuracy"],
        "objective": f"{OBJECTIVE} (Split-{features.EVAL} accuracy, best epoch)",
        "algorithm": tuner.algorithm,
        "seed": tuner.seed,
        "trials_run": len(trials),
        "trials_failed": len(trials) - len(done),
        "stopped_by_time": search.stopped_by_time,
        "warnings": search.warnings,
        "search_seconds": seconds,
        "settings": {k: v for k, v in dataclasses.asdict(tuner).items()
                     if k not in ("enabled", "space")},
        "space": space,
        "held": held_values,
    }
    with staged_output(output_dir) as tmp:
        fileio.write_json(fileio.join(tmp, BEST_FILE), result, indent=2, sort_keys=True)
        fileio.write_json(fileio.join(tmp, TRIALS_FILE), {"trials": trials}, indent=2,
                          sort_keys=True)
    return dict(result, trials=trials)


def load_best(tuner_dir: str) -> Dict[str, Any]:
    """The `values` of a Tuner output's best_hyperparameters.json."""
    path = fileio.join(tuner_dir, BEST_FILE)
    if not fileio.exists(path):
        raise UserInputError(f"{tuner_dir} is not a Tuner output (it has no {BEST_FILE})")
    return fileio.read_json(path)["values"]


class _Search:
    """One KerasTuner search over the TextCNN; `run` returns the trial table."""

    def __init__(self, transform_dir: str, info: Dict[str, Any], trainer: TrainerSettings,
                 tuner: TunerSettings, space: Dict[str, Any], strategy):
        self.strategy = strategy
        self.transform_dir = transform_dir
        self.info = info
        self.trainer = trainer
        self.tuner = tuner
        self.space = space
        self.deadline = (time.monotonic() + tuner.max_seconds) if tuner.max_seconds else None
        self.stopped_by_time = False
        self._matrices: Dict[str, Any] = {}
        self._tft_output = None  # the Transform output, read on first use
        self._rows: Dict[str, Dict[str, Any]] = {}
        self.warnings: List[str] = []
        self.declaring = False  # while KerasTuner reads the space (the Tuner's construction)

    # --------------------------------------------------------------------------- the network

    def declare(self, hp) -> Dict[str, Any]:
        """Declares the space on KerasTuner's `hp`; returns this trial's values, decoded."""
        for name, values in self.space.items():
            if isinstance(values, (list, tuple)):
                hp.Choice(name, [_encode(name, v) for v in values], ordered=False)
                continue
            sampling = values.get("sampling", "linear")
            if isinstance(_default(name), int):
                step = values.get("step", 1 if sampling == "linear" else None)
                hp.Int(name, int(values["min"]), int(values["max"]),
                       step=None if step is None else int(step), sampling=sampling)
            else:
                hp.Float(name, float(values["min"]), float(values["max"]),
                         step=values.get("step"), sampling=sampling)
        return decode_values({k: hp.get(k) for k in self.space})

    def settings(self, hp) -> TrainerSettings:
        return with_values(self.trainer, self.declare(hp))

    def build(self, hp):
        import tf_keras as keras

        from components.model import build_textcnn
        from components.trainer import batches_per_pass, compile_textcnn

        settings = self.settings(hp)
        keras.utils.set_random_seed(self.tuner.seed)  # every trial starts from the same state
        model = build_textcnn(self.info["input_dim"], self.info["max_len"],
                              len(self.info["classes"]), settings.model,
                              self._embeddings(settings), self.info.get("wide_input_dim"))
        compile_textcnn(model, settings, batches_per_pass(
            self.info, features.TRAIN, self._global_batch(settings), settings) is not None)
        return model

    def _global_batch(self, settings: TrainerSettings) -> int:
        return settings.batch_size * self.strategy.num_replicas_in_sync

    def _transform_output(self):
        if self._tft_output is None:
            import tensorflow_transform as tft

            self._tft_output = tft.TFTransformOutput(self.transform_dir)
        return self._tft_output

    def _embeddings(self, settings: TrainerSettings):
        """The pretrained matrix for this trial's settings (one per unknown_vectors rule)."""
        if not settings.model.embeddings:
            return None
        key = settings.model.unknown_vectors
        if key not in self._matrices:
            from components.trainer import load_vocabulary_vectors

            self._matrices[key], _ = load_vocabulary_vectors(
                self._transform_output(), self.info, settings.model, self.trainer.seed)
        return self._matrices[key]

    def fit(self, hp, model, *args, callbacks=(), **kwargs):
        """Fits a trial's model on Split-train, validating on Split-eval: the Trainer's
        datasets for this trial's batch size."""
        import tf_keras as keras

        from components.trainer import split_datasets

        settings = self.settings(hp)
        datasets, _ = split_datasets(self.transform_dir, self.info,
                                     self._transform_output().transformed_feature_spec(),
                                     (features.TRAIN, features.EVAL),
                                     self._global_batch(settings), settings)
        callbacks = list(callbacks) + [_deadline_callback(self)]
        if self.tuner.algorithm != "hyperband" and self.tuner.early_stopping_patience:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor=OBJECTIVE, mode="max", patience=self.tuner.early_stopping_patience))
        kwargs.update(verbose=0, callbacks=callbacks)
        kwargs.setdefault("epochs", self.tuner.epochs)
        return model.fit(datasets[features.TRAIN], validation_data=datasets[features.EVAL],
                         **kwargs)

    # ------------------------------------------------------------------------------ the search

    def run(self, work_dir: str) -> List[Dict[str, Any]]:
        import keras_tuner as kt

        search = self
        tuner_class = {"random": kt.RandomSearch, "bayesian": kt.BayesianOptimization,
                       "hyperband": kt.Hyperband}[self.tuner.algorithm]

        class HyperModel(kt.HyperModel):
            def declare_hyperparameters(self, hp):
                search.declare(hp)

            def build(self, hp):
                if search.declaring:  # KerasTuner's first look at the space: no model needed
                    search.declare(hp)
                    return None
                return search.build(hp)

            def fit(self, hp, model, *args, **kwargs):
                return search.fit(hp, model, *args, **kwargs)

        class Tuner(tuner_class):
            def pre_create_trial(self):
                # After the time cap no trial starts: the oracle is told it has had its last.
                started = len(self.oracle.trials)
                if search.deadline is not None and time.monotonic() >= search.deadline \
                        and started and started < (self.oracle.max_trials or float("inf")):
                    search.stopped_by_time = True
                    self.oracle.max_trials = started

            def run_trial(self, trial, *args, **kwargs):
                return search.timed_trial(trial, lambda: super(Tuner, self).run_trial(
                    trial, *args, **kwargs))

        try:  # what KerasTuner refuses is the config's mistake, said as one
            self.declare(kt.HyperParameters())
        except (ValueError, TypeError) as e:
            raise UserInputError(f"tuner.space: KerasTuner rejects it: {e}")
        budget = ({"max_epochs": self.tuner.epochs, "factor": self.tuner.hyperband_factor,
                   "hyperband_iterations": 1} if self.tuner.algorithm == "hyperband"
                  else {"max_trials": self.tuner.max_trials})
        if self.tuner.algorithm == "bayesian":
            _check_bayesian_available()
            # KerasTuner's default (3 random trials per dimension) would spend a small budget
            # before the Gaussian process ever fits: half of it at most.
            budget["num_initial_points"] = max(2, min(3 * len(self.space),
                                                      self.tuner.max_trials // 2))
        self.declaring = True
        try:
            tuner = Tuner(HyperModel(), objective=kt.Objective(OBJECTIVE, "max"),
                          seed=self.tuner.seed, distribution_strategy=self.strategy,
                          directory=work_dir, project_name="search",
                          overwrite=True, max_consecutive_failed_trials=self.tuner.max_trials,
                          **budget)
        finally:
            self.declaring = False
        if self.tuner.algorithm == "hyperband":
            tuner.oracle.max_trials = self.tuner.max_trials
            full = _hyperband_iteration_trials(tuner.oracle)
            if full and full > self.tuner.max_trials:
                self.warnings.append(
                    f"Hyperband with tuner.epochs {self.tuner.epochs} and hyperband_factor "
                    f"{self.tuner.hyperband_factor} needs {full} trials for one iteration; "
                    f"tuner.max_trials {self.tuner.max_trials} cuts it, so the later rounds "
                    "(which train the best trials longer) may never run")
        try:
            tuner.search(verbose=0)
        except RuntimeError as e:  # KerasTuner gives up after max_consecutive_failed_trials:
            if "consecutive failures" not in str(e):  # every trial failed, said below
                raise
        rows = []
        for trial_id, trial in sorted(tuner.oracle.trials.items()):
            row = self._rows.get(trial_id, {"trial": trial_id, "seconds": None, "epochs": None})
            row.update(values=decode_values(trial.hyperparameters.values),
                       status=str(trial.status).split(".")[-1].lower(),
                       eval_accuracy=trial.score, best_epoch=(
                           None if trial.score is None
                           else row.get("initial_epoch", 0) + int(trial.best_step) + 1))
            row.pop("initial_epoch", None)
            if trial.status != "COMPLETED" and trial.message:
                row["error"] = _last_line(trial.message)
            rows.append(row)
        return rows

    def timed_trial(self, trial, run):
        """Runs a trial; records its seconds and epochs and a progress line."""
        start = time.monotonic()
        row = self._rows.setdefault(trial.trial_id, {"trial": trial.trial_id})
        try:
            result = run()
        finally:
            row["seconds"] = round(time.monotonic() - start, 1)
        histories = result if isinstance(result, list) else [result]
        # A Hyperband trial of a later round goes on from an earlier one's weights.
        row["initial_epoch"] = int(trial.hyperparameters.values.get("tuner/initial_epoch", 0))
        row["epochs"] = row["initial_epoch"] + max(
            len(getattr(h, "history", {}).get("loss", [])) for h in histories)
        best = max((max(h.history.get(OBJECTIVE, [float("nan")])) for h in histories
                    if hasattr(h, "history")), default=float("nan"))
        values = decode_values(trial.hyperparameters.values)
        logging.getLogger(PROGRESS_LOGGER).info(
            "  trial %s: eval accuracy %.4f in %d epochs, %.1fs: %s", trial.trial_id, best,
            row["epochs"], row["seconds"],
            ", ".join(f"{k} {format_value(v)}" for k, v in values.items()))
        return result


def _deadline_callback(search: _Search):
    """A Keras callback that stops a trial at an epoch end once the search's time is up."""
    import tf_keras as keras

    class Stop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if search.deadline is not None and time.monotonic() >= search.deadline:
                self.model.stop_training = True
                if epoch + 1 < self.params.get("epochs", epoch + 2):  # epochs were left
                    search.stopped_by_time = True

    return Stop()


def _hyperband_iteration_trials(oracle) -> int:
    """Trials in one full Hyperband iteration (every bracket, every round), from KerasTuner's
    own bracket arithmetic; 0 if it is not there to ask."""
    try:
        return sum(oracle._get_size(bracket, round_num)
                   for bracket in range(oracle._get_num_brackets())
                   for round_num in range(oracle._get_num_rounds(bracket)))
    except (AttributeError, TypeError):
        return 0


def _check_bayesian_available() -> None:
    import importlib.util

    if importlib.util.find_spec("sklearn") is None:  # KerasTuner's Gaussian process
        raise UserInputError("tuner.algorithm = \"bayesian\" needs scikit-learn (a dependency "
                             "of this project: reinstall it with `pip install -e .`)")


def _last_line(message: str) -> str:
    lines = [line for line in message.strip().splitlines() if line.strip()]
    return lines[-1] if lines else message


def format_value(value: Any) -> str:
    """A hyperparameter value for people: 0.00123, 3,4,5, True."""
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)

