"""Pipeline stages (TFX names): each reads artifact directories and writes its own.

tf.Transform 1.16 needs Keras 2, so the legacy Keras switch must be set before TensorFlow is
first imported. Every process that runs project code imports this package first: the CLI, the
tests, and Beam workers (the pipeline names `components.worker_setup` as a Beam plugin, which
workers of any runner import before running anything; unpickling a DoFn imports it too).
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# Where stages report progress meant for a person (stage start/end, one line per epoch). The
# caller decides where it goes; the stages only log to it.
PROGRESS_LOGGER = "textcnn.progress"
