"""pyproject.toml in the form current setuptools reads without deprecation warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it() -> None:
    document = tomllib.loads(PYPROJECT.read_text())
    # A TOML table ({ text = ... }) makes every install print a deprecation warning.
    assert document["project"]["license"] == "Apache-2.0"
    requirements = document["build-system"]["requires"]
    setuptools = next(r for r in requirements if r.startswith("setuptools"))
    minimum = re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", setuptools)
    assert minimum is not None and int(minimum.group(1)) >= 77, setuptools
