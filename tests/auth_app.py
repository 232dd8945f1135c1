"""An app for the browser client's token tests (tests/test_browser.py): fixed
tokens, sessions re-checked every half second, and a mutation that ends a
session (a test's stand-in for a sign-out elsewhere)."""

from __future__ import annotations

from typing import Any

from modelence_trio import App, HubConfig, MemoryAuthenticator, MethodContext, Module, ServerChannel, User

auth = MemoryAuthenticator()
for name in ("good", "fresh", "third"):
    auth.add(name, User(f"u-{name}", name))


def end_session(args: dict[str, Any], ctx: MethodContext) -> bool:
    auth.revoke(str(args["token"]))
    return True


app = App(
    [Module("test", channels=[ServerChannel("chat")], mutations={"endSession": end_session})],
    authenticator=auth,
    config=HubConfig(session_check_interval=0.5),
)
