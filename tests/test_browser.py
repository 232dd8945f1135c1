"""The chat example in a real headless Chromium, against the command line's server.

Needs Debian's ``chromium`` (``.ci/run`` and ``scripts/setup-tests`` install it);
Playwright drives it without downloading a browser of its own.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Dialog, Page, Response, expect, sync_playwright

from .processes import ROOT, CliServer, cli_server, start_cli
from .proxy import proxy_thread
from .readme import block

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
    expect(page.locator("#status")).to_have_text("connected")
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


def test_a_room_shows_its_recent_messages_on_entering_it(browser: Browser, server: CliServer) -> None:
    ann = open_chat(browser, server, "ann")
    bob = open_chat(browser, server, "bob")
    say(ann, "one")
    say(ann, "two")
    bob.click("#rooms button[data-room=random]")
    expect(bob.locator("#room-title")).to_have_attribute("data-joined", "random")
    say(ann, "three")  # while bob is in another room
    bob.click("#rooms button[data-room=lobby]")
    expect(bob.locator("#messages li")).to_have_text(["annone", "anntwo", "annthree"])
    bob.reload()
    expect(bob.locator("#messages li")).to_have_text(["annone", "anntwo", "annthree"])


def test_signing_out_lets_another_window_pick_a_name(browser: Browser, server: CliServer) -> None:
    context = browser.new_context()  # two windows of one browser share the stored name
    first = context.new_page()
    first.set_default_timeout(TIMEOUT)
    first.goto(server.url)
    first.fill("#name", "alice")
    first.click("#signin button")  # remembered for the browser's other windows
    expect(first.locator("#whoami")).to_have_text("signed in as alice")
    second = context.new_page()
    second.set_default_timeout(TIMEOUT)
    second.goto(server.url)
    expect(second.locator("#whoami")).to_have_text("signed in as alice")
    second.click("#signout")
    expect(second.locator("#signin")).to_be_visible()
    second.fill("#name", "bob")
    second.click("#signin button")
    expect(second.locator("#whoami")).to_have_text("signed in as bob")
    expect(second.locator("#status")).to_have_text("connected")


def test_the_page_fits_a_phone(browser: Browser, server: CliServer) -> None:
    page = browser.new_context(viewport={"width": 390, "height": 844}).new_page()
    page.set_default_timeout(TIMEOUT)
    missing: list[str] = []

    def note(response: Response) -> None:
        if response.status >= 400:
            missing.append(response.url)

    page.on("response", note)
    page.goto(f"{server.url}/?name=ann")
    expect(page.locator("#status")).to_have_text("connected")
    say(page, "hello from a phone")
    expect(page.locator("#messages li")).to_have_text(["annhello from a phone"])
    for selector in ("#send button", "#status", "#signout", "#rooms button[data-room=random]"):
        box = page.locator(selector).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)
    assert missing == []  # no 404 (the favicon included)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390  # nothing cut off sideways


def test_a_screenshot_for_the_readme(browser: Browser, server: CliServer) -> None:
    # Taken by the tests so that README's picture stays what the page is.
    alice = open_chat(browser, server, "alice")
    bob = open_chat(browser, server, "bob")
    say(alice, "hi bob, the staff room is on the left")
    say(bob, "thanks! I can see you are online")
    expect(alice.locator("#online li")).to_have_text(["alice", "bob"])
    expect(alice.locator("#messages li")).to_have_count(2)
    alice.set_viewport_size({"width": 900, "height": 420})
    shot = Path(__file__).resolve().parent.parent / "docs" / "chat.png"
    alice.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000


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
            expect(page.locator("#status")).to_have_text("connected", timeout=20_000)
        # Re-joined without the page doing anything: a message sent now arrives.
        say(ann, "after the restart")
        expect(bob.locator("#messages li")).to_have_text(["annbefore", "annafter the restart"])
        # The server stopped gracefully (1001) and the new one had sent nothing: no false alarm.
        for page in (ann, bob):
            expect(page.locator("#notice")).to_have_text("")
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

        expect(ann.locator("#status")).to_have_text("connected", timeout=20_000)
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


def test_the_readme_page_runs_as_written(browser: Browser, tmp_path: Path) -> None:
    """README's page snippet, as written, served by the README's quickstart
    app, with ann's token where the snippet reads it (as a sign-in would
    leave it): it connects, joins, calls the method and logs the broadcast,
    with no error and no alert."""
    (tmp_path / "myapp.py").write_text(block("# myapp.py"))
    snippet = block("<!-- a page served by the app (static_dir) -->")
    with cli_server("myapp:app", cwd=tmp_path) as server:
        context = browser.new_context()
        context.add_init_script("localStorage.setItem('authToken', 'secret-token')")
        page = context.new_page()
        errors: list[str] = []
        logs: list[list[Any]] = []
        page.on("pageerror", lambda error: errors.append(str(error)))

        def on_dialog(dialog: Dialog) -> None:  # onJoinError's alert
            errors.append(f"alert: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)
        page.on("console", lambda message: logs.append([arg.json_value() for arg in message.args]))
        # A document of the app's origin (any of its URLs), then the snippet as its content.
        page.goto(f"{server.url}/_modelence/modelence.d.ts")
        page.set_content(f"<!doctype html>\n{snippet}")
        for _ in range(100):
            if ["lobby", {"text": "hi", "from": "ann"}] in logs or errors:
                break
            page.wait_for_timeout(100)
        assert errors == []
        assert ["lobby", {"text": "hi", "from": "ann"}] in logs, logs
        assert ["open"] in logs, logs  # onStatusChange
        context.close()


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
        if "refuse" in step:  # a connection attempt that fails before the welcome
            page.wait_for_function("n => __sockets.length > n", arg=sockets)
            sockets += 1
            page.evaluate("() => { const s = __sockets.at(-1); s.readyState = 3; s.onclose({ code: 1006 }); }")
        elif "connect" in step:
            page.wait_for_function("n => __sockets.length > n", arg=sockets)
            sockets += 1
            read = 0
            page.evaluate(
                "w => { const s = __sockets.at(-1); s.readyState = 1; s.onmessage({ data: JSON.stringify(w) }); }",
                welcome,
            )
        elif "do" in step:
            call = {
                "join": "joinChannel(id, data)",
                "leave": "leaveChannel(id)",
                "publish": "publishToChannel(id, data)",
            }
            settled = json.dumps(step["do"] == "publish")
            script = f"""([id, data]) => {{ __chat.{call[step["do"]]}.then(
                () => {settled} && __records.push(["settled", "publish", "chat:" + id, null]),
                () => {{}}); }}"""
            data = {"last": step["last"]} if step["do"] == "join" and "last" in step else step.get("data")
            page.evaluate(script, [step["channel"].removeprefix("chat:"), data])
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
            code = 1011 if step["drop"] is True else step["drop"]
            page.evaluate("c => { const s = __sockets.at(-1); s.readyState = 3; s.onclose({ code: c }); }", code)
        elif "quiet" in step:
            page.wait_for_timeout(200)
            assert page.evaluate("() => __sockets.at(-1).sent.length") == read, f"{name}: the client sent more"
    assert page.evaluate("() => __records.length") == seen, name


def test_a_refused_token_stops_the_reconnects_until_a_new_one_comes(browser: Browser) -> None:
    with cli_server("tests.auth_app:app") as server:
        page = browser.new_context().new_page()
        page.set_default_timeout(TIMEOUT)
        page.goto(f"{server.url}/_modelence/modelence.d.ts")  # a page of the server's origin
        outcome = page.evaluate(
            """async () => {
                // Every step is bounded: a client that never settles fails here, not in pytest's timeout.
                const within = (promise, what) => Promise.race([
                    promise, new Promise((_, reject) => setTimeout(() => reject(new Error(`timeout: ${what}`)), 10000)),
                ]);
                const sockets = [];
                const Real = WebSocket;
                window.WebSocket = class extends Real { constructor(url) { super(url); sockets.push(String(url)); } };
                const m = await import("/_modelence/modelence.js");
                const events = [];
                let token = "nope";
                const chat = new m.ClientChannel("chat", () => {});
                m.startWebsockets({
                    channels: [chat], getToken: () => token, backoff: { initial: 50, maximum: 50 },
                    onStatusChange: (status) => events.push(status),
                    onAuthError: (error) => events.push(`${error.name}:${error.code}:${error.message}`),
                });
                const join = chat.joinChannel("lobby").then(() => "joined", (e) => `${e.name}:${e.code}`);
                const refused = await within(join, "refusal");
                await new Promise((resolve) => setTimeout(resolve, 1000));  // 20 backoffs' worth: no retry
                const attemptsWhileRefused = sockets.length;
                token = "good";
                m.setAuthToken(null);  // the app says: try again (getToken has the new token)
                await within(chat.joinChannel("lobby"), "join with a good token");
                // The session ends while connected (signed out elsewhere): 4001.
                const before = events.length;
                await m.callMethod("test.endSession", { token: "good" });
                const ended = new Promise((resolve) => {
                    const watcher = setInterval(() => {
                        if (events.length > before + 1) { clearInterval(watcher); resolve(); }
                    }, 20);
                });
                await within(ended, "the end of the session");
                token = "fresh";
                m.setAuthToken(null);
                await within(chat.joinChannel("lobby"), "join with a fresh token");
                // A token set while connected takes effect on the socket too (sign out, sign in).
                const connected = events.length;
                token = "third";
                m.setAuthToken(null);
                await within(new Promise((resolve) => {
                    const watcher = setInterval(() => {
                        if (events.length > connected + 1 && events.at(-1) === "open") {
                            clearInterval(watcher);
                            resolve();
                        }
                    }, 20);
                }), "the reconnect with the new token");
                return { events, refused, attemptsWhileRefused, sockets };
            }"""
        )
        assert outcome["refused"] == "AuthError:invalid_token"
        assert outcome["attemptsWhileRefused"] == 1  # no reconnect loop with a refused token
        assert outcome["events"] == [
            "connecting",
            "unauthorized",
            "AuthError:invalid_token:invalid or expired token",
            "connecting",
            "open",
            "unauthorized",
            "AuthError:session_ended:session expired or revoked, or user disabled",
            "connecting",
            "open",
            "reconnecting",
            "open",
        ]
        assert [url.rsplit("token=", 1)[1] for url in outcome["sockets"]] == ["nope", "good", "fresh", "third"]


def test_call_method_says_when_the_server_is_unreachable(browser: Browser, server: CliServer) -> None:
    page = open_chat(browser, server, "ann")
    server.stop()
    outcome = page.evaluate(
        """async () => {
            const { callMethod } = await import("/_modelence/modelence.js");
            try { await callMethod("chat.rooms"); return "resolved"; }
            catch (error) { return [error.name, error.code, error.status]; }
        }"""
    )
    assert outcome == ["MethodError", "unreachable", 0]
