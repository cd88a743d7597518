"""The one way stages make a Beam pipeline."""
from __future__ import annotations

import copy

import apache_beam as beam


def beam_pipeline(options) -> beam.Pipeline:
    """A Beam pipeline on a copy of `options`.

    Beam's portable runners (PortableRunner, and FlinkRunner and SparkRunner, which derive from
    it) set the runner of the options object they run with to None. A second pipeline built on
    the same object would then quietly run on the DirectRunner in the driver; a run makes
    several pipelines, so each gets its own copy.
    """
    return beam.Pipeline(options=copy.deepcopy(options))
