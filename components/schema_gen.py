"""SchemaGen: the curated schema when one is given, else one inferred from the statistics.

Inference is asked for in words (`infer`). The inferred label domain lists every class seen in
any labelled split, not only in Split-train: a rare class whose only documents were hashed to
Split-eval is still a class. Classes that are all integers ("0", "1", "10") are ordered
numerically, others alphabetically, so the class index is stable across runs.
"""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

from components import features, fileio
from components.artifacts import staged_output
from components.errors import UserInputError
from components.statistics_gen import load_statistics, value_counts

SCHEMA_FILE = "schema.pbtxt"
INFER = "infer"  # the schema setting that asks for inference instead of a curated file


def run_schema_gen(stats_dir: str, splits: Sequence[str], output_dir: str, schema_path: str
                   ) -> Tuple[str, str]:
    """Writes `schema.pbtxt` into `output_dir`; returns (path, "curated" | "inferred").

    `schema_path` is a curated schema file, or `INFER`.
    """
    import tensorflow_data_validation as tfdv

    check_schema_path(schema_path)
    with staged_output(output_dir) as tmp:
        if schema_path != INFER:
            try:
                tfdv.load_schema_text(schema_path)
            except Exception as e:  # a parse error of the text proto
                raise UserInputError(f"curated schema {schema_path} does not parse: {e}")
            fileio.copy(schema_path, fileio.join(tmp, SCHEMA_FILE))
            origin = "curated"
        else:
            schema = infer_schema(stats_dir, splits)
            tfdv.write_schema_text(schema, fileio.join(tmp, SCHEMA_FILE))
            origin = "inferred"
            logging.info("inferred a schema from the statistics of %s", ", ".join(splits))
    return fileio.join(output_dir, SCHEMA_FILE), origin


def check_schema_path(schema_path: str) -> None:
    """A schema the user named must exist: a typo must not silently turn into inference."""
    if schema_path != INFER and (not fileio.exists(schema_path) or fileio.isdir(schema_path)):
        raise UserInputError(f"schema {schema_path} does not exist (give a schema file, or "
                             f"`{INFER}` to infer one from the data)")


def infer_schema(stats_dir: str, splits: Sequence[str]):
    """TFDV's inference on Split-train, with text/id open-ended and the label domain completed."""
    import tensorflow_data_validation as tfdv

    if features.TRAIN not in splits:
        raise UserInputError("cannot infer a schema: there is no Split-train to infer it from")
    schema = tfdv.infer_schema(load_statistics(stats_dir, features.TRAIN))
    _free_text_has_no_domain(schema)
    _id_is_optional(schema)
    _set_label_domain(schema, _classes_seen(stats_dir, splits))
    # The label is not fed at serving time.
    schema.default_environment.extend([features.TRAINING, features.SERVING])
    tfdv.get_feature(schema, features.LABEL).not_in_environment.append(features.SERVING)
    return schema


def _classes_seen(stats_dir: str, splits: Sequence[str]) -> List[str]:
    seen = set()
    for split in splits:
        counts = value_counts(load_statistics(stats_dir, split), features.LABEL)
        if counts is None:
            raise UserInputError(
                f"cannot infer the classes: `{features.LABEL}` in Split-{split} has more "
                "distinct values than the statistics keep (1000); is the label column the right "
                "one?")
        seen.update(counts)
    return sort_classes(seen)


def sort_classes(classes) -> List[str]:
    """Numeric order when every class is an integer written plainly ("2" before "10")."""
    classes = list(classes)
    if classes and all(is_integer_class(c) for c in classes):
        return sorted(classes, key=int)
    return sorted(classes)


def is_integer_class(name: str) -> bool:
    """"7" or "-1", written as Python writes the integer (so "07" and "1.0" are names)."""
    try:
        return str(int(name)) == name
    except ValueError:
        return False


def _set_label_domain(schema, classes: Sequence[str]) -> None:
    """`label` gets a string domain named `label` holding `classes` (in that order)."""
    label = next((f for f in schema.feature if f.name == features.LABEL), None)
    if label is None or not classes:
        raise UserInputError(f"cannot infer the classes: the data has no `{features.LABEL}`")
    if label.HasField("domain"):
        _drop_string_domain(schema, label.domain)
    _drop_string_domain(schema, features.LABEL)
    label.ClearField("domain_info")  # e.g. the int_domain TFDV gives "0"/"1" labels
    schema.string_domain.add(name=features.LABEL, value=list(classes))
    label.domain = features.LABEL


def _drop_string_domain(schema, name: str) -> None:
    kept = [d for d in schema.string_domain if d.name != name]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)


def _id_is_optional(schema) -> None:
    """`id` may be absent from any row (scoring gives rows without one `source:line`)."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    feature = next((f for f in schema.feature if f.name == features.ID), None)
    if feature is None:
        feature = schema.feature.add(name=features.ID, type=schema_pb2.BYTES)
    feature.ClearField("shape")
    feature.presence.Clear()
    feature.presence.min_count = 0
    feature.value_count.min = feature.value_count.max = 1


def _free_text_has_no_domain(schema) -> None:
    """Inference gives any low-cardinality string a domain; text and ids are open-ended."""
    for feature in schema.feature:
        if feature.name in (features.TEXT, features.ID):
            if feature.HasField("domain"):
                _drop_string_domain(schema, feature.domain)
            feature.ClearField("domain_info")


def load_schema(schema_dir_or_file: str):
    import tensorflow_data_validation as tfdv

    path = schema_dir_or_file
    if fileio.isdir(path):
        path = fileio.join(path, SCHEMA_FILE)
    return tfdv.load_schema_text(path)


def label_classes(schema) -> list:
    """The class list: the string domain of `label`, in schema order (index = class id)."""
    for feature in schema.feature:
        if feature.name == features.LABEL:
            if feature.HasField("string_domain"):
                return list(feature.string_domain.value)
            if feature.HasField("domain"):
                for domain in schema.string_domain:
                    if domain.name == feature.domain:
                        return list(domain.value)
    raise UserInputError("the schema gives `label` no string domain: list the classes in it")
