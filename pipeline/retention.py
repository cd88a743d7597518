"""The `[retention]` table: which runs a pipeline root keeps when `gc` removes the rest of its
history (pipeline/garbage_collection.py).

Kept: the newest `keep_runs` pipeline runs and those started within `keep_days` days (either
rule keeps a run; a limit of 0 is no rule, and with no rule every run is kept); always the
newest run and the run in progress; with `keep_pushed_lineage`, every run that pushed a
version still in the serving directory. `after_run`: `run` calls gc at the end of a run that
succeeded. Only settings here: the configuration imports this module, and what the
configuration imports counts in the code version of the stages that read it.
"""
from __future__ import annotations

import dataclasses

from components.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class RetentionSettings:
    """The `[retention]` table: which runs a root keeps (see the module docstring)."""

    keep_runs: int = 0  # keep the newest N pipeline runs; 0: no limit by count
    keep_days: int = 0  # keep the runs started within N days; 0: no limit by age
    keep_pushed_lineage: bool = True  # keep the runs that pushed a version still served from
    after_run: bool = False  # `run` calls gc at the end of a run that succeeded

    def __post_init__(self):
        for name in ("keep_runs", "keep_days"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserInputError(f"retention.{name} must be a whole number >= 0 (0: no "
                                     f"limit); got {value!r}")

    @property
    def limited(self) -> bool:
        """Whether a rule limits the runs kept (else gc keeps every run)."""
        return bool(self.keep_runs or self.keep_days)
