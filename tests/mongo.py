"""MongoDB for the tests: the one in ``MONGODB_URI``, or an nx-27017 wire server
started for the session, and a database per test."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymongo
import pytest
from pymongo.database import Database


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_nx(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """An nx-27017 (MongoDB wire protocol on SQLite, data in memory) on ``port``, accepting."""
    server = Path(sys.executable).parent / "nx-27017"
    command = [str(server), "--db", "memory", "-p", str(port), "--log-file", str(folder / "log")]
    pid_file = ["--pid-file", str(folder / "pid")]
    process = subprocess.Popen([*command, *pid_file], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError(f"nx-27017 did not start (see {folder / 'log'})") from None
            time.sleep(0.05)


def stop_nx(process: subprocess.Popen[bytes]) -> None:
    """Stop it; a SIGTERM is sometimes lost (nx-27017 exits from its signal
    handler, which can be swallowed during its own cleanup): then kill it."""
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="session")
def mongodb_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``MONGODB_URI`` if set (a real MongoDB, or the one .ci/run started), else
    an nx-27017 (MongoDB wire protocol on SQLite) on a free loopback port."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    port = free_port()
    process = start_nx(port, tmp_path_factory.mktemp("nx"))
    try:
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        stop_nx(process)


def connect(uri: str) -> pymongo.MongoClient[dict[str, Any]]:
    """A client as each instance has its own, with timeouts that notice an outage quickly."""
    return pymongo.MongoClient(uri, serverSelectionTimeoutMS=1000, connectTimeoutMS=1000, socketTimeoutMS=3000)


@pytest.fixture
def database_name(mongodb_uri: str) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    name = f"mt_{uuid.uuid4().hex[:12]}"
    yield name
    with connect(mongodb_uri) as client:
        client.drop_database(name)


@pytest.fixture
def database(mongodb_uri: str, database_name: str) -> Iterator[Database[dict[str, Any]]]:
    with connect(mongodb_uri) as client:
        yield client[database_name]


def with_database(uri: str, database: str) -> str:
    """``uri`` with ``database`` as its path (the database the instances use)."""
    where = urlsplit(uri)
    return where._replace(path=f"/{database}").geturl()
