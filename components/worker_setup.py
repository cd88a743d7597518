"""Imported first by every Beam worker process (the pipeline names it with `--beam_plugin`).

Importing it imports the `components` package, which sets the legacy-Keras switch before the
worker imports TensorFlow. It also drops one known piece of exit noise: TF 2.16's
AtomicFunction.__del__ fails against half-torn-down modules while a worker process exits
("Exception ignored in ... TypeError: 'NoneType' object is not subscriptable"). That error is
harmless and reads like a failure; every other unraisable error is reported as usual.
"""
import sys

import components  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)


# What the hook uses is bound as defaults: at exit, module globals are already set to None.
def _drop_tensorflow_exit_noise(unraisable, _is_finalizing=sys.is_finalizing,
                                _report=sys.unraisablehook) -> None:
    if (_is_finalizing() and isinstance(unraisable.exc_value, TypeError)
            and getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__"):
        return
    _report(unraisable)


sys.unraisablehook = _drop_tensorflow_exit_noise
