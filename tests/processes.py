"""Run the command line (``python -m modelence_trio``) as a real child process."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent
CHAT_APP = "examples.chat.app:app"


@attrs.define
class CliServer:
    process: subprocess.Popen[str]
    url: str  # http://host:port

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> tuple[int, str]:
        """Signal the server and wait for it to exit; its exit code and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"the server did not stop within {timeout} s:\n{err}") from None
        return self.process.returncode, err


def start_cli(app: str = CHAT_APP, port: int = 0, timeout: float = 20) -> CliServer:
    """Start ``python -m modelence_trio app`` and wait for the URL it prints."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "modelence_trio", app, "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=0.1):
                line = process.stdout.readline()
                found = re.search(r"serving on (http://\S+)", line)
                if found:
                    return CliServer(process, found.group(1))
    process.kill()
    _, err = process.communicate()
    raise AssertionError(f"the server did not start:\n{err}")


@contextmanager
def cli_server(app: str = CHAT_APP, port: int = 0) -> Iterator[CliServer]:
    server = start_cli(app, port)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.communicate()
