"""The project's own errors. The library code (loaders, the training loop, the run folders) raises them; the
scripts turn them into one `error: ...` line on stderr and an exit status, and never show a traceback for them."""
from __future__ import annotations


class DataError(Exception):
    """A problem with the user's data or flags; the scripts print its message on one line and exit."""
