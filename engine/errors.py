"""Exceptions shared by the engine, the CLI and the editor."""
from __future__ import annotations


class LoomError(Exception):
    """An error with a message meant for the user, not a programming error."""


class WorkflowFileError(LoomError):
    """A workflow file that cannot be read: bad JSON, unknown format, newer version."""


class Cancelled(BaseException):
    """Raised inside a run when the user cancelled it.

    A ``BaseException`` so that ``except Exception`` blocks in node code do
    not swallow it (ComfyUI does the same for its interrupt).
    """


class CancelToken:
    """Set from any thread; checked before every node and at every progress report."""

    def __init__(self):
        self._cancelled = False

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def check(self) -> None:
        if self._cancelled:
            raise Cancelled()
