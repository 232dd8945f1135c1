"""`modelence-trio typescript module:app`: the app's Python types as TypeScript,
checked by TypeScript's own compiler (scripts/setup-tests installs it in .tools)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .processes import ROOT

TSC = ROOT / ".tools" / "node_modules" / ".bin" / "tsc"
CLIENT_TYPES = ROOT / "modelence_trio" / "client" / "modelence.d.ts"

GOOD = """
import { ClientChannel, callMethod } from "/_modelence/modelence.js";
import type { ChatMessage } from "./app";

const chat = new ClientChannel<ChatMessage>("chat", (message, { id }) => {
  const who: string = message.author.handle;
  const mood: "happy" | "grumpy" | null = message.mood;
  console.log(id, who, mood, message.replies[0]?.text);
});
new ClientChannel("news", (data) => console.log(data));

export async function post(): Promise<string> {
  const sent: ChatMessage = await callMethod("chat.send", { room: "lobby", text: "hi" });
  await callMethod("chat.send", { room: "lobby", text: "hi", priority: "high" });
  const rooms: string[] = await callMethod("chat.rooms");
  return sent.text + rooms.join() + chat.category;
}
"""

# Each line is one mistake the compiler must catch (and says where).
BAD = {
    "args": 'callMethod("chat.send", { room: 1, text: "hi" });',
    "missing": 'callMethod("chat.send", { room: "lobby" });',
    "literal": 'callMethod("chat.send", { room: "a", text: "b", priority: "urgent" });',
    "method": 'callMethod("chat.nope", {});',
    "result": 'callMethod("chat.rooms").then((rooms: number[]) => rooms);',
    "category": 'new ClientChannel<ChatMessage>("nochannel", () => {});',
    "payload": 'new ClientChannel<ChatMessage>("chat", (m) => { const n: number = m.text; return n; });',
}


def generate(folder: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "modelence_trio", "typescript", "tests.typed_app:app", "-o", str(folder / "app.d.ts")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == ""
    return (folder / "app.d.ts").read_text()


def tsc(folder: Path, source: str) -> subprocess.CompletedProcess[str]:
    if not TSC.exists():
        pytest.fail(f"TypeScript's compiler is missing: run scripts/setup-tests ({TSC})")
    (folder / "main.ts").write_text(source)
    config = {
        "compilerOptions": {
            "strict": True,
            "noEmit": True,
            "target": "es2022",
            "module": "es2022",
            "moduleResolution": "bundler",
            "lib": ["es2022", "dom"],
            "paths": {"/_modelence/modelence.js": [str(CLIENT_TYPES)]},
        },
        "files": ["main.ts", "app.d.ts"],
    }
    (folder / "tsconfig.json").write_text(json.dumps(config))
    return subprocess.run([str(TSC), "-p", str(folder)], capture_output=True, text=True, timeout=120)


def test_the_generated_types_say_what_the_server_sends(tmp_path: Path) -> None:
    text = generate(tmp_path)
    assert "export interface ChatMessage {\n  text: string;\n  author: Author;\n  at: number;" in text
    assert '  mood: "happy" | "grumpy" | null;\n  replies: ChatMessage[];' in text
    assert (
        '"chat.send": { args: Omit<SendArgs, "priority"> & Partial<Pick<SendArgs, "priority">>; result: ChatMessage };'
        in text
    )
    assert '"chat.rooms": { args: Record<string, unknown>; result: string[] };' in text
    assert '    "news": unknown;' in text


def test_pages_are_checked_against_the_server_types(tmp_path: Path) -> None:
    generate(tmp_path)
    good = tsc(tmp_path, GOOD)
    assert good.returncode == 0, good.stdout + good.stderr
    for mistake, line in BAD.items():
        source = GOOD + "\nexport function wrong(): void {\n  " + line + "\n}\n"
        bad = tsc(tmp_path, source)
        errors = [error for error in bad.stdout.splitlines() if "error TS" in error]
        assert bad.returncode != 0 and errors, f"{mistake}: tsc accepted {line!r}"
        wrong_line = (GOOD + "\nexport function wrong(): void {\n").count("\n") + 1
        assert all(f"main.ts({wrong_line}," in error for error in errors), (mistake, errors)  # only that line


def test_an_app_without_types_leaves_the_client_untyped(tmp_path: Path) -> None:
    # Without a generated file, any name and any object are accepted, as before.
    (tmp_path / "app.d.ts").write_text("export {};\n")
    source = 'import { callMethod, ClientChannel } from "/_modelence/modelence.js";\n'
    source += 'callMethod("anything.goes", { x: 1 });\nnew ClientChannel("any", () => {});\n'
    result = tsc(tmp_path, source)
    assert result.returncode == 0, result.stdout + result.stderr
