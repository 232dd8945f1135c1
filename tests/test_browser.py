"""The chat example in a real headless Chromium, against the command line's server.

Needs Debian's ``chromium`` (``.ci/run`` and ``scripts/setup-tests`` install it);
Playwright drives it without downloading a browser of its own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from .processes import ROOT, CliServer, cli_server, start_cli
from .proxy import proxy_thread

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
TIMEOUT = 10_000  # ms, for every wait on the page


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if shutil.which("chromium") is None:
        pytest.fail("Chromium is missing: run scripts/setup-tests (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def server() -> Iterator[CliServer]:
    with cli_server() as server:
        yield server


def open_chat(browser: Browser, server: CliServer, name: str, room: str = "lobby") -> Page:
    """A page in its own browser context (its own storage), joined to ``room``."""
    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(f"{server.url}/?name={name}&room={room}")
    expect(page.locator("#status")).to_have_text("open")
    expect(page.locator("#room-title")).to_have_attribute("data-joined", room)
    return page


def say(page: Page, text: str) -> None:
    page.fill("#text", text)
    page.click("#send button")
    expect(page.locator("#text")).to_have_value("")  # the mutation succeeded


def test_pages_see_who_is_online_appear_and_disappear(browser: Browser, server: CliServer) -> None:
    ann = open_chat(browser, server, "ann")
    expect(ann.locator("#online li")).to_have_text(["ann"])
    bob = open_chat(browser, server, "bob")
    for page in (ann, bob):
        expect(page.locator("#online li")).to_have_text(["ann", "bob"])
        expect(page.locator("#online-title")).to_have_text("Online (2)")
    alice = open_chat(browser, server, "alice", room="random")  # another room: not listed in the lobby
    expect(alice.locator("#online li")).to_have_text(["alice"])
    alice.click("#rooms button[data-room=lobby]")
    expect(ann.locator("#online li")).to_have_text(["ann", "bob", "alice"])
    expect(ann.locator("#online li.staff")).to_have_text(["alice"])  # the server's meta, not the page's
    bob.context.close()  # the window closes: bob leaves
    expect(ann.locator("#online li")).to_have_text(["ann", "alice"])
    expect(alice.locator("#online-title")).to_have_text("Online (2)")
    alice.click("#rooms button[data-room=random]")
    expect(ann.locator("#online li")).to_have_text(["ann"])


def test_pages_in_a_room_see_each_other_and_other_rooms_do_not(browser: Browser, server: CliServer) -> None:
    ann = open_chat(browser, server, "ann")
    bob = open_chat(browser, server, "bob")
    eve = open_chat(browser, server, "eve", room="random")
    say(ann, "hello from ann")
    say(bob, "hi ann")
    for page in (ann, bob):
        expect(page.locator("#messages li")).to_have_text(["annhello from ann", "bobhi ann"])
    say(eve, "anyone?")
    expect(eve.locator("#messages li")).to_have_text(["eveanyone?"])
    # The lobby pages got nothing from the other room (their lists are unchanged).
    say(ann, "last")
    expect(bob.locator("#messages li")).to_have_count(3)
    expect(bob.locator("#messages li").last).to_have_text("annlast")


def test_switching_rooms_moves_the_page(browser: Browser, server: CliServer) -> None:
    ann = open_chat(browser, server, "ann")
    bob = open_chat(browser, server, "bob", room="random")
    ann.click("#rooms button[data-room=random]")
    expect(ann.locator("#room-title")).to_have_attribute("data-joined", "random")
    say(bob, "welcome to random")
    expect(ann.locator("#messages li")).to_have_text(["bobwelcome to random"])


def test_private_room_shows_the_refusal(browser: Browser, server: CliServer) -> None:
    bob = open_chat(browser, server, "bob")
    bob.click("#rooms button[data-room=staff]")
    expect(bob.locator("#notice")).to_contain_text("You cannot join #staff")
    expect(bob.locator("#notice")).to_contain_text("access_denied")
    alice = open_chat(browser, server, "alice", room="staff")  # alice is staff
    say(alice, "staff meeting at 3")
    expect(alice.locator("#messages li")).to_have_text(["alicestaff meeting at 3"])
    # Bob cannot post there either: the mutation refuses, and the page says so.
    say_refused = bob.locator("#notice")
    bob.fill("#text", "let me in")
    bob.click("#send button")
    expect(say_refused).to_have_text("only staff may post in the staff room")
    expect(bob.locator("#messages li")).to_have_count(0)


def test_page_reconnects_and_rejoins_after_a_server_restart(browser: Browser, server: CliServer) -> None:
    ann = open_chat(browser, server, "ann", room="random")
    bob = open_chat(browser, server, "bob", room="random")
    say(ann, "before")
    expect(bob.locator("#messages li")).to_have_text(["annbefore"])

    code, err = server.stop()
    assert code == 0, err
    expect(bob.locator("#status")).to_have_text("reconnecting")
    restarted = start_cli(port=server.port)
    try:
        for page in (ann, bob):
            expect(page.locator("#status")).to_have_text("open", timeout=20_000)
        # Re-joined without the page doing anything: a message sent now arrives.
        say(ann, "after the restart")
        expect(bob.locator("#messages li")).to_have_text(["annbefore", "annafter the restart"])
    finally:
        restarted.stop()


def test_page_recovers_messages_missed_while_its_network_was_down(browser: Browser, server: CliServer) -> None:
    with proxy_thread(server.url) as (proxy, call):
        behind_proxy = CliServer(server.process, f"http://127.0.0.1:{proxy.port}")
        ann = open_chat(browser, behind_proxy, "ann", room="random")  # her network: the proxy
        bob = open_chat(browser, server, "bob", room="random")
        say(bob, "before")
        expect(ann.locator("#messages li")).to_have_text(["bobbefore"])

        call(proxy.cut)  # ann's connection drops, and she cannot reconnect
        expect(ann.locator("#status")).to_have_text("reconnecting")
        say(bob, "while you were away")
        say(bob, "and this")
        call(proxy.restore)

        expect(ann.locator("#status")).to_have_text("open", timeout=20_000)
        expect(ann.locator("#messages li")).to_have_text(["bobbefore", "bobwhile you were away", "boband this"])
        say(bob, "live again")
        expect(ann.locator("#messages li")).to_have_text(
            ["bobbefore", "bobwhile you were away", "boband this", "boblive again"]
        )
        expect(ann.locator("#notice")).to_have_text("")  # recovered: no warning


def test_a_page_from_another_origin_cannot_open_the_socket(browser: Browser, server: CliServer) -> None:
    # The same server under another name is another origin: Chromium sends
    # Origin: http://localhost:PORT to a server whose Host is 127.0.0.1:PORT.
    page = browser.new_context().new_page()
    page.set_default_timeout(TIMEOUT)
    page.goto(server.url.replace("127.0.0.1", "localhost") + "/_modelence/modelence.d.ts")
    outcome = """url => new Promise(resolve => {
        const ws = new WebSocket(url);
        ws.onopen = () => { ws.close(); resolve("open"); };
        ws.onerror = () => resolve("refused");
    })"""
    assert page.evaluate(outcome, server.ws_url) == "refused"
    # The page's own origin is allowed: the same call from there opens.
    assert page.evaluate(outcome, server.ws_url.replace("127.0.0.1", "localhost")) == "open"


def test_the_browser_client_publishes(browser: Browser, server: CliServer) -> None:
    # The chat app's channel takes no client publishes (messages go through a
    # mutation): the server's answers come back as the promise's outcome.
    page = open_chat(browser, server, "ann")
    outcome = """async () => {
        const { ClientChannel } = await import("/_modelence/modelence.js");
        const chat = new ClientChannel("chat", () => {});
        const results = [];
        for (const id of ["elsewhere", "lobby"]) {
            try { await chat.publishToChannel(id, { text: "hi" }); results.push("ok"); }
            catch (error) { results.push(String(error.message)); }
        }
        return results;
    }"""
    first, second = page.evaluate(outcome)
    assert first.startswith("not_joined")  # this page never joined chat:elsewhere
    assert second.startswith("publish_not_allowed")  # joined, but the channel has no on_message


# --- the live dashboard -----------------------------------------------------------------------


def test_the_dashboard_is_for_staff_and_its_counters_move(browser: Browser, server: CliServer) -> None:
    """The chat example's dashboard (staff only): refused without a token and
    for bob, shown to alice; a page that connects and a message sent move its
    counters. The screenshot in README is taken here (docs/dashboard.png)."""
    page = browser.new_context(viewport={"width": 1280, "height": 700}).new_page()
    page.set_default_timeout(TIMEOUT)
    refused = page.goto(f"{server.url}/_modelence/dashboard")
    assert refused is not None and refused.status == 401
    refused = page.goto(f"{server.url}/_modelence/dashboard?token=bob")
    assert refused is not None and refused.status == 403  # signed in, but not staff
    shown = page.goto(f"{server.url}/_modelence/dashboard?token=alice")
    assert shown is not None and shown.status == 200
    expect(page.locator("body")).to_have_attribute("data-joined", "true")  # the live channel, over WebSocket
    assert "token" not in page.url  # taken out of the address bar
    expect(page.locator("#ready")).to_have_text("yes")
    expect(page.locator("#connections")).to_have_text("1")  # the dashboard's own
    expect(page.locator("#broadcasts")).to_have_text("0")

    ann = open_chat(browser, server, "ann")  # a client connects and joins
    expect(page.locator("#connections")).to_have_text("2")
    say(ann, "hello")  # a broadcast
    expect(page.locator("#broadcasts")).to_have_text("1")
    expect(page.locator("#deliveries")).to_have_text("1")
    expect(page.locator("#categories tbody tr", has_text="chat")).to_contain_text("chat1")  # one chat channel

    # Some traffic for the picture: more pages, a refused join, a page that goes, messages.
    bob = open_chat(browser, server, "bob")
    bob.click("#rooms button[data-room=staff]")
    expect(bob.locator("#notice")).to_contain_text("access_denied")
    bob.click("#rooms button[data-room=lobby]")
    expect(bob.locator("#room-title")).to_have_attribute("data-joined", "lobby")
    eve = open_chat(browser, server, "eve", room="random")
    eve.context.close()  # a page that closes: a close by the peer
    expect(page.locator("#closes")).to_contain_text("peer")
    for n in range(12):
        say(ann if n % 2 else bob, f"message {n}")
        page.wait_for_timeout(300)
    expect(page.locator("#broadcasts")).to_have_text("13")
    expect(page.locator("#refusals")).to_contain_text("access_denied")
    expect(page.locator("#methods tbody")).to_contain_text("chat.sendMessage")
    page.screenshot(path=str(ROOT / "docs" / "dashboard.png"), full_page=True)


# --- the shared client vectors (tests/vectors/client.json), in the browser client ----------

_FAKE_SOCKET = """
window.__sockets = [];
window.__records = [];
window.WebSocket = class {
  constructor(url) { this.url = String(url); this.sent = []; this.readyState = 0; window.__sockets.push(this); }
  send(text) { this.sent.push(text); }
  close() { this.readyState = 3; }
};
"""


def test_the_browser_client_passes_the_shared_vectors(browser: Browser) -> None:
    from pathlib import Path

    from .test_client_vectors import VECTORS, WELCOME

    source = (Path(__file__).resolve().parent.parent / "modelence_trio" / "client" / "modelence.js").read_text()
    for vector in VECTORS:
        page = browser.new_context().new_page()
        page.set_default_timeout(TIMEOUT)
        page.add_init_script(_FAKE_SOCKET)
        page.goto("about:blank")
        page.evaluate(
            """async (source) => {
                const url = URL.createObjectURL(new Blob([source], { type: "text/javascript" }));
                const client = await import(url);
                window.__client = client;
                const record = (data, { channel }) => __records.push(["message", channel, data]);
                const chat = new client.ClientChannel("chat", record, {
                    onPresence: (presence, { channel }) => __records.push(["presence", channel, presence]),
                });
                window.__chat = chat;
                client.startWebsockets({
                    url: "ws://vectors.invalid/ws", channels: [chat], pingInterval: 1e9,
                    backoff: { initial: 1, factor: 1, maximum: 1 },
                    onRecoveryFailed: (channel) => __records.push(["recovery_failed", channel]),
                });
            }""",
            source,
        )
        try:
            _run_vector_in_page(page, vector, WELCOME)
        except Exception as exc:
            raise AssertionError(f"vector {vector['name']!r}: {exc}") from exc
        page.context.close()


def _run_vector_in_page(page: Page, vector: dict[str, Any], welcome: dict[str, Any]) -> None:
    name = vector["name"]
    sockets = 0  # connections opened so far
    read = 0  # frames of the current socket read
    ref: Any = None
    seen = 0
    for step in vector["steps"]:
        if "connect" in step:
            page.wait_for_function("n => __sockets.length > n", arg=sockets)
            sockets += 1
            read = 0
            page.evaluate(
                "w => { const s = __sockets.at(-1); s.readyState = 1; s.onmessage({ data: JSON.stringify(w) }); }",
                welcome,
            )
        elif "do" in step:
            call = {"join": "joinChannel(id)", "leave": "leaveChannel(id)", "publish": "publishToChannel(id, data)"}
            settled = json.dumps(step["do"] == "publish")
            script = f"""([id, data]) => {{ __chat.{call[step["do"]]}.then(
                () => {settled} && __records.push(["settled", "publish", "chat:" + id, null]),
                () => {{}}); }}"""
            page.evaluate(script, [step["channel"].removeprefix("chat:"), step.get("data")])
        elif "expect" in step:
            page.wait_for_function("n => __sockets.at(-1).sent.length > n", arg=read)
            frame = json.loads(page.evaluate("n => __sockets.at(-1).sent[n]", read))
            read += 1
            ref = frame.pop("ref", None)
            assert frame == step["expect"], name
        elif "reply" in step or "push" in step:
            frame = {**step["reply"], "ref": ref} if "reply" in step else step["push"]
            page.evaluate("f => __sockets.at(-1).onmessage({ data: JSON.stringify(f) })", frame)
        elif "callback" in step:
            page.wait_for_function("n => __records.length > n", arg=seen)
            assert page.evaluate("n => __records[n]", seen) == step["callback"], name
            seen += 1
        elif "drop" in step:
            page.evaluate("() => { const s = __sockets.at(-1); s.readyState = 3; s.onclose({ code: 1011 }); }")
        elif "quiet" in step:
            page.wait_for_timeout(200)
            assert page.evaluate("() => __sockets.at(-1).sent.length") == read, f"{name}: the client sent more"
    assert page.evaluate("() => __records.length") == seen, name
