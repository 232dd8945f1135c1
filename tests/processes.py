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
from collections.abc import Iterator, Mapping, Sequence
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
            if signum == signal.SIGKILL:
                self.kill()
            else:
                self.process.send_signal(signum)
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"the server did not stop within {timeout} s:\n{err}") from None
        return self.process.returncode, err

    def wait(self, timeout: float = 15) -> tuple[int, str]:
        """Wait for the server to exit by itself (no signal sent); its exit code and stderr."""
        try:
            _, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            _, err = self.process.communicate()
            raise AssertionError(f"the server did not exit within {timeout} s:\n{err}") from None
        return self.process.returncode, err

    def kill(self) -> None:
        """SIGKILL the server and what it started (hypercorn's worker process,
        which would otherwise keep the output pipes open)."""
        kill_group(self.process)


def kill_group(process: subprocess.Popen[str]) -> None:
    """SIGKILL ``process``'s process group (it leads one: ``start_new_session``)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def start_cli(
    app: str = CHAT_APP,
    port: int = 0,
    *,
    mongodb_uri: str | None = None,
    options: Sequence[str] = (),
    env: Mapping[str, str] = {},
    cwd: Path = ROOT,
) -> CliServer:
    """Start ``python -m modelence_trio app`` and wait for the URL it prints;
    with ``mongodb_uri``, as one instance of several on that database."""
    command = [sys.executable, "-m", "modelence_trio", app, "--port", str(port), "--log-level", "warning", *options]
    environment = {**env, "MONGODB_URI": mongodb_uri} if mongodb_uri else env
    return start_server(command, r"serving on (http://\S+)", env=environment, cwd=cwd)


def run_cli(
    *arguments: str, env: Mapping[str, str] = {}, cwd: Path = ROOT, timeout: float = 30
) -> tuple[int, str, str]:
    """Run ``python -m modelence_trio *arguments`` to its end: exit code, stdout, stderr."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment.pop("MONGODB_URI", None)
    environment.update(env)
    command = [sys.executable, "-m", "modelence_trio", *arguments]
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout, result.stderr


def start_hypercorn(app: str = CHAT_APP, *options: str) -> CliServer:
    """Start plain ``hypercorn --worker-class trio app`` on a free port."""
    command = [sys.executable, "-m", "hypercorn", "--worker-class", "trio", "--bind", "127.0.0.1:0", *options, app]
    return start_server(command, r"Running on (http://\S+)", read_stderr=True)


def start_server(
    command: list[str],
    pattern: str,
    *,
    read_stderr: bool = False,
    timeout: float = 20,
    env: Mapping[str, str] = {},
    cwd: Path = ROOT,
) -> CliServer:
    """Start a server process and wait for the line that tells its URL."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
    environment.pop("MONGODB_URI", None)  # a single instance unless a test says otherwise
    environment.update(env)
    pipe = subprocess.PIPE
    process = subprocess.Popen(
        command, cwd=cwd, env=environment, stdout=pipe, stderr=pipe, text=True, start_new_session=True
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
    kill_group(process)
    _, err = process.communicate()
    raise AssertionError(f"the server did not start: {command}\n{seen}{err}")


@contextmanager
def cli_server(app: str = CHAT_APP, port: int = 0, *, cwd: Path = ROOT) -> Iterator[CliServer]:
    server = start_cli(app, port, cwd=cwd)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            server.kill()
        server.process.communicate()


def run_pytest(project: Path, *arguments: str, timeout: float = 120) -> tuple[int, str]:
    """Run pytest in ``project`` as a user would in a fresh project (with this
    environment's Python, where modelence-trio is installed): no PYTHONPATH,
    no options from the environment; its exit code and output."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    command = [sys.executable, "-m", "pytest", *arguments]
    result = subprocess.run(
        command, cwd=project, env=environment, capture_output=True, text=True, timeout=timeout, check=False
    )
    return result.returncode, result.stdout + result.stderr
