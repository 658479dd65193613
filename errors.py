"""The project's own errors. The library code (loaders, the training loop, the run folders) raises them; the
scripts turn them into one `error: ...` line on stderr and their exit status (cli.exits_on_error), and never show a
traceback for them."""
from __future__ import annotations


class ProjectError(Exception):
    """An error whose message the scripts print on one line before they exit with `status`."""

    status = 2


class DataError(ProjectError):
    """A problem with the user's data or flags (exit status 2)."""


class RunStopped(ProjectError):
    """A run that stopped once it had begun: a full disk, an unreadable image or a non-finite loss (exit status 3),
    Ctrl-C (130) or SIGTERM (143). The message says what was kept and how to go on."""

    def __init__(self, message: str, status: int = 3):
        super().__init__(message)
        self.status = status
