"""Process-wide settings a stage changes, restored when it ends: stages share one process.

The CLI runs every stage in one Python process, and so does a notebook or a scheduler that calls
`pipeline.api.run` several times. Some stages change settings that belong to the whole process:
the csv module's field size limit (ExampleGen reads long documents), Keras' global
mixed-precision policy and TensorFlow's op determinism (Trainer, Tuner), AutoGraph's conversion
rules (`trainer.skip_autograph_for_tf_keras`), and the Python, NumPy and TensorFlow random
seeds (`tf_keras.utils.set_random_seed`). `contained()` takes them as they are and puts them back
when the block ends, however it ends, so that a stage run after another, in any order, sees the
process as a stage run alone does.
"""
from __future__ import annotations

import contextlib
import csv
import logging
import random
from typing import Any, Dict, Iterator, List

from components import PROGRESS_LOGGER


def snapshot() -> Dict[str, Any]:
    """The settings `contained` restores, as they are now."""
    import numpy as np
    import tf_keras as keras
    from tensorflow.python.autograph.core import config as autograph
    from tensorflow.python.eager import context
    from tensorflow.python.framework import config as tf_config

    return {
        "csv_field_size_limit": csv.field_size_limit(),
        "mixed_precision_policy": keras.mixed_precision.global_policy().name,
        "op_determinism": tf_config.is_op_determinism_enabled(),
        "autograph_rules": getattr(autograph, "CONVERSION_RULES", None),
        "python_random": random.getstate(),
        "numpy_random": np.random.get_state(),
        "tf_global_seed": context.global_seed(),
    }


def restore(state: Dict[str, Any]) -> List[str]:
    """Puts each setting back, each on its own: one that cannot be restored does not keep the
    others from it. Returns what could not be restored, in words."""
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from tensorflow.python.autograph.core import config as autograph
    from tensorflow.python.framework import config as tf_config

    def determinism():
        if tf_config.is_op_determinism_enabled() != state["op_determinism"]:
            (tf_config.enable_op_determinism if state["op_determinism"]
             else tf_config.disable_op_determinism)()

    def autograph_rules():
        if state["autograph_rules"] is not None:
            autograph.CONVERSION_RULES = state["autograph_rules"]

    steps = [
        ("csv field size limit", lambda: csv.field_size_limit(state["csv_field_size_limit"])),
        ("mixed-precision policy",
         lambda: keras.mixed_precision.set_global_policy(state["mixed_precision_policy"])),
        ("op determinism", determinism),
        ("AutoGraph rules", autograph_rules),
        ("Python random state", lambda: random.setstate(state["python_random"])),
        ("NumPy random state", lambda: np.random.set_state(state["numpy_random"])),
        ("TensorFlow global seed", lambda: tf.random.set_seed(state["tf_global_seed"])),
    ]
    failed = []
    for name, step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001  (reported; the others are still restored)
            failed.append(f"{name}: {e}")
    return failed


@contextlib.contextmanager
def contained() -> Iterator[None]:
    """Runs the block, then restores the process-wide settings it may have changed. A setting
    that cannot be restored is logged; it never replaces the block's own error."""
    state = snapshot()
    try:
        yield
    finally:
        for problem in restore(state):
            logging.getLogger(PROGRESS_LOGGER).warning(
                "warning: a process-wide setting was not restored after the stage (%s)", problem)
