"""Artifacts on any file system: publication with a marker, on a local disk and on object storage.

Object storage (gs://, s3://) has no atomic directory rename, so there a directory is written in
place and published by a marker written last. `fileio.rename_is_atomic` decides which protocol
a path gets; the tests below force the object-store one on a local disk by patching it.
"""
import json
import os
import time

import pytest

from components import example_gen as eg
from components import readers as rd
from components import fileio, pusher
from components.artifacts import staged_output
from pipeline import metadata as meta
from pipeline.orchestrator import (Orchestrator, clean_stale_temporaries, dir_artifact,
                                   outputs_live)


@pytest.fixture
def object_store(monkeypatch):
    """Every path gets the object-store protocol: written in place, no renames."""
    monkeypatch.setattr(fileio, "rename_is_atomic", lambda path: False)


def write_file(path, text="x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def names(directory):
    return sorted(os.listdir(directory))


# ---------------------------------------------------------------------------- local disk


def test_local_publishing_is_atomic_and_marked(tmp_path):
    final = str(tmp_path / "Stage" / "run1")
    with fileio.publishing(final) as work:
        assert work != final and os.path.basename(work).startswith(".tmp-run1-")
        write_file(os.path.join(work, "sub", "data.txt"), "content")
        assert not os.path.exists(final)  # nothing visible at the artifact path while writing
        assert not fileio.is_published(final)
    assert names(tmp_path / "Stage") == ["run1"]  # the temporary sibling was renamed
    assert names(final) == [fileio.MARKER, "sub"]
    assert fileio.is_published(final)
    assert fileio.read_text(os.path.join(final, "sub", "data.txt")) == "content"


def test_a_published_artifact_is_never_overwritten(tmp_path):
    final = str(tmp_path / "Stage" / "run1")
    with fileio.publishing(final) as work:
        write_file(os.path.join(work, "a.txt"), "first")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        with fileio.publishing(final) as work:
            write_file(os.path.join(work, "a.txt"), "second")
    assert fileio.read_text(os.path.join(final, "a.txt")) == "first"
    assert names(tmp_path / "Stage") == ["run1"]


def test_a_failed_local_stage_leaves_nothing(tmp_path):
    final = str(tmp_path / "Stage" / "run1")
    with pytest.raises(RuntimeError, match="boom"):
        with fileio.publishing(final) as work:
            write_file(os.path.join(work, "a.txt"))
            raise RuntimeError("boom")
    assert names(tmp_path / "Stage") == []


def test_replace_text_and_urls_stay_urls(tmp_path):
    path = str(tmp_path / "runs" / "r1" / "summary.json")
    fileio.replace_text(path, "one")
    fileio.replace_text(path, "two")
    assert fileio.read_text(path) == "two" and names(tmp_path / "runs" / "r1") == ["summary.json"]
    assert fileio.absolute("gs://bucket/root") == "gs://bucket/root"
    assert fileio.absolute("file:///tmp/x") == "file:///tmp/x"
    assert fileio.join("gs://bucket/root", "Stage", "run") == "gs://bucket/root/Stage/run"


# ---------------------------------------------------------------------------- object-store protocol


def test_object_store_publishing_writes_in_place_marker_last(tmp_path, object_store,
                                                             monkeypatch):
    final = str(tmp_path / "Stage" / "run1")
    written = []
    real_write_text = fileio.write_text
    monkeypatch.setattr(fileio, "write_text",
                        lambda path, text: (written.append(path), real_write_text(path, text)))
    with staged_output(final) as work:
        assert work == final  # in place: no rename on object storage
        fileio.write_text(os.path.join(work, "a.txt"), "content")
        fileio.write_text(os.path.join(work, "b.txt"), "more")
        assert os.path.isdir(final) and not fileio.is_published(final)  # visible, not published
    assert written == [os.path.join(final, name) for name in ("a.txt", "b.txt", fileio.MARKER)]
    assert fileio.is_published(final) and names(tmp_path / "Stage") == ["run1"]


def test_object_store_crash_leaves_an_unpublished_dir_that_a_rerun_replaces(tmp_path,
                                                                            object_store):
    final = str(tmp_path / "Stage" / "run1")
    with pytest.raises(RuntimeError):
        with staged_output(final) as work:
            write_file(os.path.join(work, "partial.txt"))
            raise RuntimeError("killed")
    assert os.path.exists(os.path.join(final, "partial.txt"))  # the partial content stays...
    assert not fileio.is_published(final)  # ...and counts as absent
    with staged_output(final) as work:  # a rerun removes it first
        write_file(os.path.join(work, "whole.txt"))
    assert names(final) == [fileio.MARKER, "whole.txt"]


class _Recorder:
    """The orchestrator's view of RunRecorder."""

    def __init__(self):
        self.events = []

    def stage(self, name, output_dir, fn):
        self.events.append(("executed", output_dir))
        return fn()

    def reused(self, name, output_dir, details, run_id):
        self.events.append(("reused", output_dir))


def _run_stage(orchestrator, root, run_id, fail=False):
    out = os.path.join(root, "StatisticsGen", run_id)

    def fn():
        with staged_output(out) as work:
            write_file(os.path.join(work, "stats.pb"), "same content every time")
            if fail:
                raise RuntimeError("killed while writing")
        return {"ok": True}

    return orchestrator.run("StatisticsGen", out, fn, {}, {"p": 1},
                            lambda d, _: {"statistics": [dir_artifact(meta.STATISTICS, d)]})


def test_the_orchestrator_reuses_only_published_outputs(tmp_path, object_store):
    root = str(tmp_path / "root")
    store = meta.MetadataStore(str(tmp_path / "metadata"))
    store.start_run("textcnn", "run1", {})
    recorder = _Recorder()
    orchestrator = Orchestrator(store, recorder)
    with pytest.raises(RuntimeError):  # a crash in place: unpublished, recorded FAILED
        _run_stage(orchestrator, root, "run1", fail=True)
    first = _run_stage(orchestrator, root, "run2")
    assert first.reused_from is None and fileio.is_published(first.output_dir)
    again = _run_stage(orchestrator, root, "run3")
    assert again.reused_from is not None and again.output_dir == first.output_dir
    # The COMPLETE execution's directory loses its marker (say, a partial copy put back):
    # it is absent, so the stage executes again instead of reusing it.
    os.remove(os.path.join(first.output_dir, fileio.MARKER))
    third = _run_stage(orchestrator, root, "run4")
    assert third.reused_from is None and third.output_dir.endswith("run4")
    assert [kind for kind, _ in recorder.events] == ["executed", "executed", "reused",
                                                     "executed"]


def test_a_pushed_version_is_live_only_while_complete(tmp_path):
    pusher_dir = str(tmp_path / "Pusher" / "run1")
    with staged_output(pusher_dir) as work:
        write_file(os.path.join(work, pusher.PUSHED_FILE), "{}")
    version = str(tmp_path / "serving" / "textcnn" / "123")
    write_file(os.path.join(version, pusher.SAVED_MODEL_PB))
    pushed = meta.Artifact(meta.PUSHED_MODEL, version, "f")

    def execution(outputs, output_dir):
        return meta.Execution(1, "Pusher", "COMPLETE", "run1", {"output_dir": output_dir}, {},
                              outputs)

    assert outputs_live(execution({"pushed_model": [pushed]}, pusher_dir))
    os.remove(os.path.join(version, pusher.SAVED_MODEL_PB))
    assert not outputs_live(execution({"pushed_model": [pushed]}, pusher_dir))
    # "Not blessed" is a decision without outputs, and no directory: it is reused as it is.
    assert outputs_live(execution({}, str(tmp_path / "Pusher" / "run2")))


def test_clean_stale_temporaries_removes_unpublished_stage_dirs_only(tmp_path, object_store):
    root = str(tmp_path / "root")
    with pytest.raises(RuntimeError):  # a dead run's stage, left in place without its marker
        with staged_output(os.path.join(root, "Transform", "dead")) as work:
            write_file(os.path.join(work, "transform_fn", "partial"))
            raise RuntimeError("killed")
    with staged_output(os.path.join(root, "Transform", "done")) as work:
        write_file(os.path.join(work, "transform_info.json"))
    legacy = os.path.join(root, "Trainer", "legacy")  # COMPLETE before markers existed
    write_file(os.path.join(legacy, "history.json"))
    unit = os.path.join(root, "ExampleGen", ".units", "abc")  # guarded by is_parsed itself
    write_file(os.path.join(unit, "Split-train", eg.UNIT_DATA_FILE))
    run_units = os.path.join(root, "ExampleGen", "dead.units")  # a run's own parsed units
    write_file(os.path.join(run_units, "u", "x"))
    local_tmp = os.path.join(root, "Evaluator", ".tmp-dead-123")  # a local-disk leftover
    write_file(os.path.join(local_tmp, "x"))
    write_file(os.path.join(root, "runs", "dead", "summary.json"))

    removed = clean_stale_temporaries(root, keep=[legacy])
    assert sorted(removed) == sorted([os.path.join(root, "Transform", "dead"), run_units,
                                      local_tmp])
    assert names(os.path.join(root, "Transform")) == ["done"]
    assert os.path.exists(os.path.join(unit, "Split-train", eg.UNIT_DATA_FILE))
    assert os.path.exists(legacy) and os.path.exists(os.path.join(root, "runs", "dead"))
    assert clean_stale_temporaries(root, keep=[legacy]) == []


# ---------------------------------------------------------------------------- ExampleGen units


def _unit(tmp_path):
    path = str(tmp_path / "a.csv")
    write_file(path, "text,label,split\nwhat is x ?,DESC,test\n ,DESC,\nwho is y ?,HUM,train\n")
    return rd.InputUnit(path, ((path, "csv"),))


def test_parse_unit_in_place_writes_counts_last(tmp_path, object_store, monkeypatch):
    unit = _unit(tmp_path)
    unit_dir = str(tmp_path / "units" / "u1")
    at_counts = []
    real_write_json = fileio.write_json

    def write_json(path, obj, **kwargs):
        if path.endswith(rd.COUNTS_FILE):  # every file it counts is complete by now
            at_counts.append(sorted(os.path.relpath(os.path.join(d, f), unit_dir)
                                    for d, _, files in os.walk(unit_dir) for f in files))
            assert not eg.is_parsed(unit_dir)
        real_write_json(path, obj, **kwargs)

    monkeypatch.setattr(fileio, "write_json", write_json)
    [(name, tallies)] = eg.ParseUnitFn(rd.ExampleGenSettings()).process((unit, unit_dir))
    assert at_counts == [sorted([os.path.join("Split-test", eg.UNIT_DATA_FILE),
                                 os.path.join("Split-train", eg.UNIT_DATA_FILE),
                                 os.path.join(rd.QUARANTINE_DIR, eg.UNIT_QUARANTINE_FILE)])]
    assert tallies == {"read": 3, "split:test": 1, "split:train": 1, "quarantine:empty_text": 1}
    assert names(tmp_path / "units") == ["u1"]  # written in place: no temporary sibling
    assert eg.is_parsed(unit_dir)


@pytest.mark.parametrize("leftover", ["no_counts", "missing_file"])
def test_a_partial_unit_left_in_place_is_parsed_again(tmp_path, object_store, leftover):
    unit = _unit(tmp_path)
    unit_dir = str(tmp_path / "units" / "u1")
    write_file(os.path.join(unit_dir, "Split-train", eg.UNIT_DATA_FILE), "truncated gzip")
    write_file(os.path.join(unit_dir, "stray.txt"))
    if leftover == "missing_file":  # counts that name a split whose file never arrived
        write_file(os.path.join(unit_dir, rd.COUNTS_FILE),
                   json.dumps({"read": 2, "split:eval": 2}))
    assert not eg.is_parsed(unit_dir)
    [(_, tallies)] = eg.ParseUnitFn(rd.ExampleGenSettings()).process((unit, unit_dir))
    assert tallies["read"] == 3 and eg.is_parsed(unit_dir)
    assert names(unit_dir) == sorted([rd.COUNTS_FILE, "Split-test", "Split-train",
                                      rd.QUARANTINE_DIR])
    out = str(tmp_path / "ExampleGen" / "run1")
    counts = eg.assemble_examples([(unit, [(unit_dir, None)])], out)
    assert counts["written"] == 2 and fileio.is_published(out)


# ---------------------------------------------------------------------------- Pusher


def fake_model(directory):
    """A SavedModel's layout (the Pusher copies files; it never loads them)."""
    for rel in ("saved_model.pb", "fingerprint.pb", "variables/variables.index",
                "variables/variables.data-00000-of-00001", "assets/vocab.txt"):
        write_file(os.path.join(directory, rel), rel)
    return str(directory)


def test_the_pusher_writes_saved_model_pb_last_in_place(tmp_path, object_store, monkeypatch):
    model = fake_model(tmp_path / "model")
    schema = str(tmp_path / "schema.pbtxt")
    write_file(schema, "feature {}")
    copies = []
    real_copy = pusher._copy_file
    monkeypatch.setattr(pusher, "_copy_file",
                        lambda source, target: (copies.append(target), real_copy(source, target)))
    settings = pusher.PusherSettings(serving_dir=str(tmp_path / "serving"))
    pushed = pusher.push(model, {"run_id": "r"}, settings, {"schema.pbtxt": schema})
    base = os.path.join(settings.serving_dir, settings.model_name)
    final = os.path.join(base, str(pushed["version"]))
    assert pushed["path"] == final and names(base) == [str(pushed["version"])]  # no .tmp-*
    assert len(copies) == 6 and all(c.startswith(final + os.sep) for c in copies)
    assert copies[-1] == os.path.join(final, pusher.SAVED_MODEL_PB)
    assert fileio.read_json(os.path.join(final, pusher.METADATA_FILE))["run_id"] == "r"
    assert pusher.versions(base) == [pushed["version"]]


def test_a_partial_version_is_never_listed_and_the_next_push_removes_it(tmp_path, object_store,
                                                                        monkeypatch):
    model = fake_model(tmp_path / "model")
    settings = pusher.PusherSettings(serving_dir=str(tmp_path / "serving"))
    base = os.path.join(settings.serving_dir, settings.model_name)
    real_copy = pusher._copy_file

    def dies_at_saved_model_pb(source, target):
        if target.endswith(pusher.SAVED_MODEL_PB):
            raise OSError("connection reset")
        real_copy(source, target)

    monkeypatch.setattr(pusher, "_copy_file", dies_at_saved_model_pb)
    with pytest.raises(OSError):
        pusher.push(model, {}, settings)
    [partial] = names(base)
    assert partial.isdigit() and pusher.versions(base) == []
    assert pusher.latest_version_dir(base) is None
    assert not os.path.exists(os.path.join(base, partial, pusher.SAVED_MODEL_PB))

    # One from the future too (a push whose clock was ahead): its number is not reused either.
    future = int(time.time()) + 1000
    write_file(os.path.join(base, str(future), "variables", "variables.index"))
    monkeypatch.setattr(pusher, "_copy_file", real_copy)
    pushed = pusher.push(model, {}, settings)
    assert pushed["version"] == future + 1
    assert names(base) == [str(pushed["version"])]  # both partial versions removed
    assert pusher.versions(base) == [pushed["version"]]


def test_an_unpublished_evaluator_output_does_not_bless(tmp_path, object_store):
    evaluator_dir = tmp_path / "Evaluator" / "run1"
    write_file(str(evaluator_dir / "BLESSED"), "")  # written, but the stage never completed
    with pytest.raises(pusher.ModelNotBlessedError, match="incomplete"):
        pusher.run_pusher(str(evaluator_dir), "unused", {}, pusher.PusherSettings(
            serving_dir=str(tmp_path / "serving")), str(tmp_path / "Pusher" / "run1"))
    assert not os.path.exists(tmp_path / "serving")
