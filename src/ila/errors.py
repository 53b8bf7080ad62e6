"""The one exception type users see, the settings its messages name, and how a value shows.

Every failure caused by input (a setting, a file, a model, a dataset) is raised as
:class:`IlaError` with a one-line message that says what to change. The CLI prints it as
``ila: error: <message>`` and exits with status 2; library callers can catch it.

A message names the settings it is about as :class:`Setting` parts, never as text, so
each surface names them in its own words: ``str(exc)`` (the Python API) writes the
keyword an API function takes (``stage1_max_steps``), the CLI writes
``exc.render("flag")`` (``--stage1-max-steps``)::

    raise IlaError(setting, f": must be >= 1, got {value}")

A config setting is made by :func:`ila.config.setting` (``setting("stage1", "max_steps")``),
a command's own argument (``--output-dir`` / ``output_dir``) by :func:`argument`. A value
given by the user is shown through :func:`short_repr`, so a message stays one short line
whatever the value (a YAML value with nested aliases can expand to gigabytes).
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["IlaError", "Parts", "Setting", "argument", "render", "require", "short_repr"]

Vocabulary = Literal["python", "flag"]


@dataclass(frozen=True)
class Setting:
    """A setting a message names: ``keyword`` is its name in the Python API and ``flag``
    on the command line ('' for the keyword with dashes); ``section`` is its config
    section ('' for a command's own argument such as ``output_dir``), ``name`` its field."""

    section: str
    name: str
    keyword: str
    flag: str = ""

    def named(self, vocabulary: Vocabulary) -> str:
        """``stage1_max_steps`` (``"python"``) or ``--stage1-max-steps`` (``"flag"``)."""
        if vocabulary == "flag":
            return self.flag or "--" + self.keyword.replace("_", "-")
        return self.keyword


def argument(name: str, *, flag: str = "") -> Setting:
    """A command's own argument that is no config setting (``output_dir``, ``resume``,
    ``scorer``, ...), by its keyword (and its ``flag`` where that is not the keyword with
    dashes)."""
    return Setting("", name, name, flag)


Parts = tuple["str | Setting", ...]
"""A message, or a piece of one, as text and :class:`Setting` values."""


def render(parts: Parts, vocabulary: Vocabulary = "python") -> str:
    """``parts`` joined, each setting named in ``vocabulary``."""
    return "".join(p.named(vocabulary) if isinstance(p, Setting) else p for p in parts)


class IlaError(Exception):
    """A user-facing error whose message names the setting, file or value to change.

    ``parts`` are text and :class:`Setting` values, joined in order; ``str(exc)`` names
    each setting by its Python keyword, :meth:`render` by the vocabulary asked for.
    """

    def __init__(self, *parts: str | Setting) -> None:
        super().__init__(*parts)
        self.parts = parts

    @property
    def settings(self) -> tuple[Setting, ...]:
        """The settings the message names, in order."""
        return tuple(p for p in self.parts if isinstance(p, Setting))

    def render(self, vocabulary: Vocabulary = "python") -> str:
        """The message with each setting named in ``vocabulary``."""
        return render(self.parts, vocabulary)

    def __str__(self) -> str:
        return self.render("python")


def require(ok: bool, setting: Setting, *message: str | Setting) -> None:
    """Raise ``IlaError("<setting>: <message>")`` unless ``ok``."""
    if not ok:
        raise IlaError(setting, ": ", *message)


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
