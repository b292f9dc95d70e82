"""Immutable archive of the original bytes of every file received, with its SHA-256."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mdp.settings import private_dir

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchivedFile:
    path: Path
    sha256: str
    size: int


def archive_stream(
    source: BinaryIO,
    archive_dir: Path,
    partner_id: str,
    filename: str,
    received_at: dt.datetime,
    on_progress: Callable[[int], None] | None = None,
) -> ArchivedFile:
    """Copy a stream into `{partner}/{yyyy}/{mm}/{dd}/{filename}` read-only, hashing as it goes.

    An existing archived file is never overwritten: a different file with the same name gets
    its checksum appended; identical bytes under the same name are the same archive entry.
    """
    private_dir(archive_dir)  # the folders below need not be: nobody else can pass this one
    day_dir = (
        archive_dir / partner_id / f"{received_at:%Y}" / f"{received_at:%m}" / f"{received_at:%d}"
    )
    day_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp_name = tempfile.mkstemp(dir=day_dir, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := source.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
                if on_progress:
                    on_progress(size)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        target = day_dir / filename
        if target.exists() and _sha256_of(target) != sha:
            stem, dot, ext = filename.rpartition(".")
            target = day_dir / (f"{stem}__{sha[:12]}.{ext}" if dot else f"{filename}__{sha[:12]}")
        if target.exists():
            os.unlink(tmp_name)
        else:
            os.chmod(tmp_name, 0o400)
            os.replace(tmp_name, target)
        return ArchivedFile(target, sha, size)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
