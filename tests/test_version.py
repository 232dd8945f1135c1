"""The version is written once (``modelence_trio.__version__``): the installed
package's metadata and the changelog's latest entry agree with it."""

from __future__ import annotations

import importlib.metadata
import re

import modelence_trio

from .processes import ROOT


def test_the_metadata_reads_the_one_version() -> None:
    assert importlib.metadata.version("modelence-trio") == modelence_trio.__version__
    assert 'dynamic = ["version"]' in (ROOT / "pyproject.toml").read_text()


def test_the_changelog_starts_with_this_version() -> None:
    latest = re.search(r"^## (\S+)", (ROOT / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert latest is not None and latest[1] == modelence_trio.__version__
