"""The names ``data.format`` accepts, below both ``config`` and ``data``.

``config`` checks a format name when a run is loaded, so a typo is one of the config errors reported
together before any work; ``data`` (which sits above ``config``) registers the format classes under
these names and resolves them. Keeping the names here lets ``config`` check them without importing
``data``; a unit test holds the list equal to the registry's names.
"""

from __future__ import annotations

import difflib
import re

# The registered formats of llmft.data (formats.py, instruct.py, chat.py).
BUILTIN_FORMATS = ("alpaca", "chat", "classification", "grammar", "quotes", "text")

# User code: ``data.format: my_module:build_fn``.
_PLUGIN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def format_problem(name: str) -> str | None:
    """A one-line problem for an unknown format name, or None if it is built in or names user code."""
    if name in BUILTIN_FORMATS or _PLUGIN.match(name):
        return None
    known = sorted(BUILTIN_FORMATS)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" - did you mean '{close[0]}'?" if close else ""
    return (
        f"data.format: unknown format {name!r}{hint} (known: {', '.join(known)}; "
        f"or your own as module:function)"
    )
