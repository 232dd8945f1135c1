"""Run the command line (``python -m modelence_trio``) as a real child process."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
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
        """Signal the server and wait for it to exit; its exit code and stderr.
        Past ``timeout``, its whole process group is killed (a worker process
        of its own would keep the pipes open)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"the server did not stop within {timeout} s:\n{err}") from None
        return self.process.returncode, err


def start_cli(app: str = CHAT_APP, port: int = 0, *, mongodb_uri: str | None = None) -> CliServer:
    """Start ``python -m modelence_trio app`` and wait for the URL it prints;
    with ``mongodb_uri``, as one instance of several on that database."""
    command = [sys.executable, "-m", "modelence_trio", app, "--port", str(port), "--log-level", "warning"]
    return start_server(command, r"serving on (http://\S+)", env={"MONGODB_URI": mongodb_uri} if mongodb_uri else {})


def start_hypercorn(app: str = CHAT_APP, *options: str) -> CliServer:
    """Start plain ``hypercorn --worker-class trio app`` on a free port."""
    command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--bind", "127.0.0.1:0", *options, app]
    return start_server(command, r"Running on (http://\S+)", read_stderr=True)


def start_server(
    command: list[str], pattern: str, *, read_stderr: bool = False, timeout: float = 20, env: Mapping[str, str] = {}
) -> CliServer:
    """Start a server process and wait for the line that tells its URL."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment.pop("MONGODB_URI", None)  # a single instance unless a test says otherwise
    environment.update(env)
    pipe = subprocess.PIPE
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment, stdout=pipe, stderr=pipe, text=True, start_new_session=True
    )
    output = process.stderr if read_stderr else process.stdout
    assert output is not None
    seen = ""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(output, selectors.EVENT_READ)
        while time.monotonic() < deadline and process.poll() is None:
            if selector.select(timeout=0.1):
                # Raw reads: a buffered readline could keep the line we wait for in its buffer.
                seen += os.read(output.fileno(), 65536).decode(errors="replace")
                found = re.search(pattern, seen)
                if found:
                    return CliServer(process, found.group(1))
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    _, err = process.communicate(timeout=10)
    raise AssertionError(f"the server did not start: {command}\n{seen}{err}")


@contextmanager
def cli_server(app: str = CHAT_APP, port: int = 0) -> Iterator[CliServer]:
    server = start_cli(app, port)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.communicate(timeout=10)
