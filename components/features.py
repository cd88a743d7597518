"""Feature keys of the raw tf.Examples, spelled once for the whole project."""

TEXT = "text"
LABEL = "label"
ID = "id"

# Per-document statistics the Transform outputs beside the model's inputs.
TOKENS = "text_tokens"  # tokens before truncation
OOV_TOKENS = "text_oov_tokens"  # of those, out of vocabulary
# The wide tower's input: each document's n-grams (ids) and their TF-IDF weights.
WIDE_IDS = "text_wide_ids"
WIDE_WEIGHTS = "text_wide_weights"

# Splits as TFX names them; the directory of split `s` is `Split-<s>`.
TRAIN = "train"
EVAL = "eval"
TEST = "test"
SPLITS = (TRAIN, EVAL, TEST)

# Schema environments.
TRAINING = "TRAINING"
SERVING = "SERVING"


def split_dir_name(split: str) -> str:
    return f"Split-{split}"


def transformed_name(key: str) -> str:
    """Name of the transformed feature made from raw feature `key`."""
    return f"{key}_xf"
