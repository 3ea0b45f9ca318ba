"""Plain text from what files, servers and exceptions say: one line, no terminal codes."""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def one_line(text: str | BaseException, limit: int = 500) -> str:
    """A reason as recorded: one line, no terminal colour codes, at most `limit` characters. An
    exception with no message reads as its type's name."""
    if isinstance(text, BaseException):
        text = str(text) or type(text).__name__
    return " ".join(_ANSI.sub("", text).split())[:limit]
