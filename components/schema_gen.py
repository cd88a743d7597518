"""SchemaGen: the curated schema when there is one, else one inferred from training statistics."""
from __future__ import annotations

import logging
import os
import shutil
from typing import Optional, Tuple

from components import features
from components.artifacts import staged_output
from components.errors import UserInputError
from components.statistics_gen import load_statistics

SCHEMA_FILE = "schema.pbtxt"


def run_schema_gen(stats_dir: str, output_dir: str, curated_schema: Optional[str]
                   ) -> Tuple[str, str]:
    """Writes `schema.pbtxt` into `output_dir`; returns (path, "curated" | "inferred")."""
    import tensorflow_data_validation as tfdv

    with staged_output(output_dir) as tmp:
        if curated_schema and os.path.exists(curated_schema):
            try:
                tfdv.load_schema_text(curated_schema)
            except Exception as e:  # a parse error of the text proto
                raise UserInputError(f"curated schema {curated_schema} does not parse: {e}")
            shutil.copyfile(curated_schema, os.path.join(tmp, SCHEMA_FILE))
            origin = "curated"
        else:
            schema = tfdv.infer_schema(load_statistics(stats_dir, features.TRAIN))
            _free_text_has_no_domain(schema)
            # The label is not fed at serving time.
            schema.default_environment.extend([features.TRAINING, features.SERVING])
            tfdv.get_feature(schema, features.LABEL).not_in_environment.append(features.SERVING)
            tfdv.write_schema_text(schema, os.path.join(tmp, SCHEMA_FILE))
            origin = "inferred"
            logging.warning(
                "No curated schema at %s: inferred one from the training statistics. Review "
                "%s and copy it to %s to make it the source of truth.", curated_schema,
                os.path.join(output_dir, SCHEMA_FILE), curated_schema or "schemas/schema.pbtxt")
    return os.path.join(output_dir, SCHEMA_FILE), origin


def _free_text_has_no_domain(schema) -> None:
    """Inference gives any low-cardinality string a domain; text and ids are open-ended."""
    for feature in schema.feature:
        if feature.name in (features.TEXT, features.ID):
            if feature.HasField("domain"):
                kept = [d for d in schema.string_domain if d.name != feature.domain]
                del schema.string_domain[:]
                schema.string_domain.extend(kept)
            feature.ClearField("domain_info")


def load_schema(schema_dir_or_file: str):
    import tensorflow_data_validation as tfdv

    path = schema_dir_or_file
    if os.path.isdir(path):
        path = os.path.join(path, SCHEMA_FILE)
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
