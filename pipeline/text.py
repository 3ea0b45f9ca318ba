"""Plain text from what files, servers and exceptions say: one line, no terminal codes.

Every string that comes from a checkpoint, a config.json, a hub server or an exception goes
through `one_line` before it is stored or printed: a layer name or a reason could otherwise
carry escape sequences that rewrite a terminal (clear it, retitle it, hide lines, set links)
when a table or a summary is shown.
"""

from __future__ import annotations

import re

# Terminal control sequences, whole (ECMA-48), so their parameters do not survive as text:
# - string controls: OSC (ESC ] or 0x9D), DCS (ESC P or 0x90), SOS (ESC X or 0x98),
#   PM (ESC ^ or 0x9E), APC (ESC _ or 0x9F), up to BEL, ST (ESC \ or 0x9C) or the end;
# - CSI (ESC [ or 0x9B): parameter and intermediate bytes, then a final byte;
# - any other escape (RIS `ESC c`, charset `ESC ( B`, ...): intermediates, then a final byte.
_CONTROL_SEQUENCE = re.compile(
    r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"
    r"|(?:\x1b\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"
)
# What is left of C0, DEL and C1 after the sequences are gone (whitespace becomes a space).
_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")


def has_control_characters(text: str) -> bool:
    """Whether `text` holds any C0 (tab and newlines included), DEL or C1 character."""
    return any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in text)


def without_control_sequences(text: str) -> str:
    """`text` with every terminal control sequence (colour codes, titles, ...) removed, its
    lines kept: for log lines of our own dependencies, not for text from outside."""
    return _CONTROL_SEQUENCE.sub("", text)


def one_line(text: str | BaseException, limit: int | None = 500) -> str:
    """A string from outside as it is recorded or printed: one line, every control sequence and
    control character removed, runs of whitespace as one space, at most `limit` characters
    (None: no limit). An exception with no message reads as its type's name."""
    if isinstance(text, BaseException):
        text = str(text) or type(text).__name__
    text = _CONTROL_CHARACTER.sub("", _CONTROL_SEQUENCE.sub("", str(text)))
    return " ".join(text.split())[:limit]
