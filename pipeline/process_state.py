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
import random
from typing import Any, Dict, Iterator


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


def restore(state: Dict[str, Any]) -> None:
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from tensorflow.python.autograph.core import config as autograph
    from tensorflow.python.framework import config as tf_config

    csv.field_size_limit(state["csv_field_size_limit"])
    keras.mixed_precision.set_global_policy(state["mixed_precision_policy"])
    if tf_config.is_op_determinism_enabled() != state["op_determinism"]:
        (tf_config.enable_op_determinism if state["op_determinism"]
         else tf_config.disable_op_determinism)()
    if state["autograph_rules"] is not None:
        autograph.CONVERSION_RULES = state["autograph_rules"]
    random.setstate(state["python_random"])
    np.random.set_state(state["numpy_random"])
    tf.random.set_seed(state["tf_global_seed"])


@contextlib.contextmanager
def contained() -> Iterator[None]:
    """Runs the block, then restores the process-wide settings it may have changed."""
    state = snapshot()
    try:
        yield
    finally:
        restore(state)
