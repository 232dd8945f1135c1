"""Logs: one INFO line per connection end, JSON lines, repeated errors folded."""

from __future__ import annotations

import json
import logging
import signal
import sys
from typing import Any

import pytest
import trio
import trio_websocket

from modelence_trio import Hub, HubConfig, ServerChannel, serve_websocket
from modelence_trio._logs import LOGGERS, JsonFormatter, RepeatFilter, quiet_repeated_errors

from .helpers import RawClient, receive_json
from .processes import start_server


def _record(message: str, *args: object, level: int = logging.ERROR, name: str = "modelence_trio") -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def test_repeated_identical_errors_are_folded_into_one_line_per_interval() -> None:
    now = [100.0]
    folding = RepeatFilter(10.0, clock=lambda: now[0])
    first = _record("MongoDB unreachable: %s", "timeout")
    assert folding.filter(first)
    assert first.getMessage() == "MongoDB unreachable: timeout"
    for _ in range(5):
        now[0] += 1.0
        assert not folding.filter(_record("MongoDB unreachable: %s", "timeout"))
    assert folding.filter(_record("MongoDB unreachable: %s", "refused"))  # another line passes
    assert folding.filter(_record("MongoDB unreachable: %s", "timeout", name="modelence_trio.fanout"))  # another logger
    assert folding.filter(_record("MongoDB unreachable: %s", "timeout", level=logging.CRITICAL))  # another level
    for _ in range(3):  # warnings are never folded
        assert folding.filter(_record("MongoDB unreachable: %s", "timeout", level=logging.WARNING))
    now[0] += 5.0  # 10 s after the first
    again = _record("MongoDB unreachable: %s", "timeout")
    assert folding.filter(again)
    assert again.getMessage() == "MongoDB unreachable: timeout (repeated 5 more times in the last 10 s)"
    now[0] += 10.0
    quiet = _record("MongoDB unreachable: %s", "timeout")
    assert folding.filter(quiet) and quiet.getMessage() == "MongoDB unreachable: timeout"  # nothing dropped since


def test_the_folding_leaves_info_alone_and_remembers_a_bounded_number_of_lines() -> None:
    folding = RepeatFilter(10.0, capacity=3, clock=lambda: 0.0)
    for _ in range(3):
        assert folding.filter(_record("connection 1 ended", level=logging.INFO))
    for n in range(10):
        assert folding.filter(_record(f"error {n}"))
    assert len(folding._seen) == 3
    assert folding.filter(_record("error 0"))  # forgotten, so let through again
    assert not folding.filter(_record("error 9"))


def test_the_library_loggers_fold_repeats_once_set_up(caplog: pytest.LogCaptureFixture) -> None:
    quiet_repeated_errors()
    quiet_repeated_errors()  # idempotent
    for name in LOGGERS:
        assert sum(isinstance(f, RepeatFilter) for f in logging.getLogger(name).filters) == 1
    with caplog.at_level(logging.ERROR):
        for _ in range(50):
            logging.getLogger("modelence_trio.fanout").error("the same failure, over and over")
    assert [r.getMessage() for r in caplog.records] == ["the same failure, over and over"]


def test_json_lines_carry_the_extra_fields_and_the_traceback() -> None:
    formatter = JsonFormatter()
    record = _record("connection %s ended", "ab-1", level=logging.INFO)
    record.__dict__.update({"close_code": 4002, "frames_out": 7})
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "connection ab-1 ended"
    assert (entry["level"], entry["logger"], entry["close_code"], entry["frames_out"]) == (
        "INFO",
        "modelence_trio",
        4002,
        7,
    )
    assert entry["time"].endswith("+00:00")
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "it\nfailed", None, sys.exc_info())
    entry = json.loads(formatter.format(failed))
    assert entry["message"] == "it\nfailed"
    assert "ValueError: line one" in entry["exception"]


def _ended(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == "connection_ended"]


async def test_one_info_line_per_connection_end(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="modelence_trio")
    chat: ServerChannel[Any] = ServerChannel("chat", history=None)
    hub = Hub([chat])
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    join = '{"type":"join","channel":"chat:a","ref":1}'
    received: list[str] = []
    with pytest.raises(trio_websocket.ConnectionRejected):  # this hub takes no tokens: 401, and no line
        async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws?token=secret-token-55"):
            pass
    async with trio_websocket.open_websocket_url(f"ws://127.0.0.1:{port}/ws") as ws:
        received.append(str(await ws.get_message()))
        await ws.send_message(join)
        received.append(str(await ws.get_message()))
        chat.broadcast("a", {"text": "é"})  # non-ASCII: bytes, not characters
        received.append(str(await ws.get_message()))
        connection = json.loads(received[0])["connection"]
    with trio.fail_after(5):
        while not _ended(caplog):
            await trio.sleep(0.01)
    [record] = _ended(caplog)
    assert record.levelno == logging.INFO
    wire = sum(len(text.encode()) + 2 for text in received)  # every frame under 126 bytes: a 2-byte header
    fields = {k: getattr(record, k) for k in ("connection", "close_code", "closed_by", "frames_in", "bytes_in")}
    assert fields == {
        "connection": connection,
        "close_code": 1000,
        "closed_by": "peer",
        "frames_in": 1,
        "bytes_in": len(join),
    }
    assert (record.frames_out, record.bytes_out) == (3, wire)  # type: ignore[attr-defined]
    assert 0 <= record.duration_s < 10  # type: ignore[attr-defined]
    assert record.getMessage().startswith(f"connection {connection} ended: close 1000 by peer (closed by the client)")
    text = "\n".join(r.getMessage() + repr(vars(r)) for r in caplog.records)
    assert "secret-token-55" not in text


async def test_a_slow_consumer_s_line_says_4002_by_the_server(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="modelence_trio")
    big: ServerChannel[Any] = ServerChannel("big", history=None)
    hub = Hub([big], config=HubConfig(outbound_queue_bytes=64 * 1024, heartbeat_interval=None))
    port = await nursery.start(serve_websocket, hub, "127.0.0.1", 0)
    slow = await RawClient.connect(f"ws://127.0.0.1:{port}/ws")
    await slow.send_text('{"type":"join","channel":"big:1"}')
    await slow.read_until(lambda: len(slow.texts) >= 2)
    sent = 0
    while hub._router.registry.subscribers_of("big:1") and sent < 5000:
        big.broadcast("1", "z" * 16_000)
        sent += 1
        if sent % 10 == 0:
            await trio.sleep(0)
    await slow.read_until(lambda: False)
    with trio.fail_after(5):
        while not _ended(caplog):
            await trio.sleep(0.01)
    [record] = _ended(caplog)
    assert (record.close_code, record.closed_by) == (4002, "server")  # type: ignore[attr-defined]
    assert "outbound queue overflow" in record.getMessage()
    assert record.frames_out == 2 + sent  # type: ignore[attr-defined]  # welcome, joined, every broadcast handed over


async def test_the_command_line_logs_json_lines() -> None:
    command = [
        sys.executable, "-m", "modelence_trio", "examples.chat.app:app", "--port", "0",
        "--log-format", "json", "--log-level", "info",
    ]  # fmt: skip
    server = await trio.to_thread.run_sync(lambda: start_server(command, r"serving on (http://\S+)"))
    try:
        async with trio_websocket.open_websocket_url(server.ws_url + "?token=ann") as ws:
            await receive_json(ws)
        await trio.sleep(0.3)
        code, err = await trio.to_thread.run_sync(server.stop)
    finally:
        await trio.to_thread.run_sync(server.stop, signal.SIGKILL)
    assert code == 0, err
    entries = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    ended = [e for e in entries if e.get("event") == "connection_ended"]
    assert len(ended) == 1 and ended[0]["level"] == "INFO" and ended[0]["closed_by"] == "peer"
    assert any("SIGTERM, shutting down" in e["message"] for e in entries)
    assert "ann" not in json.dumps(ended)  # the user's token (the dev authenticator's name) is not in it
