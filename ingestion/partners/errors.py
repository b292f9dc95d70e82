"""Exceptions that name what was wrong and where."""

from __future__ import annotations

import paramiko
import psycopg2

# what an outage raises (SFTP or database away): the run is retried, the file imported then
TRANSIENT_ERRORS = (
    OSError,
    EOFError,
    paramiko.SSHException,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)


class UnreadableFileError(Exception):
    """The whole file cannot be read (encoding, layout, truncation): it is quarantined, alone."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)
