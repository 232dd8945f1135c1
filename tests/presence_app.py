"""An app for the multi-process presence tests (tests/test_presence_mongo.py):
a presence channel, anyone signs in with any name, heartbeats every 0.5 s so
that a killed instance's members expire within seconds."""

from __future__ import annotations

from typing import Any

from modelence_trio import App, ChannelContext, DevelopmentAuthenticator, HubConfig, Module, Presence, ServerChannel


def handle(ctx: ChannelContext) -> dict[str, Any]:
    return {"handle": ctx.user.handle if ctx.user else None}


room: ServerChannel[Any] = ServerChannel("room", presence=Presence(meta=handle))
app = App(
    [Module("room", channels=[room])],
    authenticator=DevelopmentAuthenticator(),
    config=HubConfig(presence_interval=0.5, allowed_origins=("*",)),
)
