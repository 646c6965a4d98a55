"""Errors a caller can fix, reported as one line (never a traceback)."""

from __future__ import annotations


class ProjectError(Exception):
    """A failure reported to the caller as one line: a step prints ``error: <message>``, the
    gateway answers with the message."""


class ParameterError(ProjectError):
    """A parameter's value is not acceptable; the message starts with its name."""

    def __init__(self, name: str, raw: str, reason: str):
        super().__init__(f"{name}={raw!r}: {reason}")
        self.name = name


class DataError(ProjectError):
    """The data cannot be used as it is (empty, one class, unreadable, too few rows, ...)."""


def first_line(err: BaseException | str, limit: int | None = None) -> str:
    """The first line of an error's message (its type's name if it has none), for one-line reports."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line[:limit] if limit else line
