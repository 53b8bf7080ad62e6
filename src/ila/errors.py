"""The one exception type users see, and how its messages show a value.

Every failure caused by input (a flag, a file, a model, a dataset) is raised as
:class:`IlaError` with a one-line message that says what to change. The CLI prints it as
``ila: error: <message>`` and exits with status 2; library callers can catch it.
A value given by the user is shown through :func:`short_repr`, so a message stays one
short line whatever the value (a YAML value with nested aliases can expand to gigabytes).
"""

import reprlib
from typing import Any

__all__ = ["IlaError", "short_repr"]


class IlaError(Exception):
    """A user-facing error whose message names the flag, file or value to change."""


_SHORT = reprlib.Repr()
_SHORT.maxlevel = 2
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4


def short_repr(value: Any) -> str:
    """``repr(value)`` cut to about 60 characters per item, 4 items per container and 2
    levels of nesting (``reprlib``), without building the full repr first."""
    try:
        return _SHORT.repr(value)
    except ValueError:  # an int of more digits than Python converts to text
        return f"<{type(value).__name__} of about {int(value.bit_length() * 0.30103)} digits>"
