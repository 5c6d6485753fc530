"""What a run tells its user while it works: one line per skipped image or warning, a progress bar on a terminal."""

from __future__ import annotations

import sys
import unicodedata
from typing import Any


def say(message: str) -> None:
    print(message, file=sys.stderr)


def printable(text: str) -> str:
    """``text`` as is, or quoted with escapes (``repr``) when it holds control or format characters (a newline, an ANSI
    escape, a right-to-left override) that would break or disguise a line of the table or of a message."""
    if any(unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in text):
        return repr(text)
    return text


def quiet(message: str) -> None:
    """A ``say`` that says nothing."""


def progress(items: list, description: str, unit: str = "batch") -> Any:
    """``items`` with a tqdm progress bar on a terminal (as they are without tqdm or a terminal)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=description, unit=unit, disable=len(items) < 2 or not sys.stderr.isatty(), file=sys.stderr)


def counter(total: int, description: str, unit: str, disable: bool = False) -> Any:
    """A tqdm progress bar with ``update(n)``/``close()`` (silent when not on a terminal)."""
    try:
        from tqdm import tqdm
    except ImportError:
        disable = True
    if disable or total < 2 or not sys.stderr.isatty():
        return Silent()
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr)


class Silent:
    """A progress bar that shows nothing."""

    def update(self, n: int = 1) -> None: ...

    def close(self) -> None: ...
