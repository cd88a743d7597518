"""Configuration and wiring of the TextCNN pipeline (control flows CLI -> pipeline -> components)."""
import components  # noqa: F401  (sets the legacy-Keras switch before TensorFlow is imported)
from components import PROGRESS_LOGGER  # noqa: F401  (the CLI's, without the slow imports)
