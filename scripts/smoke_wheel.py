"""Smoke test of an installed modelence-trio (scripts/check-package runs it
with a fresh venv's Python, from a folder outside the checkout that holds a
copy of examples/): the package imported is the installed one; the
``modelence-trio`` command serves the chat example; /_modelence/modelence.js
is served; a client joins a channel over the socket; SIGTERM ends the server
with 0; README's testing snippet passes under pytest in a fresh project.

Usage: python smoke_wheel.py path/to/README.md
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

import trio

import modelence_trio
from modelence_trio import open_client


def check_installed() -> None:
    package = Path(modelence_trio.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert package.is_relative_to(site), f"modelence_trio comes from {package}, not the venv's {site}"
    assert not list(site.glob("__editable__*")), "an editable install"
    print(f"smoke: modelence_trio {modelence_trio.__version__} from {package.parent}")


def serve() -> tuple[subprocess.Popen[str], str]:
    command = [str(Path(sys.executable).parent / "modelence-trio"), "examples.chat.app:app", "--port", "0"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert server.stdout is not None
    deadline = time.monotonic() + 30
    for line in server.stdout:
        found = re.search(r"serving on (http://\S+)", line)
        if found:
            return server, found[1]
        if time.monotonic() > deadline:
            break
    server.kill()
    raise AssertionError(f"the server did not start: {server.communicate()}")


async def join(url: str) -> None:
    async with open_client(url.replace("http://", "ws://") + "/ws") as client:
        with trio.fail_after(10):
            await client.join("chat:lobby")


def main(readme: Path) -> None:
    check_installed()
    server, url = serve()
    try:
        with urllib.request.urlopen(f"{url}/_modelence/modelence.js", timeout=10) as response:
            script = response.read().decode()
        assert response.status == 200 and "export function startWebsockets" in script, script[:200]
        print(f"smoke: GET {url}/_modelence/modelence.js: {len(script)} bytes")
        trio.run(join, url)
        print("smoke: joined chat:lobby over the socket")
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0, server.communicate()
        print("smoke: SIGTERM: exit 0")
    finally:
        if server.poll() is None:
            server.kill()
        server.communicate()
    snippet = re.search(r"```python\n(# test_rooms\.py\n.*?)```", readme.read_text(), re.DOTALL)
    assert snippet is not None, "README's testing snippet"
    with tempfile.TemporaryDirectory() as project:
        Path(project, "test_rooms.py").write_text(snippet[1])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q"], cwd=project, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stdout + result.stderr
        print(f"smoke: README's testing snippet in a fresh project: {result.stdout.strip().splitlines()[-1]}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
