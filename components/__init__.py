"""Pipeline stages (TFX names): each reads artifact directories and writes its own.

tf.Transform 1.16 needs Keras 2, so the legacy Keras switch must be set before TensorFlow is
first imported. Every process that runs project code imports this package first (the CLI, the
tests, and Beam workers unpickling a DoFn), so setting it here covers all of them.
"""
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
