"""The pytest plugin in a user's fresh project: README's testing snippet,
alone in a folder outside this checkout, passes under plain ``pytest`` with
no configuration (and fails when its assertion is wrong)."""

from __future__ import annotations

import re
from pathlib import Path

from .processes import ROOT, run_pytest
from .readme import block

SNIPPET = "# test_rooms.py"


def fresh_project(tmp_path: Path, code: str) -> Path:
    project = tmp_path / "project"
    project.mkdir()
    assert not project.is_relative_to(ROOT)
    (project / "test_rooms.py").write_text(code)
    return project


def test_the_readme_snippet_passes_in_a_fresh_project(tmp_path: Path) -> None:
    project = fresh_project(tmp_path, block(SNIPPET))
    code, output = run_pytest(project)
    assert f"rootdir: {project}" in output and "configfile:" not in output  # nothing configured
    assert "not natively supported" not in output
    assert code == 0, output
    assert re.fullmatch(r"=+ 2 passed in .*", output.strip().splitlines()[-1]), output  # no warning, no skip


def test_a_wrong_assertion_in_it_fails(tmp_path: Path) -> None:
    code = block(SNIPPET)
    wrong = code.replace('.data == {"text": "hi"}', '.data == {"text": "bye"}')
    assert wrong != code
    project = fresh_project(tmp_path, wrong)
    exit_code, output = run_pytest(project)
    assert exit_code == 1, output
    assert "1 failed, 1 passed" in output, output
    assert "AssertionError" in output


def test_the_server_fixture_without_a_hub_says_what_to_define(tmp_path: Path) -> None:
    project = fresh_project(
        tmp_path, "async def test_needs_a_hub(modelence_client):\n    await modelence_client.join('room:1')\n"
    )
    code, output = run_pytest(project)
    assert code == 1, output
    assert "define a fixture named modelence_hub that returns it" in output, output
    assert "1 error" in output


def test_async_tests_run_under_trio_with_pytest_trio_fixtures(tmp_path: Path) -> None:
    project = fresh_project(
        tmp_path,
        "import trio\n\n\n"
        "async def test_in_virtual_time(autojump_clock):\n"
        "    await trio.sleep(3600)\n"
        "    assert trio.current_time() >= 3600\n\n\n"
        "async def test_with_a_nursery(nursery):\n"
        "    nursery.start_soon(trio.sleep, 0)\n",
    )
    code, output = run_pytest(project, "-W", "error")
    assert code == 0, output
    assert " 2 passed in " in output, output
