"""Date windows and backfill: the expansion of {date} inputs (unit tests, no TensorFlow), the
backfill's lock and stop rule (in process, runs stubbed), then real subprocess runs."""
import datetime
import glob
import json
import os

import pytest

from components.errors import UserInputError
from pipeline import windows
from pipeline.windows import WindowSettings

from conftest import IN_MEMORY, run_cli
from test_cli import TINY_TRAINER, trec_like


def day(text):
    return datetime.date.fromisoformat(text)


def dates_from(first, n):
    return [(day(first) + datetime.timedelta(days=i)).isoformat() for i in range(n)]


def land(folder, date, rows=12, offset=0, name="part-0.jsonl"):
    """A partition folder FOLDER/DATE/ with one JSONL file of `rows` TREC-like questions."""
    part = os.path.join(str(folder), date)
    os.makedirs(part, exist_ok=True)
    data = trec_like(rows * 40)
    with open(os.path.join(part, name), "w") as f:
        for text, label, split in data[offset:offset + rows]:
            f.write(json.dumps({"text": f"{text} {date}", "label": label, "split": split})
                    + "\n")
    return part


# ------------------------------------------------------------------------ expansion (no TF)

def test_a_7_day_window_over_9_partitions_reads_exactly_the_7_dates_up_to_date(tmp_path):
    nine = dates_from("2026-11-23", 9)  # 2026-11-23 .. 2026-12-01
    for d in nine:
        land(tmp_path, d)
    pattern = str(tmp_path / "{date}" / "*.jsonl")
    window = windows.expand([pattern], WindowSettings(date="2026-12-01", days=7))
    assert window.dates == tuple(nine[2:]) == tuple(dates_from("2026-11-25", 7))
    assert window.first == "2026-11-25" and window.date == "2026-12-01"
    assert window.dates_read == window.dates and window.dates_missing == ()
    assert window.inputs == tuple(str(tmp_path / d / "*.jsonl") for d in nine[2:])
    record = window.record()
    assert record["dates_read"] == nine[2:] and record["patterns"] == [pattern]
    assert windows.describe(record) == "2026-11-25..2026-12-01 (7 days)"
    # The default window is the date alone.
    assert windows.expand([pattern], WindowSettings(date="2026-11-23")).inputs == (
        str(tmp_path / "2026-11-23" / "*.jsonl"),)


def test_a_strftime_pattern_expands_across_a_month_and_a_year_end(tmp_path):
    for d in ("2026-12-30", "2026-12-31", "2027-01-01", "2027-01-02"):
        x = day(d)
        part = tmp_path / f"year={x:%Y}" / f"month={x:%m}" / f"day={x:%d}"
        part.mkdir(parents=True)
        (part / "a.csv").write_text("text,label\nhow far ?,NUM\n")
    pattern = str(tmp_path / "{date:year=%Y/month=%m/day=%d}" / "*.csv")
    window = windows.expand([pattern], WindowSettings(date="2027-01-01", days=3))
    assert window.dates == ("2026-12-30", "2026-12-31", "2027-01-01")
    assert window.inputs == (str(tmp_path / "year=2026/month=12/day=30/*.csv"),
                             str(tmp_path / "year=2026/month=12/day=31/*.csv"),
                             str(tmp_path / "year=2027/month=01/day=01/*.csv"))
    # {date} and {date:FORMAT} in one pattern; a folder partition (no glob) counts its files.
    assert windows.format_pattern("in/{date:%Y}/{date}", day("2026-03-04")) == "in/2026/2026-03-04"
    assert windows.expand([str(tmp_path / "year={date:%Y}")],
                          WindowSettings(date="2027-01-02", days=2)).inputs == (
        str(tmp_path / "year=2027"),)  # one path for the two dates (a coarser format)


def test_a_missing_partition_is_an_error_naming_the_date(tmp_path):
    for d in dates_from("2026-11-25", 7):
        land(tmp_path, d)
    os.remove(tmp_path / "2026-11-27" / "part-0.jsonl")  # the folder is there, empty
    import shutil

    shutil.rmtree(tmp_path / "2026-11-29")  # no folder at all
    pattern = str(tmp_path / "{date}" / "*.jsonl")
    window = windows.expand([pattern], WindowSettings(date="2026-12-01", days=7))
    assert window.dates_missing == ("2026-11-27", "2026-11-29")
    assert len(window.dates_read) == 5 and "2026-11-27" not in "".join(window.inputs)
    warned = []
    with pytest.raises(UserInputError) as e:
        window.enforce(warned.append)
    message = str(e.value)
    assert "no data for 2026-11-27, 2026-11-29" in message
    assert str(tmp_path / "2026-11-27" / "*.jsonl") + " matches no file" in message
    assert "allow_missing" in message and not warned
    # A folder partition without files is missing too.
    folder = windows.expand([str(tmp_path / "{date}")], WindowSettings(date="2026-11-27"))
    assert folder.dates_missing == ("2026-11-27",)


def test_allowed_missing_dates_are_recorded_and_warned(tmp_path):
    for d in ("2026-11-29", "2026-12-01"):
        land(tmp_path, d)
    pattern = str(tmp_path / "{date}" / "*.jsonl")
    window = windows.expand([pattern], WindowSettings(date="2026-12-01", days=3,
                                                      allow_missing=True))
    warned = []
    window.enforce(warned.append)
    assert window.record()["dates_missing"] == ["2026-11-30"]
    assert window.record()["dates_read"] == ["2026-11-29", "2026-12-01"]
    assert window.record()["missing_inputs"] == [str(tmp_path / "2026-11-30" / "*.jsonl")]
    assert len(warned) == 1 and "no data for 2026-11-30" in warned[0]
    assert "read 2 of 3 dates" in warned[0]
    # No data on any date is an error even when missing dates are allowed.
    empty = windows.expand([pattern], WindowSettings(date="2026-11-20", days=2,
                                                     allow_missing=True))
    with pytest.raises(UserInputError, match="no date of the window"):
        empty.enforce(warned.append)


@pytest.mark.parametrize("bad", ["2026-13-01", "2026-02-30", "2026-2-1", "yesterday", "",
                                 "2026-12-01T00:00"])
def test_a_bad_date_is_a_readable_error(bad):
    with pytest.raises(UserInputError, match=r"--date .*(YYYY-MM-DD|is not a date)"):
        windows.check(["in/{date}/*.jsonl"], WindowSettings(date=bad))


def test_date_without_placeholder_and_placeholder_without_date(tmp_path):
    with pytest.raises(UserInputError, match="no input has a date placeholder"):
        windows.check(["data/q.csv"], WindowSettings(date="2026-12-01"))
    # A strftime layout written without the placeholder gets a hint.
    with pytest.raises(UserInputError, match=r"write them as \{date:FORMAT\}"):
        windows.check(["in/year=%Y/month=%m/*.csv"], WindowSettings(date="2026-12-01"))
    with pytest.raises(UserInputError, match="no date was given: pass --date"):
        windows.check(["data/seed.csv", "in/{date}/*.jsonl"], WindowSettings())
    with pytest.raises(UserInputError, match="window.days"):
        windows.check(["in/{date}/*.jsonl"], WindowSettings(date="2026-12-01", days=0))
    # Neither: no window, the inputs are read as they are.
    assert windows.expand(["data/q.csv"], WindowSettings(days=7)) is None


def test_a_fixed_input_beside_a_pattern_is_read_as_is(tmp_path):
    seed = tmp_path / "seed.csv"
    seed.write_text("text,label\nhow far ?,NUM\n")
    for d in ("2026-11-30", "2026-12-01"):
        land(tmp_path / "in", d)
    pattern = str(tmp_path / "in" / "{date}" / "*.jsonl")
    window = windows.expand([str(seed), pattern], WindowSettings(date="2026-12-01", days=2))
    assert window.inputs == (str(seed), str(tmp_path / "in/2026-11-30/*.jsonl"),
                             str(tmp_path / "in/2026-12-01/*.jsonl"))


def test_partitions_on_object_storage(gcs_bucket):
    import tensorflow as tf

    for d in ("2026-11-29", "2026-12-01"):
        with tf.io.gfile.GFile(gcs_bucket.url("win", "in", d, "a.jsonl"), "w") as f:
            f.write('{"text": "how far ?", "label": "NUM"}\n')
    for pattern in (gcs_bucket.url("win", "in", "{date}", "*.jsonl"),
                    gcs_bucket.url("win", "in", "{date}")):
        window = windows.expand([pattern], WindowSettings(date="2026-12-01", days=3))
        assert window.dates_missing == ("2026-11-30",), pattern
        assert window.inputs == tuple(windows.format_pattern(pattern, day(d))
                                      for d in ("2026-11-29", "2026-12-01"))


def test_backfill_dates_and_the_window_table():
    assert windows.date_range("2026-11-30", "2026-12-02") == [
        "2026-11-30", "2026-12-01", "2026-12-02"]
    assert windows.date_range("2026-11-30", "2026-11-30") == ["2026-11-30"]
    with pytest.raises(UserInputError, match="--from 2026-12-02 is after --to 2026-11-30"):
        windows.date_range("2026-12-02", "2026-11-30")
    with pytest.raises(UserInputError, match="--to"):
        windows.date_range("2026-11-30", "2026-11-31")
    from pipeline import configs

    config = configs.load_config(None, {"window": {"days": 7, "allow_missing": True}})
    assert config.window == WindowSettings(days=7, allow_missing=True)
    with pytest.raises(UserInputError, match="unknown config key 'window.day'"):
        configs.load_config(None, {"window": {"day": 7}})
    with pytest.raises(UserInputError, match="'window.days' must be int"):
        configs.load_config(None, {"window": {"days": "7"}})


# ------------------------------------------------------- backfill: lock and stop (in process)

def test_backfill_holds_one_lock_throughout_and_stops_at_the_first_failure(tmp_path,
                                                                          monkeypatch):
    from pipeline import api
    from pipeline.lock import LOCK_FILE, RootLockedError, refuse_if_held

    root = str(tmp_path / "root")
    codes = {"2026-11-01": 0, "2026-11-02": 4, "2026-11-03": 3, "2026-11-04": 0}
    seen = []

    def fake_run(config, beam_args, run_id, metadata_dir, use_cache, launcher, ended):
        # Another process (or another open of the lock file) is refused while a run is on...
        with pytest.raises(RootLockedError):
            refuse_if_held(metadata_dir)
        with open(os.path.join(metadata_dir, LOCK_FILE)) as f:
            holder = json.load(f)
        seen.append((config.window.date, holder["run_id"], holder["started"], run_id))
        code = codes[config.window.date]
        ended.append(api.RunResult(run_id=run_id, status=api._STATUS.get(code, "failed"),
                                   exit_code=code, stages=(), summary_path="",
                                   report_path=None,
                                   summary={"window": {"date": config.window.date}}))
        return ended[-1]

    alerted = []
    monkeypatch.setattr(api, "_run_locked", fake_run)
    # Each night alerts as a run of its own would (config.alerts decides whether it is sent).
    monkeypatch.setattr(api, "_alert", lambda config, result, run_id, error=None:
                        alerted.append((config.window.date, result.exit_code)))
    printed = []
    config = api.load_config(None, {"inputs": (str(tmp_path / "{date}" / "*.jsonl"),),
                                    "pipeline_root": root})
    results = api.backfill(config, "2026-11-01", "2026-11-04",
                           on_run=lambda date, r: printed.append((date, r.exit_code)))
    # ... and between the runs: one holder, written once, for the whole backfill.
    assert [s[0] for s in seen] == ["2026-11-01", "2026-11-02", "2026-11-03"]
    assert {s[1:3] for s in seen} == {(seen[0][1], seen[0][2])}
    assert seen[0][1] == "backfill 2026-11-01..2026-11-04"
    assert len({s[3] for s in seen}) == 3  # each run its own id
    assert printed == [("2026-11-01", 0), ("2026-11-02", 4), ("2026-11-03", 3)]
    assert alerted == printed
    assert [r.exit_code for r in results] == [0, 4, 3]
    refuse_if_held(root)  # released at the end
    line, code = api.backfill_outcome("2026-11-01", "2026-11-04", results)
    assert code == 3 and "stopped at 2026-11-03 (exit 3" in line
    assert "1 not blessed" in line and "not run: 2026-11-04" in line

    codes["2026-11-03"] = 4  # a not-blessed night is not a failure: it goes on to the end
    seen.clear()
    results = api.backfill(config, "2026-11-01", "2026-11-04")
    assert [s[0] for s in seen] == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    line, code = api.backfill_outcome("2026-11-01", "2026-11-04", results)
    assert code == 0 and line == ("backfill 2026-11-01..2026-11-04: 4 of 4 runs done; "
                                  "2 not blessed (not pushed)")


# ------------------------------------------------------------------ end to end (subprocesses)

def _summaries(root):
    out = []
    for path in glob.glob(os.path.join(root, "runs", "*", "summary.json")):
        with open(path) as f:
            out.append(json.load(f))
    return sorted(out, key=lambda s: s["started"])


def test_a_windowed_run_records_its_window_and_the_next_night_parses_only_the_new_date(
        tmp_path):
    incoming = tmp_path / "incoming"
    nine = dates_from("2026-11-23", 9)
    for i, d in enumerate(nine):
        land(incoming, d, rows=12, offset=12 * i)
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TRAINER + "\n[window]\ndays = 7\n")
    root, serving = str(tmp_path / "root"), str(tmp_path / "serving")
    pattern = str(incoming / "{date}" / "*.jsonl")
    args = ["--input", pattern, "--pipeline-root", root, "--config", str(config), *IN_MEMORY]
    proc = run_cli("run", *args, "--date", "2026-11-30", "--serving-dir", serving)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "window 2026-11-24..2026-11-30 (7 days): read 7 dates, none missing" in proc.stderr
    assert "rows read 84 = written 84" in proc.stdout  # 7 dates of 12 rows
    assert "input files parsed 7, reused 0" in proc.stdout
    [first] = _summaries(root)
    window = first["window"]
    assert window["date"] == "2026-11-30" and window["days"] == 7
    assert window["dates_read"] == nine[1:8] and window["dates_missing"] == []
    assert window["inputs"] == [str(incoming / d / "*.jsonl") for d in nine[1:8]]
    assert first["config"]["inputs"] == window["inputs"]  # what ExampleGen read
    assert first["config"]["window"]["date"] == "2026-11-30"

    from pipeline import metadata as meta

    with open(os.path.join(root, "runs", first["run_id"], "report.html")) as f:
        assert "window 2026-11-24..2026-11-30 (7 days): read 7 dates, none missing" in f.read()
    props = meta.open_existing(root).run_properties(first["run_id"])
    assert json.loads(props["window"]) == window
    pushed = first["stages"][-1]["details"]["path"]
    with open(os.path.join(pushed, "metadata.json")) as f:
        assert json.load(f)["window"] == window
    with open(os.path.join(pushed, "RELEASE_NOTE.md")) as f:
        assert "- date window 2026-11-24..2026-11-30 (7 days): read 7 dates, none missing" in \
            f.read()
    lineage = run_cli("lineage", pushed)
    assert lineage.returncode == 0, lineage.stderr[-2000:]
    assert "  window 2026-11-24..2026-11-30 (7 days): read 7 dates, none missing" in \
        lineage.stdout

    # The next night: 6 of its 7 partitions were parsed last night and are reused.
    proc = run_cli("run", *args, "--date", "2026-12-01", "--until", "ExampleGen")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "input files parsed 1, reused 6" in proc.stdout
    second = _summaries(root)[-1]
    assert second["window"]["dates_read"] == nine[2:]
    runs = run_cli("runs", root)
    lines = runs.stdout.splitlines()[1:]
    assert lines[0].endswith("[window 2026-11-24..2026-11-30 (7 days)]"), runs.stdout
    assert lines[1].endswith("[window 2026-11-25..2026-12-01 (7 days)]"), runs.stdout


def test_backfill_runs_each_date_in_order_and_stops_at_a_missing_partition(tmp_path):
    incoming = tmp_path / "incoming"
    for i, d in enumerate(dates_from("2026-10-30", 5)):  # 2026-10-30 .. 2026-11-03
        land(incoming, d, rows=12, offset=12 * i)
    root = str(tmp_path / "root")
    args = ["--input", str(incoming / "{date}" / "*.jsonl"), "--pipeline-root", root,
            "--window-days", "2", "--until", "ExampleGen", *IN_MEMORY]
    proc = run_cli("backfill", "--from", "2026-11-01", "--to", "2026-11-03", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.splitlines()
    assert [line.split()[0] for line in out] == ["2026-11-01", "2026-11-02", "2026-11-03",
                                                 "backfill"]
    assert out[-1] == "backfill 2026-11-01..2026-11-03: 3 of 3 runs done"
    runs = run_cli("runs", root).stdout.splitlines()[1:]
    assert [line.rsplit("[window ", 1)[1] for line in runs] == [
        "2026-10-31..2026-11-01 (2 days)]", "2026-11-01..2026-11-02 (2 days)]",
        "2026-11-02..2026-11-03 (2 days)]"]
    assert [s["window"]["date"] for s in _summaries(root)] == [
        "2026-11-01", "2026-11-02", "2026-11-03"]

    # A partition of the second date's window is missing: it stops there, exit 2.
    import shutil

    shutil.rmtree(incoming / "2026-11-02")
    root2 = str(tmp_path / "root2")
    args[args.index(root)] = root2
    proc = run_cli("backfill", "--from", "2026-11-01", "--to", "2026-11-03", *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "no data for 2026-11-02" in proc.stderr
    assert proc.stdout.splitlines()[-1] == (
        "backfill 2026-11-01..2026-11-03: stopped at 2026-11-02 (exit 2, failed) after 2 of "
        "3 runs; not run: 2026-11-03")
    summaries = _summaries(root2)
    assert [s["window"]["date"] for s in summaries] == ["2026-11-01", "2026-11-02"]
    assert summaries[1]["exit_code"] == 2 and summaries[1]["window"]["dates_missing"] == [
        "2026-11-02"]


def test_the_cli_refuses_bad_windows_with_exit_2(tmp_path):
    pattern = str(tmp_path / "{date}" / "*.jsonl")
    root = str(tmp_path / "root")
    proc = run_cli("run", "--input", pattern, "--pipeline-root", root)
    assert proc.returncode == 2 and "pass --date" in proc.stderr, proc.stderr[-2000:]
    proc = run_cli("backfill", "--from", "2026-11-03", "--to", "2026-11-01", "--input",
                   pattern, "--pipeline-root", root)
    assert proc.returncode == 2 and "is after --to" in proc.stderr, proc.stderr[-2000:]
    assert not os.path.exists(os.path.join(root, "runs"))


def test_a_run_made_stage_by_stage_goes_on_when_a_late_partition_lands(tmp_path):
    """A DAG run's parts are compared by their input patterns, not by the dates' paths: a
    partition that lands between two tasks (allowed missing at the first) does not make the
    next task refuse the run."""
    incoming = tmp_path / "incoming"
    land(incoming, "2026-11-30", rows=40)
    args = ["run", "--input", str(incoming / "{date}" / "*.jsonl"), "--pipeline-root",
            str(tmp_path / "root"), "--date", "2026-12-01", "--window-days", "2",
            "--allow-missing-dates", "--run-id", "dag-run-1", *IN_MEMORY]
    first = run_cli(*args, "--until", "ExampleGen")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "no data for 2026-12-01" in first.stderr
    land(incoming, "2026-12-01", rows=40, offset=40)  # late
    second = run_cli(*args, "--until", "StatisticsGen")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "ExampleGen: completed earlier in this run (kept)" in second.stderr
    assert "StatisticsGen: ok" in second.stderr
