"""Tests that need something outside Python (a browser, the object-store emulator's binary).

On a developer's machine a missing dependency skips the test and says what to install. Under
CI=true (how CI runs .ci/run) it fails instead: a skip there would turn coverage off while CI
stays green. Tests that need the network are not "missing a dependency" and skip everywhere.
"""
import os

import pytest


def on_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(what: str):
    """Skips the calling test, or fails it on CI, naming what is missing."""
    if on_ci():
        pytest.fail(f"{what} (CI=true: a missing test dependency fails the test instead of "
                    "skipping it)", pytrace=False)
    pytest.skip(what)
