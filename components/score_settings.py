"""Bulk scoring's settings (the config file's `[score]` table), apart from the scorer itself.

The pipeline's config composes every stage's settings; this dataclass lives in a module of its
own so that the config does not import the scorer, whose edits then change no training stage's
code version.
"""
from __future__ import annotations

import dataclasses

from components.errors import UserInputError
from components.example_validator import check_threshold

FORMATS = ("jsonl", "csv", "parquet")


@dataclasses.dataclass(frozen=True)
class ScoreSettings:
    # Output formats, any of FORMATS; each gets the same shards (predictions-SSSSS-of-NNNNN.*
    # with the same rows in each format's shard of a number).
    formats: tuple = ("jsonl",)
    # Texts per call of the model's signature (fixed: the last batch of a worker is shorter).
    batch_size: int = 256
    # At most this many rows per output shard. A million rows (a few hundred MB of JSONL) per
    # shard: one shard for a test set, ~100 for 100M rows.
    rows_per_shard: int = 1_000_000
    # TFDV statistics of the rows in the same pass (one GenerateStatistics), to validate them
    # against the schema's SERVING environment and to compare them with the model's training
    # data (skew). Off: neither check is made, and the summary says so.
    statistics: bool = True
    allow_anomalies: bool = False
    # Skew against the model's training data (components/drift.py): thresholds as the
    # ExampleValidator's drift ones (0 turns a comparison off); reported in the summary, and
    # stopping the job (unless allow_anomalies) only when skew_blocking is set.
    skew_label_linf: float = 0.1
    skew_text_length_jsd: float = 0.1
    skew_blocking: bool = False

    def __post_init__(self):
        for name in ("skew_label_linf", "skew_text_length_jsd"):
            check_threshold(name, getattr(self, name))
        if isinstance(self.formats, str):
            object.__setattr__(self, "formats", tuple(
                f.strip() for f in self.formats.split(",") if f.strip()))
        formats = tuple(self.formats)
        unknown = [f for f in formats if f not in FORMATS]
        if not formats or unknown or len(set(formats)) != len(formats):
            raise UserInputError(f"score.formats must be one or more of {', '.join(FORMATS)}, "
                                 f"each once; got {', '.join(map(str, formats)) or 'none'}")
        object.__setattr__(self, "formats", formats)
        for name in ("batch_size", "rows_per_shard"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserInputError(f"score.{name} must be a whole number >= 1; got {value!r}")
