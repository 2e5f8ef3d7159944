"""Showing names that came from disk or a user: file names may hold newlines, control characters or
bytes that are not UTF-8 (Python keeps those as lone surrogates). Printed raw they forge log lines or
make a UTF-8 stdout raise; escaped they read as what they are. Torch-free."""

from __future__ import annotations

import os
from pathlib import PurePath


def escape(text: str | PurePath) -> str:
    """``text`` with control characters, lone surrogates and other unprintable characters escaped
    (``\\n``, ``\\x1b``, ``\\udcff`` → ``\\xff`` for an undecodable byte); printable text is unchanged."""
    s = os.fspath(text)
    if s.isprintable():
        return s
    out = []
    for ch in s:
        code = ord(ch)
        if ch.isprintable() or ch == " ":
            out.append(ch)
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape: one undecodable byte of the name
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)
