"""The one exception type users see.

Every failure caused by input (a flag, a file, a model, a dataset) is raised as
:class:`IlaError` with a one-line message that says what to change. The CLI prints it as
``ila: error: <message>`` and exits with status 2; library callers can catch it.
"""

__all__ = ["IlaError"]


class IlaError(Exception):
    """A user-facing error whose message names the flag, file or value to change."""
