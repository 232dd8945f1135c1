"""The documentation site: it builds with warnings as errors, every public
name has a reference entry, and the hooks that make pages of the repository's
own Markdown do what they say."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import modelence_trio

from .processes import ROOT


def hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    testing = (site / "guides" / "testing" / "index.html").read_text()
    assert "modelence_hub" in testing  # README's section, included
    channels = (site / "reference" / "channels" / "index.html").read_text()
    assert "Send <code>data</code> to every connection joined to" in channels  # a docstring
    assert ":class:" not in (site / "reference" / "index.html").read_text()  # roles shown as code
    assert (site / "protocol" / "index.html").is_file() and (site / "changelog" / "index.html").is_file()


def test_every_public_name_is_in_the_reference() -> None:
    documented = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        documented |= set(re.findall(r"^::: modelence_trio\.(\w+)$", page.read_text(), re.MULTILINE))
    assert sorted(set(modelence_trio.__all__) - documented) == []


def test_links_are_rewritten_from_the_repository_to_the_site() -> None:
    relink = hooks().relink
    site = {"docs/fanout.md": "fanout.md", "protocol.md": "protocol.md", "bench/RESULTS.md": "benchmarks/results.md"}
    readme = "See [the design](docs/fanout.md#order), [protocol.md](protocol.md) and [numbers](bench/RESULTS.md)."
    assert relink(readme, "README.md", "guides/deployment.md", site) == (
        "See [the design](../fanout.md#order), [protocol.md](../protocol.md) and [numbers](../benchmarks/results.md)."
    )
    assert relink("[p](../protocol.md) [w](https://x.org/a.md) [a](#here)", "docs/index.md", "index.md", site) == (
        "[p](protocol.md) [w](https://x.org/a.md) [a](#here)"
    )
    fenced = "```\n[not](a/link.md)\n```\n"
    assert relink(fenced, "README.md", "index.md", site) == fenced


def test_a_section_runs_to_the_next_heading_of_its_level(tmp_path: Path) -> None:
    module = hooks()
    setattr(module, "ROOT", tmp_path)  # noqa: B010 - a module made at run time
    (tmp_path / "R.md").write_text(
        "# Title\n\nintro\n\n## One\n\ntext\n\n### Sub\n\n```sh\n## not a heading\n```\n\n## Two\n\nmore\n"
    )
    assert module.section("R.md", "One", "page.md") == "## One\n\ntext\n\n### Sub\n\n```sh\n## not a heading\n```\n"
    assert module.section("R.md", "intro", "page.md") == "intro\n"
