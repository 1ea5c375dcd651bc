"""The one exception type a stage raises for bad input (the CLI prints it as one line), and ``shown``: a value as
an error message may quote it, cut short."""

from __future__ import annotations

import reprlib
from typing import Any

SHOWN = reprlib.Repr()
SHOWN.maxstring = SHOWN.maxother = 60
SHOWN.maxlevel, SHOWN.maxlist, SHOWN.maxdict = 3, 4, 4


def shown(value: Any) -> str:
    """``repr(value)`` cut to about 60 characters (nested YAML anchors or a 200 KB string quote as a few)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    try:
        return SHOWN.repr(value)
    except (ValueError, RecursionError):
        return f"<a {type(value).__name__}>"


class GftError(Exception):
    """A user-facing error: bad config, bad data, missing model, unwritable folder.

    The CLI prints ``error: <message>`` and exits with status 2; no manifest is written.
    """
