"""SFTP access to inboxes: our own server for push partners, theirs for pull partners."""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import os
import posixpath
import re
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paramiko

from ingestion.partners.config import PartnerConfig, RemoteLocation
from mdp.settings import Settings

log = logging.getLogger(__name__)

MARKER_SUFFIXES = (".done", ".ok")
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".filepart")


class TransportConfigError(Exception):
    """A pull partner's connection settings are missing from the environment."""


@dataclass(frozen=True)
class SftpEndpoint:
    host: str
    port: int
    username: str
    password: str | None = None
    key_path: str | None = None

    def __repr__(self) -> str:  # never print the secret
        return f"SftpEndpoint({self.username}@{self.host}:{self.port})"


def platform_endpoint(settings: Settings) -> SftpEndpoint:
    return SftpEndpoint(
        settings.sftp_host, settings.sftp_port, settings.sftp_username, settings.sftp_password
    )


def _required_env(name: str, partner_id: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise TransportConfigError(f"{partner_id}: environment variable {name} is not set")
    return value


def pull_endpoint(partner_id: str, location: RemoteLocation) -> SftpEndpoint:
    port = (
        int(os.environ.get(location.port_env, location.port))
        if location.port_env
        else location.port
    )
    host = _required_env(location.host_env, partner_id)
    # "host:port" in the host variable names the port too (as a config without port_env
    # is pointed elsewhere, e.g. at the sandbox's stand-in server)
    if (found := re.fullmatch(r"([^:\[\]]+|\[[^\]]+\]):([0-9]{1,5})", host)) is not None:
        host, port = found.group(1).strip("[]"), int(found.group(2))
    return SftpEndpoint(
        host=host,
        port=port,
        username=_required_env(location.username_env, partner_id),
        password=_required_env(location.password_env, partner_id)
        if location.password_env
        else None,
        key_path=_required_env(location.key_env, partner_id) if location.key_env else None,
    )


@dataclass(frozen=True)
class InboxLocation:
    """Where a partner's files arrive, and where its error reports go back."""

    endpoint: SftpEndpoint
    inbox_dir: str
    removes_after_import: bool  # our own inbox is emptied; a partner's server is left as is


def inbox_location(config: PartnerConfig, settings: Settings) -> InboxLocation:
    inbound = config.inbound
    if inbound.transport == "sftp_pull":
        assert inbound.location is not None
        return InboxLocation(
            pull_endpoint(config.partner_id, inbound.location), inbound.location.path, False
        )
    return InboxLocation(platform_endpoint(settings), f"/{config.partner_id}/inbound", True)


def errors_dir(config: PartnerConfig) -> str:
    return f"/{config.partner_id}/errors"


@contextlib.contextmanager
def sftp_session(endpoint: SftpEndpoint, timeout: float = 15.0) -> Iterator[paramiko.SFTPClient]:
    client = paramiko.SSHClient()
    # Sandbox and partner servers are pinned by address; host keys are managed by ops.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError as exc:
        # the same type (an outage stays retryable), with where: a bare "[Errno 111]
        # Connection refused" in a failed sensor tick named no server
        where = f"SFTP server {endpoint.host}:{endpoint.port} unreachable: {exc.strerror or exc}"
        raise (type(exc)(where) if exc.errno is None else type(exc)(exc.errno, where)) from exc
    try:
        # SSH's handshake is small writes that wait on replies: with Nagle's algorithm each
        # also waited for a delayed ACK, ~90 ms per connection (measured), ~6 ms without
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(
            endpoint.host,
            port=endpoint.port,
            sock=sock,
            username=endpoint.username,
            password=endpoint.password,
            key_filename=endpoint.key_path,
            timeout=timeout,
            banner_timeout=timeout,
            auth_timeout=timeout,
            allow_agent=False,
            look_for_keys=False,
        )
    except BaseException:
        client.close()
        sock.close()
        raise
    try:
        sftp = client.open_sftp()
        sftp.get_channel().settimeout(timeout * 4)
        yield sftp
    finally:
        client.close()


@dataclass(frozen=True)
class RemoteFile:
    path: str
    name: str
    size: int
    mtime: float


def list_inbox(
    sftp: paramiko.SFTPClient, directory: str, pattern: str
) -> tuple[list[RemoteFile], set[str]]:
    """Files matching the partner's pattern, and the names that have a completion marker."""
    files: list[RemoteFile] = []
    names: set[str] = set()
    try:
        entries = sftp.listdir_attr(directory)
    except FileNotFoundError:
        # a partner added to the configs before its home was made (`mdp stack up`): nothing
        # to import yet, and the other partners' inboxes go on
        log.warning("%s does not exist (yet): no files to import from it", directory)
        return [], set()
    for entry in entries:
        if entry.st_mode is not None and not stat.S_ISREG(entry.st_mode):
            continue
        names.add(entry.filename)
        name = entry.filename
        if name.startswith(".") or name.endswith(MARKER_SUFFIXES + IGNORED_SUFFIXES):
            continue
        if not fnmatch.fnmatch(name, pattern):
            log.warning(
                "%s: %s does not match the partner's filename_pattern %r; left in place",
                directory,
                name,
                pattern,
            )
            continue
        files.append(
            RemoteFile(
                posixpath.join(directory, name),
                name,
                entry.st_size or 0,
                float(entry.st_mtime or 0),
            )
        )
    marked = {n for n in (f.name for f in files) if any(n + s in names for s in MARKER_SUFFIXES)}
    return files, marked


def complete_files(
    sftp: paramiko.SFTPClient, directory: str, pattern: str, settle_seconds: float
) -> list[RemoteFile]:
    """Files that are complete: a marker file, or size and mtime unchanged across two polls."""
    first, marked = list_inbox(sftp, directory, pattern)
    unmarked = [f for f in first if f.name not in marked]
    ready = [f for f in first if f.name in marked]
    if unmarked:
        time.sleep(settle_seconds)
        second = {f.name: f for f in list_inbox(sftp, directory, pattern)[0]}
        for before in unmarked:
            after = second.get(before.name)
            if (
                after is not None
                and (after.size, after.mtime) == (before.size, before.mtime)
                and after.size > 0
            ):
                ready.append(after)
            elif after is not None and after.size == 0 and before.size == 0:
                ready.append(after)  # an empty file that stays empty is complete (and quarantined)
    return sorted(ready, key=lambda f: (f.mtime, f.name))


def remove_with_markers(sftp: paramiko.SFTPClient, remote: RemoteFile) -> None:
    """Remove an imported file and its markers, unless it changed since it was listed: an
    upload that stalled past the settle window and then went on. That file stays, and the
    next poll imports it whole (other bytes: a new import, whose rows replace these)."""
    try:
        now = sftp.stat(remote.path)
    except FileNotFoundError:
        return
    if (now.st_size or 0) != remote.size or float(now.st_mtime or 0) != remote.mtime:
        log.warning(
            "%s changed while it was imported (still being written?): left for the next poll",
            remote.path,
        )
        return
    for path in (remote.path, *(remote.path + s for s in MARKER_SUFFIXES)):
        with contextlib.suppress(FileNotFoundError, IOError):
            sftp.remove(path)


def upload_file(sftp: paramiko.SFTPClient, local_path: str, remote_dir: str, name: str) -> str:
    """Upload under a temporary name, then rename, so the partner never sees half a file."""
    target = posixpath.join(remote_dir, name)
    temp = posixpath.join(remote_dir, f".{name}.part")
    sftp.put(local_path, temp)
    with contextlib.suppress(IOError):
        sftp.remove(target)
    sftp.rename(temp, target)
    return target
