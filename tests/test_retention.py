"""Retention (`gc`): what a root keeps of its history, decided by lineage in ML Metadata.

The first tests build a store with pipeline/metadata.py (runs that execute, reuse and fail)
and check what gc keeps, removes and marks; the last one runs a nightly history of real
subprocess runs of local_runner.py (in-memory Beam, a tiny model) with `[retention]
after_run` and checks that the root stays bounded.
"""
import glob
import json
import os
import subprocess
import sys

import pytest

from components import fileio, pusher
from components.errors import UserInputError
from conftest import IN_MEMORY, REPO, run_cli
from pipeline import configs, garbage_collection
from pipeline import metadata as meta
from pipeline.orchestrator import outputs_live
from pipeline.garbage_collection import ARTIFACTS, RUN_DIRS, UNITS, VERSIONS
from pipeline.retention import RetentionSettings
from pipeline.stages import unit_dir
from test_cli import TINY_TRAINER, trec_like

CODE = "code-v1"
SETTINGS = {"text_key": "text"}


# ------------------------------------------------------------------------ a store built by hand


class History:
    """A root and its store, with runs recorded the way the orchestrator records them: each
    executed stage writes `<root>/<Stage>/<run>/` (published), a reused one records a CACHED
    execution pointing at the older outputs."""

    def __init__(self, tmp):
        self.root = str(tmp / "root")
        self.serving = str(tmp / "serving")
        self.base = os.path.join(self.serving, "textcnn")
        os.makedirs(self.root)
        self.store = meta.MetadataStore(self.root)
        self.outputs = {}  # (run, stage) -> {name: [Artifact]}
        self.executions = {}  # (run, stage) -> execution id

    def start(self, run_id, started=None):
        self.run_id = run_id
        self.started = started
        self.store.start_run(configs.PIPELINE_NAME, run_id, {})
        os.makedirs(os.path.join(self.root, "runs", run_id))
        with open(os.path.join(self.root, "runs", run_id, "summary.json"), "w") as f:
            f.write("{}")

    def finish(self, status="succeeded"):
        self.store.finish_run(self.run_id, status, 0 if status == "succeeded" else 1)
        # (after the executions: recording one puts the run's context as it was at its start)
        self.store.set_run_properties(self.run_id, {"started": self.started})

    def execute(self, stage, inputs, type_name, name, fail=False, params=None,
                code="stage-code"):
        out = os.path.join(self.root, stage, self.run_id)
        key = f"{stage}-{json.dumps({k: [a.fingerprint for a in v] for k, v in inputs.items()})}"
        properties = {"cache_key": key, "output_dir": out, "code_version": code,
                      "params": params or {}}
        execution = self.store.start_execution(stage, properties, inputs)
        if fail:
            self.store.fail_execution(execution, stage, "boom")
            return None
        os.makedirs(out)
        with open(os.path.join(out, "data.bin"), "wb") as f:
            f.write(b"x" * 1000)
        open(os.path.join(out, fileio.MARKER), "w").close()
        uri = out
        if type_name == meta.PUSHED_MODEL:
            version = 100 + len(pusher.versions(self.base)) if os.path.isdir(self.base) else 100
            uri = os.path.join(self.base, str(version))
            os.makedirs(uri)
            open(os.path.join(uri, pusher.SAVED_MODEL_PB), "w").close()
            pusher.serve(self.base, version, "pushed", by=self.run_id)
        outputs = {name: [meta.Artifact(type_name, uri, f"{stage}:{self.run_id}")]}
        self.store.complete_execution(execution, stage, {}, outputs)
        self.outputs[(self.run_id, stage)] = outputs
        return outputs

    def reuse(self, stage, source_run, inputs):
        [source] = [e for e in self.store.run_executions(source_run) if e.stage == stage]
        # As the orchestrator records it: this run's key, parameters and code, which are the
        # source's (that is why it was reused), and this run's fresh directory.
        properties = {k: source.properties.get(k) for k in ("cache_key", "code_version")}
        properties["params"] = json.loads(source.properties["params"])
        properties["output_dir"] = os.path.join(self.root, stage, self.run_id)
        self.store.cached_execution(stage, properties, inputs, source)
        return source.outputs

    def example_gen(self, files, reuse_from=None):
        """ExampleGen over input units `files` ({name: fingerprint}); parses the units (their
        directories keyed as `stages.unit_dir` keys them) when it executes."""
        inputs = {"files": [self.known(meta.Artifact(meta.EXTERNAL, n, fp))
                            for n, fp in files.items()]}
        params = {"settings": SETTINGS}
        if reuse_from:
            return self.reuse(configs.EXAMPLE_GEN, reuse_from, inputs)
        for unit in inputs["files"]:
            directory = unit_dir(self.root, CODE, SETTINGS, unit)
            if not os.path.isdir(directory):
                os.makedirs(directory)
                with open(os.path.join(directory, "counts.json"), "w") as f:
                    f.write("{}")
        return self.execute(configs.EXAMPLE_GEN, inputs, meta.EXAMPLES, "examples",
                            params=params, code=CODE)

    def known(self, artifact):
        stored = self.store.artifact_by_uri(artifact.uri, artifact.type_name)
        return stored if stored and stored.fingerprint == artifact.fingerprint else artifact

    def path(self, stage, run):
        return os.path.join(self.root, stage, run)

    def unit(self, name, fingerprint):
        return os.path.basename(unit_dir(self.root, CODE, SETTINGS,
                                         meta.Artifact(meta.EXTERNAL, name, fingerprint)))


def execute_all(h, files, previous_statistics=None):
    """A run that executes every stage on input units `files`."""
    s = configs
    ex = h.example_gen(files)
    st = h.execute(s.STATISTICS_GEN, ex, meta.STATISTICS, "statistics")
    h.execute(s.EXAMPLE_VALIDATOR, dict(
        {"statistics": st["statistics"]},
        **({"previous_statistics": previous_statistics} if previous_statistics else {})),
        meta.ANOMALIES, "anomalies")
    tr = h.execute(s.TRANSFORM, {"examples": ex["examples"]}, meta.TRANSFORM_GRAPH,
                   "transform_graph")
    mo = h.execute(s.TRAINER, {"transform_graph": tr["transform_graph"]}, meta.MODEL, "model")
    h.execute(s.PUSHER, {"model": mo["model"]}, meta.PUSHED_MODEL, "pushed_model")


def build_history(tmp):
    """Five runs:
    r1 executes everything on file a (version 100 pushed);
    r2 reuses r1's data stages and Transform, trains again (version 101);
    r3 gets file b too: executes everything, its validator compares with r1's statistics
       (version 102, served);
    r4 changes file b: its Trainer fails;
    r5 runs on r3's data again: reuses all of r3.
    """
    h = History(tmp)
    s = configs
    h.start("r1", "2020-01-01T00:00:00+00:00")
    execute_all(h, {"a.csv": "a1"})
    h.finish()

    h.start("r2", "2020-01-02T00:00:00+00:00")
    ex = h.example_gen({"a.csv": "a1"}, reuse_from="r1")
    st = h.reuse(s.STATISTICS_GEN, "r1", {"examples": ex["examples"]})
    h.reuse(s.EXAMPLE_VALIDATOR, "r1", {"statistics": st["statistics"]})
    tr = h.reuse(s.TRANSFORM, "r1", {"examples": ex["examples"]})
    mo = h.execute(s.TRAINER, {"transform_graph": tr["transform_graph"]}, meta.MODEL, "model")
    h.execute(s.PUSHER, {"model": mo["model"]}, meta.PUSHED_MODEL, "pushed_model")
    h.finish()

    h.start("r3", "2020-01-03T00:00:00+00:00")
    execute_all(h, {"a.csv": "a1", "b.csv": "b1"},
                previous_statistics=h.outputs[("r1", s.STATISTICS_GEN)]["statistics"])
    h.finish()

    h.start("r4", "2020-01-04T00:00:00+00:00")
    ex = h.example_gen({"a.csv": "a1", "b.csv": "b2"})
    st = h.execute(s.STATISTICS_GEN, ex, meta.STATISTICS, "statistics")
    tr = h.execute(s.TRANSFORM, {"examples": ex["examples"]}, meta.TRANSFORM_GRAPH,
                   "transform_graph")
    h.execute(s.TRAINER, {"transform_graph": tr["transform_graph"]}, meta.MODEL, "model",
              fail=True)
    h.finish("failed")

    h.start("r5", "2020-01-05T00:00:00+00:00")
    ex = h.example_gen({"a.csv": "a1", "b.csv": "b1"}, reuse_from="r3")
    st = h.reuse(s.STATISTICS_GEN, "r3", {"examples": ex["examples"]})
    h.reuse(s.EXAMPLE_VALIDATOR, "r3", {
        "statistics": st["statistics"],
        "previous_statistics": h.outputs[("r1", s.STATISTICS_GEN)]["statistics"]})
    tr = h.reuse(s.TRANSFORM, "r3", {"examples": ex["examples"]})
    mo = h.reuse(s.TRAINER, "r3", {"transform_graph": tr["transform_graph"]})
    h.reuse(s.PUSHER, "r3", {"model": mo["model"]})
    h.finish()
    return h


def collect(h, dry_run=True, keep_versions=0, **settings):
    return garbage_collection.collect(h.store, h.root, RetentionSettings(**settings), h.root,
                             keep_versions=keep_versions, dry_run=dry_run)


def artifact_runs(result):
    """{(stage, run)} of the artifact directories a gc removes."""
    return {tuple(p.split(os.sep)[-2:]) for p in result.deleted[ARTIFACTS]}


def test_the_newest_run_keeps_what_it_reused_and_read_from_older_runs(tmp_path):
    h = build_history(tmp_path)
    result = collect(h, keep_runs=1, keep_pushed_lineage=False)
    assert result.kept_runs == {"r5": "the newest run"}
    s = configs
    # r5 reused all of r3, and r3's validator compared with r1's statistics.
    assert artifact_runs(result) == {
        (s.EXAMPLE_GEN, "r1"), (s.EXAMPLE_VALIDATOR, "r1"), (s.TRANSFORM, "r1"),
        (s.TRAINER, "r1"), (s.PUSHER, "r1"), (s.TRAINER, "r2"), (s.PUSHER, "r2"),
        (s.EXAMPLE_GEN, "r4"), (s.STATISTICS_GEN, "r4"), (s.TRANSFORM, "r4")}
    assert sorted(os.path.basename(p) for p in result.deleted[RUN_DIRS]) == [
        "r1", "r2", "r3", "r4"]
    # The units of r3's (and r5's) inputs stay; r4's changed b.csv goes.
    assert [os.path.basename(p) for p in result.deleted[UNITS]] == [h.unit("b.csv", "b2")]
    assert result.deleted[VERSIONS] == ()  # keep_versions unset: the Pusher's business
    assert result.removed_runs == ("r1", "r2", "r3", "r4")
    # Every removed directory counted: 1000-byte data files, summaries, unit counts.
    assert result.bytes_freed == 10 * 1000 + 4 * 2 + 2
    assert all(os.path.exists(p) for k in result.deleted for p in result.deleted[k])  # dry


def test_kept_runs_by_count_age_and_pushed_versions(tmp_path):
    h = build_history(tmp_path)
    # Versions 100 (r1), 101 (r2), 102 (r3) are all in the serving directory.
    result = collect(h, keep_runs=1)
    assert list(result.kept_runs) == ["r5", "r3", "r2", "r1"]
    assert result.kept_runs["r1"].startswith("pushed " + os.path.join(h.base, "100"))
    assert artifact_runs(result) == {(s, "r4") for s in (
        configs.EXAMPLE_GEN, configs.STATISTICS_GEN, configs.TRANSFORM)}
    assert collect(h).kept_runs.keys() == {"r1", "r2", "r3", "r4", "r5"}  # no limit set

    # Either rule keeps a run: the newest 2 (r5, r4), or those started since Jan 3rd (r3).
    import datetime

    now = datetime.datetime(2020, 1, 5, 12, tzinfo=datetime.timezone.utc)
    result = garbage_collection.collect(h.store, h.root, RetentionSettings(
        keep_runs=2, keep_days=3, keep_pushed_lineage=False), h.root, dry_run=True, now=now)
    assert set(result.kept_runs) == {"r5", "r4", "r3"}
    assert result.kept_runs["r3"] == "started within 3 days"

    # keep_versions = 1: 102 is served, 101 is what rollback would serve; 100 goes, and
    # with it the reason to keep r1.
    assert pusher.served_version(h.base) == 102 and pusher.rollback_target(h.base) == 101
    result = collect(h, keep_runs=1, keep_versions=1)
    assert result.deleted[VERSIONS] == (os.path.join(h.base, "100"),)
    assert "r1" not in result.kept_runs and "r2" in result.kept_runs

    # Version 100 promoted again: served, and rollback would serve 102; 101 goes.
    pusher.serve(h.base, 100, "promoted")
    assert pusher.rollback_target(h.base) == 102
    result = collect(h, keep_runs=1, keep_versions=1)
    assert result.deleted[VERSIONS] == (os.path.join(h.base, "101"),)
    assert "r1" in result.kept_runs and "r2" not in result.kept_runs


def test_gc_removes_marks_and_the_cache_never_reuses_what_went(tmp_path):
    h = build_history(tmp_path)
    dry = collect(h, keep_runs=1, keep_versions=1)
    result = collect(h, dry_run=False, keep_runs=1, keep_versions=1)
    assert result.deleted == dry.deleted and result.bytes_freed == dry.bytes_freed
    assert result.marked_deleted == dry.marked_deleted > 0
    assert not any(os.path.exists(p) for k in result.deleted for p in result.deleted[k])
    assert pusher.versions(h.base) == [101, 102] and pusher.served_version(h.base) == 102

    store = meta.MetadataStore(h.root)
    states = {a.uri: a.state for a in store.all_artifacts()}
    # Kept: r5 (newest), r3 (served 102), r2 (101, what rollback serves), which reused r1's
    # Transform; r1's Trainer and version 100 went.
    assert states[h.path(configs.TRAINER, "r1")] == "DELETED"
    assert states[os.path.join(h.base, "100")] == "DELETED"
    assert states[h.path(configs.TRANSFORM, "r1")] == "LIVE"
    assert states[h.path(configs.STATISTICS_GEN, "r1")] == "LIVE"  # r3's drift reference
    assert states["a.csv"] == "LIVE"  # input files are never touched
    assert garbage_collection.removed_at(store, "r1")
    assert not garbage_collection.removed_at(store, "r5")
    # The records stay: `runs` lists every run, a removed one marked so.
    from pipeline.lineage import format_runs, list_runs

    lines = format_runs(list_runs(h.root), h.root).splitlines()
    assert len(lines) == 6 and "[artifacts removed by gc]" in lines[1]
    assert "removed by gc" not in lines[5]
    # The cache: r1's push (its directory and version 100) is removed; of the two trainings on
    # the same input, r2's is there.
    [r1] = [e for e in store.run_executions("r1") if e.stage == configs.PUSHER]
    assert store.find_cached(configs.PUSHER, r1.properties["cache_key"], outputs_live) is None
    [r2] = [e for e in store.run_executions("r2") if e.stage == configs.TRAINER]
    assert store.find_cached(configs.TRAINER, r2.properties["cache_key"],
                             outputs_live).id == r2.id

    # A second gc has nothing left to remove.
    again = collect(h, dry_run=False, keep_runs=1, keep_versions=1)
    assert not any(again.deleted.values()) and again.removed_runs == ()


def test_an_output_marked_removed_is_not_reused_even_if_its_files_remain(tmp_path):
    """A gc cut short (killed between marking and deleting) leaves a directory that looks whole:
    the store's mark decides."""
    h = build_history(tmp_path)
    [r3] = [e for e in h.store.run_executions("r3") if e.stage == configs.TRANSFORM]
    assert outputs_live(r3)
    [artifact] = r3.outputs["transform_graph"]
    for state in meta.REMOVED_STATES:
        h.store.set_artifact_state([artifact.id], state)
        [r3] = [e for e in h.store.run_executions("r3") if e.stage == configs.TRANSFORM]
        assert os.path.exists(os.path.join(artifact.uri, fileio.MARKER))
        assert not outputs_live(r3), state


def test_a_running_run_keeps_everything_it_needs_and_dead_runs_are_marked(tmp_path):
    h = build_history(tmp_path)
    h.start("r6")  # in progress: reuses r4's ExampleGen
    ex = h.reuse(configs.EXAMPLE_GEN, "r4", {"files": []})
    assert ex
    result = garbage_collection.collect(h.store, h.root, RetentionSettings(
        keep_runs=1, keep_pushed_lineage=False), h.root, dry_run=True, current_run="r6")
    assert result.kept_runs == {"r6": "this run"}
    assert (configs.EXAMPLE_GEN, "r4") not in artifact_runs(result)
    assert (configs.STATISTICS_GEN, "r4") in artifact_runs(result)
    # Without a run in progress (the lock held by gc), "running" means it died.
    garbage_collection.collect(h.store, h.root, RetentionSettings(keep_runs=1), h.root)
    assert h.store.run_properties("r6")["status"] == "died"


def test_retention_settings_are_checked_by_name():
    for bad, message in (({"keep_runs": -1}, "retention.keep_runs must be"),
                         ({"keep_days": "7"}, "'retention.keep_days' must be int"),
                         ({"keep_runs": True}, "'retention.keep_runs' must be int"),
                         ({"after": True}, "unknown config key 'retention.after'")):
        with pytest.raises(UserInputError, match=message):
            configs.load_config(None, {"retention": bad})
    config = configs.load_config(None, {"retention": {"keep_runs": 3, "after_run": True}})
    assert config.retention == RetentionSettings(keep_runs=3, after_run=True)
    assert RetentionSettings().keep_pushed_lineage and not RetentionSettings().limited


# ------------------------------------------------------------------ a nightly history, end to end

NIGHTS = 7
NIGHTLY = TINY_TRAINER.replace("epochs = 2", "epochs = 1") + """max_accuracy_drop = 1.0

[retention]
keep_runs = 3
after_run = true

[pusher]
keep_versions = 2
"""


def write_night(folder, night, rows=30):
    """The file that arrives on `night`: `rows` questions not seen before."""
    with open(folder / f"night{night:02d}.jsonl", "w") as f:
        for text, label, _ in trec_like(rows * (night + 1))[rows * night:]:
            f.write(json.dumps({"text": text, "label": label}) + "\n")


def artifact_bytes(root):
    """The bytes of the root's files (a hard-linked file once), less the store, which gc keeps."""
    seen = {}
    for parent, _, files in os.walk(root):
        for name in files:
            if parent == root and name in (meta.STORE_FILE, ".lock"):
                continue
            st = os.lstat(os.path.join(parent, name))
            seen[(st.st_dev, st.st_ino)] = st.st_size
    return sum(seen.values())


def newest_summary(root):
    [path] = sorted(glob.glob(os.path.join(root, "runs", "*", "summary.json")))[-1:]
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def nightly(tmp_path_factory):
    """A root after NIGHTS nightly runs on a folder that gains a file each night, with
    `[retention] keep_runs = 3, after_run = true` and `[pusher] keep_versions = 2`; yields a
    namespace with what each night left."""
    tmp = tmp_path_factory.mktemp("nightly")
    n = type("Nightly", (), {"args": _args})()
    n.folder = tmp / "incoming"
    n.folder.mkdir()
    n.config = tmp / "nightly.toml"
    n.config.write_text(NIGHTLY)
    n.root, n.serving = str(tmp / "root"), str(tmp / "serving")
    n.base = os.path.join(n.serving, "textcnn")
    n.nights = []
    for night in range(1, NIGHTS + 1):
        write_night(n.folder, night)
        proc = run_cli(*n.args())
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = newest_summary(n.root)
        assert pusher.served_version(n.base) in pusher.versions(n.base)  # never removed
        n.nights.append({"bytes": artifact_bytes(n.root), "summary": summary,
                         "store": os.path.getsize(os.path.join(n.root, meta.STORE_FILE)),
                         "served": pusher.served_version(n.base),
                         "versions": pusher.versions(n.base)})
    yield n


def _args(self, *extra):
    return ["run", "--input", str(self.folder), "--pipeline-root", self.root, "--serving-dir",
            self.serving, "--config", str(self.config), *IN_MEMORY, *extra]


def test_a_nightly_history_stays_bounded(nightly):
    n = nightly
    sizes = [night["bytes"] for night in n.nights]
    print(f"artifact bytes after each night: {sizes}; store bytes: "
          f"{[night['store'] for night in n.nights]}")
    # Each night adds about 0.75 MB of artifacts (a model, a Transform graph, statistics...):
    # with gc switched off, night 7 held 5.2 MB, 1.79 times night 4's 2.9 MB. With it, three
    # runs' artifacts, and the data grows a little each night (measured: 1.04 times).
    assert sizes[-1] <= 1.2 * sizes[3], sizes
    retained = [night["summary"].get("retention") for night in n.nights]
    assert all(retained), "after_run: each run records the gc at its end"
    assert [len(r["removed_runs"]) for r in retained] == [0, 0, 0] + [1] * (NIGHTS - 3)
    assert all(r["bytes_freed"] > 0 for r in retained[3:])
    run_ids = [night["summary"]["run_id"] for night in n.nights]
    assert retained[-1]["kept_runs"] == sorted(run_ids[-3:])
    for stage in configs.STAGES:
        if stage == configs.TUNER:
            continue
        left = set(os.listdir(os.path.join(n.root, stage))) - {".units"}
        # The statistics the next run compares with for drift stay too (night 6's data).
        assert left <= set(run_ids[-4:]) and left >= set(run_ids[-3:]), (stage, left)
    assert sorted(os.listdir(os.path.join(n.root, "runs"))) == sorted(run_ids[-3:])
    # The pushed versions follow keep_versions, and the served one (the newest) is there.
    assert all(len(night["versions"]) <= 2 for night in n.nights)
    assert n.nights[-1]["served"] == n.nights[-1]["versions"][-1]

    runs = run_cli("runs", n.root)
    assert runs.returncode == 0, runs.stderr
    lines = runs.stdout.strip().splitlines()[1:]
    assert len(lines) == NIGHTS  # the store keeps every run's record
    assert [("[artifacts removed by gc]" in line) for line in lines] == (
        [True] * (NIGHTS - 3) + [False] * 3)


def test_kept_versions_keep_their_lineage_and_the_store_marks_what_went(nightly):
    n = nightly
    from pipeline import api

    for version in pusher.versions(n.base):
        night = next(i for i, x in enumerate(n.nights, 1)
                     if x["summary"]["stages"][-1]["details"].get("version") == version)
        text = api.lineage(os.path.join(n.base, str(version))).text()
        files = [line for line in text.splitlines() if line.startswith(f"  {n.folder}/night")]
        assert len(files) == night, text  # every file that had arrived by its night
        assert "removed by gc" not in text
    proc = run_cli("lineage", os.path.join(n.base, str(n.nights[-1]["served"])))
    assert proc.returncode == 0 and "served now: yes" in proc.stdout, proc.stderr[-2000:]

    store = meta.MetadataStore(n.root)
    removed = [night["summary"]["run_id"] for night in n.nights[:NIGHTS - 3]]
    for run_id in removed:
        states = {e.stage: {a.state for items in e.outputs.values() for a in items}
                  for e in store.run_executions(run_id) if e.state == "COMPLETE"}
        # The oldest kept run's ExampleValidator compared with the night before's statistics.
        if run_id == removed[-1]:
            assert states.pop(configs.STATISTICS_GEN) == {"LIVE"}
        # (the version it pushed too: the Pusher's keep_versions removed it, gc marked it)
        assert all(v == {"DELETED"} for v in states.values()), (run_id, states)
    kept = n.nights[-1]["summary"]["run_id"]
    assert {a.state for e in store.run_executions(kept) for items in e.outputs.values()
            for a in items} == {"LIVE"}
    # The parsed units the newest run read are exactly those left, by the keys it recorded.
    [example_gen] = [e for e in store.run_executions(kept) if e.stage == configs.EXAMPLE_GEN]
    units = set(os.listdir(os.path.join(n.root, configs.EXAMPLE_GEN, ".units")))
    assert garbage_collection.needed_units(n.root, [example_gen]) == units
    assert len(units) == NIGHTS
    report = run_cli("report", n.root, "--run", removed[0])
    assert report.returncode == 2 and "removed by gc (retention)" in report.stderr, report.stderr


def test_gc_by_hand_lists_then_removes_and_a_run_on_old_data_executes_again(nightly, tmp_path):
    n = nightly
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, {repo!r}); from pipeline.lock import RootLock\n"
        "with RootLock({root!r}, 'holder-run'):\n"
        "    print('held', flush=True); time.sleep(120)\n").format(repo=REPO, root=n.root)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = run_cli("gc", n.root, "--keep-runs", "1", timeout=120)
        assert refused.returncode == 2 and "in use by another run" in refused.stderr
    finally:
        holder.kill()
        holder.wait()

    def listed(stdout):
        return sorted(line.strip() for line in stdout.splitlines()
                      if line.startswith("  /"))

    dry = run_cli("gc", n.root, "--config", str(n.config), "--keep-runs", "1", "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    would = listed(dry.stdout)
    assert would and all(os.path.exists(p) for p in would)
    # Kept: the newest run and the two that pushed the versions still there (the same two).
    assert "kept 2 run(s)" in dry.stdout, dry.stdout
    done = run_cli("gc", n.root, "--config", str(n.config), "--keep-runs", "1", "-v")
    assert done.returncode == 0, done.stderr[-3000:]
    assert listed(done.stdout) == would and not any(os.path.exists(p) for p in would)
    # What went: the oldest run kept until now (its statistics stay: the next night compared
    # with them), and the statistics that run compared with.
    run_ids = [night["summary"]["run_id"] for night in n.nights]
    stages = [s for s in configs.STAGES if s not in (configs.TUNER, configs.STATISTICS_GEN)]
    assert would == sorted([os.path.join(n.root, s, run_ids[-3]) for s in stages]
                           + [os.path.join(n.root, configs.STATISTICS_GEN, run_ids[-4]),
                              os.path.join(n.root, "runs", run_ids[-3])])

    # Back to the data of night 2: its artifacts went, so every stage executes again (the
    # units of its two files are still there: every kept run read them).
    for night in range(3, NIGHTS + 1):
        os.remove(n.folder / f"night{night:02d}.jsonl")
    proc = run_cli(*n.args())
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = newest_summary(n.root)
    assert {s["status"] for s in summary["stages"]} == {"ok"}, proc.stderr[-3000:]
    assert "input files parsed 0, reused 2" in proc.stdout
    assert pusher.served_version(n.base) == summary["stages"][-1]["details"]["version"]


def test_gc_on_an_object_storage_root(gcs_bucket, tmp_path):
    """A gs:// root (the emulated store of tests/objstore.py), its store on a local disk: gc
    removes through tf.io.gfile what the older run alone needed."""
    from test_object_storage import gcs_cli

    root, metadata = gcs_bucket.url("gc", "root"), str(tmp_path / "metadata")
    data = tmp_path / "q.jsonl"
    for rows in (trec_like(60), trec_like(90)):  # the file changes: a new unit
        data.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l, _ in rows))
        proc = gcs_cli(gcs_bucket, "run", "--input", str(data), "--pipeline-root", root,
                       "--metadata-dir", metadata, "--until", "ExampleGen", *IN_MEMORY)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = [r["run_id"] for r in meta.MetadataStore(metadata).runs()]

    def objects(run_or_unit):
        return [o for o in gcs_bucket.list_objects("gc/root/") if f"/{run_or_unit}/" in o]

    def unit_names():  # (gfile writes a directory as an empty object "<dir>/")
        return {o.split("/")[4] for o in gcs_bucket.list_objects("gc/root/ExampleGen/.units/")
                } - {""}

    units = unit_names()
    assert len(units) == 2 and objects(first) and objects(second)
    proc = gcs_cli(gcs_bucket, "gc", root, "--metadata-dir", metadata, "--keep-runs", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "artifact directories: 1 removed" in proc.stdout, proc.stdout
    assert "parsed input units: 1 removed" in proc.stdout and "run directories: 1 removed" \
        in proc.stdout
    assert not objects(first) and objects(second)
    left = unit_names()
    assert len(left) == 1 and left < units
    states = {a.uri: a.state for a in meta.MetadataStore(metadata).all_artifacts()
              if a.type_name == meta.EXAMPLES}
    assert states == {f"{root}/ExampleGen/{first}": "DELETED",
                      f"{root}/ExampleGen/{second}": "LIVE"}


def test_a_gc_that_fails_after_a_run_is_a_warning(tmp_path):
    from pipeline import api

    class Recorder:
        summary = {}
        warnings = []

        def warn(self, message):
            self.warnings.append(message)

    class BrokenStore:
        def runs(self):
            raise OSError("disk gone")

    config = configs.load_config(None, {"pipeline_root": str(tmp_path),
                                        "retention": {"keep_runs": 1, "after_run": True}})
    recorder = Recorder()
    api._gc_after_run(config, BrokenStore(), str(tmp_path), recorder, "r1")
    assert recorder.warnings == ["retention (gc after the run) failed, the run's result "
                                 "stands: disk gone"]
    assert "retention" not in recorder.summary


def test_a_partial_run_is_kept_while_it_is_being_made_not_once_abandoned(tmp_path):
    """A run made stage by stage (Airflow) is "partial" between its parts: kept while no newer
    run has ended, then (a DAG run given up) it goes by the rules like any other."""
    h = build_history(tmp_path)
    h.start("r6", "2020-01-06T00:00:00+00:00")
    h.example_gen({"a.csv": "a1", "b.csv": "b3"})
    h.finish("partial (up to ExampleGen)")
    h.start("r7", "2020-01-07T00:00:00+00:00")
    h.example_gen({"a.csv": "a1", "b.csv": "b4"})
    h.finish("partial (up to ExampleGen)")
    result = collect(h, keep_runs=1, keep_pushed_lineage=False)
    assert result.kept_runs["r6"].startswith("partial") and "r7" in result.kept_runs
    h.start("r8", "2020-01-08T00:00:00+00:00")
    h.example_gen({"a.csv": "a1", "b.csv": "b5"})
    h.finish()
    result = collect(h, keep_runs=1, keep_pushed_lineage=False)
    assert "r6" not in result.kept_runs and "r7" not in result.kept_runs
    assert (configs.EXAMPLE_GEN, "r6") in artifact_runs(result)
