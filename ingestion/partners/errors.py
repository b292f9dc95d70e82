"""Exceptions that name what was wrong and where."""

from __future__ import annotations


class UnreadableFileError(Exception):
    """The whole file cannot be read (encoding, layout, truncation): it is quarantined, alone."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)
