"""Date windows: inputs landed in date-partitioned folders, read over the last N days.

TFX leaves date windows and backfills to the user (its "spans"); here they are a placeholder
in `--input` and a `[window]` table. An input may hold one or more date placeholders:

    {date}            the date as YYYY-MM-DD              incoming/{date}/*.jsonl
    {date:FORMAT}     the date through strftime's FORMAT  incoming/{date:year=%Y/month=%m/day=%d}/*.csv

A run with `--date D` and `--window-days N` reads each such input once per date of
D-N+1 .. D (oldest first); an input without a placeholder (a fixed seed dataset) is read as
it is. The expansion is orchestration: it happens before the run (`pipeline.api.run`), and
ExampleGen reads the concrete per-date paths (its content-keyed unit cache then reuses the
partitions last night's window parsed already).

A date whose partition matches no file (or whose folder does not exist or holds no file) is
missing: an error naming the dates, unless `allow_missing`, which records and warns about them
(a window with no data on any date is an error either way).
"""
from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from components import fileio
from components.errors import UserInputError

PLACEHOLDER = re.compile(r"\{date(?::([^{}]*))?\}")
DATE_FORMAT = "%Y-%m-%d"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_STRFTIME = re.compile(r"%[YmdjyBbU]")  # a directive left outside a placeholder (a likely slip)


@dataclasses.dataclass(frozen=True)
class WindowSettings:
    """The `[window]` table. `date` is per run (`--date`); `days` and `allow_missing` usually
    live in the config."""

    date: Optional[str] = None  # YYYY-MM-DD: the window's last day (`--date`)
    days: int = 1  # the window's length in days, `date` included (`--window-days`)
    allow_missing: bool = False  # dates without data are recorded and warned about, not errors


def parse_date(text: Any, flag: str = "--date") -> datetime.date:
    """A YYYY-MM-DD date, or a UserInputError naming `flag` and the form it takes."""
    if not isinstance(text, str) or not _DATE.fullmatch(text.strip()):
        raise UserInputError(f"{flag} {text!r} is not a date of the form YYYY-MM-DD (e.g. "
                             "2026-12-01)")
    try:
        return datetime.date.fromisoformat(text.strip())
    except ValueError as e:
        raise UserInputError(f"{flag} {text} is not a date: {e}")


def has_placeholder(pattern: str) -> bool:
    return PLACEHOLDER.search(pattern) is not None


def format_pattern(pattern: str, day: datetime.date) -> str:
    """`pattern` with each placeholder replaced by `day`."""
    return PLACEHOLDER.sub(lambda m: day.strftime(m.group(1) or DATE_FORMAT), pattern)


def window_dates(date: datetime.date, days: int) -> List[datetime.date]:
    """The `days` dates that end with `date`, oldest first."""
    return [date - datetime.timedelta(days=n) for n in range(days - 1, -1, -1)]


def date_range(start: str, end: str) -> List[str]:
    """Every date from `start` to `end` (YYYY-MM-DD, both included), oldest first: a backfill's."""
    first, last = parse_date(start, "--from"), parse_date(end, "--to")
    if first > last:
        raise UserInputError(f"--from {start} is after --to {end}: give the earlier date first")
    return [d.isoformat() for d in window_dates(last, (last - first).days + 1)]


def check(inputs: Sequence[str], settings: WindowSettings) -> None:
    """Raises UserInputError when the window cannot be read: a malformed date, a length under
    one day, a date without an input that has a placeholder, or a placeholder without a date."""
    if isinstance(settings.days, bool) or not isinstance(settings.days, int) or \
            settings.days < 1:
        raise UserInputError(f"window.days (--window-days) must be a whole number of days, 1 or "
                             f"more; got {settings.days!r}")
    dated = [p for p in inputs if has_placeholder(p)]
    if settings.date is None:
        if dated:
            raise UserInputError(
                f"input {dated[0]} has a date placeholder but no date was given: pass --date "
                "YYYY-MM-DD (the window's last day) or set window.date")
        return
    parse_date(settings.date)
    if not dated:
        slip = next((p for p in inputs if _STRFTIME.search(p)), None)
        hint = (f" ({slip} has strftime directives outside a placeholder: write them as "
                "{date:FORMAT}, e.g. incoming/{date:year=%Y/month=%m/day=%d}/*.csv)"
                if slip else "")
        raise UserInputError(
            f"--date {settings.date} was given but no input has a date placeholder{hint}: "
            "write the dated part of --input as {date} (YYYY-MM-DD) or {date:FORMAT}, e.g. "
            "--input 'incoming/{date}/*.jsonl', or leave --date out")


@dataclasses.dataclass(frozen=True)
class Window:
    """A run's window, expanded: its dates, which of them have data, and the concrete inputs
    (the fixed inputs as given, each dated one once per date that has data)."""

    date: str
    days: int
    allow_missing: bool
    dates: Tuple[str, ...]  # every date of the window, oldest first
    dates_read: Tuple[str, ...]  # dates with data (in every dated input)
    dates_missing: Tuple[str, ...]  # dates an input has no data for
    missing_inputs: Tuple[str, ...]  # the expanded paths that match no file
    patterns: Tuple[str, ...]  # the inputs as given
    inputs: Tuple[str, ...]  # what ExampleGen reads

    @property
    def first(self) -> str:
        return self.dates[0]

    def record(self) -> Dict[str, Any]:
        """What the run records (summary.json `window`, the store's run properties, a pushed
        version's metadata.json)."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dict(dataclasses.asdict(self), first=self.first).items()}

    def enforce(self, warn: Callable[[str], None]) -> None:
        """Raises UserInputError naming the missing dates, unless they are allowed (then
        `warn`s); raises when no date has data, allowed or not."""
        if not self.dates_missing:
            return
        span = describe(self.record())
        where = "; ".join(f"{p} matches no file" for p in self.missing_inputs)
        if not self.dates_read:
            raise UserInputError(f"no date of the window {span} has data ({where})")
        dates = ", ".join(self.dates_missing)
        if not self.allow_missing:
            raise UserInputError(
                f"the window {span} has no data for {dates} ({where}). Land those partitions "
                "and run again, or set [window] allow_missing = true (--allow-missing-dates) "
                "to train on the dates that have data")
        warn(f"the window {span} has no data for {dates} (allowed by window.allow_missing): "
             f"read {len(self.dates_read)} of {len(self.dates)} dates")


def expand(inputs: Sequence[str], settings: WindowSettings,
           has_data: Optional[Callable[[str], bool]] = None) -> Optional[Window]:
    """The window of `inputs` (None when no date is given: the inputs are read as they are).

    Each dated input becomes one path per date (the same path once, when a coarser FORMAT,
    say a month's, gives several dates the same one); paths with no data are left out and
    reported. `has_data(path)` defaults to `partition_has_data`.
    """
    check(inputs, settings)
    if settings.date is None:
        return None
    has_data = has_data or partition_has_data
    dates = window_dates(parse_date(settings.date), settings.days)
    expanded: List[str] = []
    missing_inputs: List[str] = []
    missing_dates = set()
    known: Dict[str, bool] = {}
    for pattern in inputs:
        if not has_placeholder(pattern):
            if pattern not in expanded:
                expanded.append(pattern)
            continue
        for day in dates:
            path = format_pattern(pattern, day)
            if path not in known:
                known[path] = has_data(path)
                (expanded if known[path] else missing_inputs).append(path)
            if not known[path]:
                missing_dates.add(day)
    names = [d.isoformat() for d in dates]
    return Window(date=names[-1], days=settings.days, allow_missing=settings.allow_missing,
                  dates=tuple(names),
                  dates_read=tuple(d.isoformat() for d in dates if d not in missing_dates),
                  dates_missing=tuple(d.isoformat() for d in dates if d in missing_dates),
                  missing_inputs=tuple(missing_inputs), patterns=tuple(inputs),
                  inputs=tuple(expanded))


def partition_has_data(path: str) -> bool:
    """Whether a file, glob or folder holds at least one file (hidden files aside)."""
    if not fileio.is_local(path):
        return bool(fileio.glob(path)) or bool(fileio.listdir(path))
    for match in glob.glob(fileio.local_path(path)):
        if os.path.isfile(match):
            return True
        for _, subdirs, files in os.walk(match):
            subdirs[:] = [d for d in subdirs if not d.startswith(".")]
            if any(not f.startswith(".") for f in files):
                return True
    return False


def recorded(value: Any) -> Optional[Dict[str, Any]]:
    """A window record as a run property holds it (JSON text) or a summary does (a dict)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return dict(value) if isinstance(value, Mapping) else None


def describe(record: Mapping[str, Any]) -> str:
    """A window in a few words: `2026-11-25..2026-12-01 (7 days)`, or one date."""
    days = record.get("days")
    if days == 1:
        return f"{record.get('date')} (1 day)"
    return f"{record.get('first')}..{record.get('date')} ({days} days)"


def summary_line(record: Mapping[str, Any]) -> str:
    """A window's dates read and missing, as `lineage` and `backfill` show them."""
    missing = list(record.get("dates_missing") or [])
    read = list(record.get("dates_read") or [])
    return (f"window {describe(record)}: read {len(read)} date{'s' if len(read) != 1 else ''}"
            + (f", missing {', '.join(missing)}" if missing else ", none missing"))
