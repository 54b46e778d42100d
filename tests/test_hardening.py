"""Issue 20, through the command line (and scripts/nightly.sh): a bundle's own words are checked
before they are used, nightly never reports success for work it did not do, shares mean frames
that exist, and no input reaches "internal error".

The bundles are the session's small bus bundles (tests/conftest.py: `trained`); queries and
evaluations run on a few frames whose labels are in that session's cache.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import ROOT, STOREFRONT, URBAN
from .test_reliability import assert_one_line, run


# ------------------------------------------------------------------ 2. nothing reaches "internal error"


@pytest.mark.parametrize("args", [
    ["query", URBAN, "--model", "", "--out", "x"],
    ["query", URBAN, STOREFRONT, "--model", "", "--out", "x"],
    ["query", "", "--model", "m"],
    ["query", URBAN, "--model", "m", "--out", ""],
    ["query", URBAN, "--model", "m", "--object", " "],
    ["query", URBAN, "--model", "m", "--start", ""],
    ["evaluate", "", "--model", "m"],
    ["evaluate", URBAN, "--model", ""],
    ["train", URBAN, "--object", "bus", "--name", ""],
    ["label", URBAN, "--object", "bus", "--reference", ""],
    ["label", URBAN, "--object", "bus", "--reference-weights", ""],
    ["label", URBAN, "--object", "bus", "--config", ""],
    ["report", ""],
])
def test_empty_strings_are_usage_errors(args, tmp_path):
    """`--model ""` (an unset shell variable) was `internal error: TypeError`; an empty video was
    the current folder, an empty --name the models folder itself, an empty --reference the default."""
    line = assert_one_line(run(*args, "-q") if args[0] != "report" else run(*args), 2, "noscope: error: ",
                           "is an empty string")
    assert "internal error" not in line
