"""Pipeline stages (TFX names): each reads artifact directories and writes its own.

tf.Transform 1.16 needs Keras 2, so the legacy Keras switch must be set before TensorFlow is
first imported. Every process that runs project code imports this package first: the CLI, the
tests, and Beam workers (the pipeline names this package as a Beam plugin, which workers of any
runner import before running anything; unpickling a DoFn imports it too).
"""
import os
import sys

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# Where stages report progress meant for a person (stage start/end, one line per epoch). The
# caller decides where it goes; the stages only log to it.
PROGRESS_LOGGER = "textcnn.progress"

_default_unraisablehook = sys.unraisablehook


def _drop_tensorflow_teardown_noise(unraisable) -> None:
    """TF 2.16's AtomicFunction.__del__ fails against half-torn-down modules when a process
    exits ("Exception ignored in ... TypeError: 'NoneType' object is not subscriptable"). It is
    harmless and reads like a failure, so it is dropped; every other such error is reported."""
    if getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__":
        return
    _default_unraisablehook(unraisable)


sys.unraisablehook = _drop_tensorflow_teardown_noise
