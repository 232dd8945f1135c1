"""README.md's code blocks, as the tests that run them see them."""

from __future__ import annotations

import re
from pathlib import Path

import attrs

README = Path(__file__).resolve().parent.parent / "README.md"


@attrs.frozen
class Block:
    """One fenced code block: its language, its first line (what names it)
    and the line of README.md where its code starts."""

    language: str
    code: str
    line: int

    @property
    def first_line(self) -> str:
        return self.code.split("\n", 1)[0]

    @property
    def file_name(self) -> str | None:
        """``myapp.py`` for a block whose first line is ``# myapp.py``."""
        found = re.fullmatch(r"# ([\w.-]+\.py)", self.first_line)
        return found[1] if found else None

    @property
    def defines_tests(self) -> bool:
        return re.search(r"^(async )?def test_", self.code, re.MULTILINE) is not None

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.first_line})"


def blocks(language: str | None = None) -> list[Block]:
    """Every fenced block (of ``language``), in order."""
    text = README.read_text()
    found = []
    for match in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if language is None or match[1] == language:
            found.append(Block(match[1], match[2], text.count("\n", 0, match.start(2)) + 1))
    return found


def block(first_line: str) -> str:
    """The code of the one block whose first line is ``first_line``."""
    matching = [b for b in blocks() if b.first_line == first_line]
    assert len(matching) == 1, f"{len(matching)} README blocks start with {first_line!r}"
    return matching[0].code
