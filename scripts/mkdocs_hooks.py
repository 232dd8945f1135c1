"""mkdocs hooks (mkdocs.yml ``hooks:``): the site is made of the repository's
own Markdown files, never copies of them.

- Files outside ``docs/`` that are pages (``ROOT_PAGES``: protocol.md, the
  changelog, the benchmarks) are added to the site as they are.
- A line ``<!-- include README.md: Some heading -->`` in a page is replaced by
  that section of README.md (the heading, its text, up to the next heading of
  its level or above); ``<!-- include README.md: intro -->`` is the text
  between the title and the first section. Every README section must be in
  some page: one that is not is reported (a warning, so ``--strict`` fails).
- Relative links are written for the repository (README.md links to
  ``docs/fanout.md``); each is rewritten to where its target is in the site.
  A link to a file that is not in the site fails the build.
- Sphinx-style roles in docstrings (``:class:`App```) are shown as code.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from markdown import Markdown
from markdown.extensions import Extension
from markdown.preprocessors import Preprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.modelence")

ROOT = Path(__file__).resolve().parent.parent
#: Repository files outside docs/ that are pages of the site: repository path -> site path.
ROOT_PAGES = {
    "protocol.md": "protocol.md",
    "CHANGELOG.md": "changelog.md",
    "bench/README.md": "benchmarks/index.md",
    "bench/RESULTS.md": "benchmarks/results.md",
}
INCLUDE = re.compile(r"^<!-- include (?P<file>[\w./-]+): (?P<section>.+?) -->$", re.MULTILINE)
LINK = re.compile(r"(?P<image>!?)\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)\)")  # links and images
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
ROLE = re.compile(r":(?:class|meth|func|mod|attr|data|exc|obj):`~?([^`]+)`")

_included: dict[str, set[str]] = {}


# --- the pages ------------------------------------------------------------------------


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for source, site in ROOT_PAGES.items():
        files.append(File.generated(config, site, abs_src_path=str(ROOT / source)))
    return files


def _repository_path(page: Page) -> str:
    """Where the page's Markdown lives in the repository."""
    for source, site in ROOT_PAGES.items():
        if page.file.src_uri == site:
            return source
    return f"docs/{page.file.src_uri}"


def _site_map(files: Files) -> dict[str, str]:
    pages = {f"docs/{file.src_uri}": file.src_uri for file in files if file.src_uri not in ROOT_PAGES.values()}
    return {**pages, **ROOT_PAGES}


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    site_map = _site_map(files)
    here = _repository_path(page)

    def include(match: re.Match[str]) -> str:
        source = match["file"]
        text = section(source, match["section"], page.file.src_uri)
        return relink(text, source, page.file.src_uri, site_map)

    return INCLUDE.sub(include, relink(markdown, here, page.file.src_uri, site_map))


def section(source: str, title: str, where: str) -> str:
    """The section of repository file ``source`` headed ``title`` ("intro": before the first section)."""
    text = (ROOT / source).read_text()
    _included.setdefault(source, set()).add(title)
    lines = text.splitlines()
    if title == "intro":
        first = next(i for i, line in enumerate(lines) if line.startswith("## "))
        start = 1 if lines and lines[0].startswith("# ") else 0
        return "\n".join(lines[start:first]).strip() + "\n"
    headings = [i for i, line in enumerate(lines) if re.fullmatch(r"#+ " + re.escape(title), line)]
    if len(headings) != 1:
        log.warning("%s: %d sections of %s are headed %r", where, len(headings), source, title)
        return ""
    start = headings[0]
    level = len(lines[start]) - len(lines[start].lstrip("#"))
    end = len(lines)
    in_fence = False
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("```"):
            in_fence = not in_fence
        found = re.match(r"(#+) ", lines[i])
        if found and not in_fence and len(found[1]) <= level:
            end = i
            break
    return "\n".join(lines[start:end]).strip() + "\n"


def relink(markdown: str, source: str, page: str, site_map: dict[str, str]) -> str:
    """Rewrite the relative links of ``markdown`` (written in repository file
    ``source``) for the site page ``page``; code blocks are left alone."""

    def rewrite(match: re.Match[str]) -> str:
        target = match["target"]
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match[0]  # a URL, an anchor or an absolute path
        path, _, fragment = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(source), path))
        if resolved not in site_map and resolved.startswith("docs/") and (ROOT / resolved).is_file():
            site_map[resolved] = resolved.removeprefix("docs/")  # an image or file of docs/: copied as it is
        if resolved not in site_map:
            log.warning("%s: the link to %s (from %s) is to a file that is not in the site", page, target, source)
            return match[0]
        new = posixpath.relpath(site_map[resolved], posixpath.dirname(page) or ".")
        return f"{match['image']}[{match['text']}]({new}{'#' + fragment if fragment else ''})"

    parts = []
    last = 0
    for fence in FENCE.finditer(markdown):
        parts.append(LINK.sub(rewrite, markdown[last : fence.start()]))
        parts.append(fence[0])
        last = fence.end()
    parts.append(LINK.sub(rewrite, markdown[last:]))
    return "".join(parts)


def on_post_build(config: MkDocsConfig) -> None:
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", FENCE.sub("", readme), re.MULTILINE)
    missing = [title for title in sections if title not in _included.get("README.md", set())]
    if missing:
        log.warning("README sections in no page of the site (include them in docs/guides/): %s", missing)
    _included.clear()


# --- docstrings -------------------------------------------------------------------------


class _Roles(Preprocessor):
    def run(self, lines: list[str]) -> list[str]:
        return [ROLE.sub(r"`\1`", line) for line in lines]


class RolesExtension(Extension):
    """``:class:`App``` (Sphinx) as ```App``` in Markdown."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.preprocessors.register(_Roles(md), "sphinx_roles", 40)


def on_config(config: MkDocsConfig, **kwargs: Any) -> MkDocsConfig:
    config.markdown_extensions.append(RolesExtension())  # type: ignore[arg-type,no-untyped-call]  # an instance is fine
    return config
