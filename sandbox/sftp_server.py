"""A local SFTP server (asyncssh) with password users, each chrooted to a folder of one root.

The same server stands in for our partner-facing inbox (a platform user sees the whole root,
each partner sees only `<root>/<partner_id>`) and for a pull partner's own server.

Run it in the foreground with
`python -m sandbox.sftp_server --root DIR --port N --users-file users.json --host-key FILE`,
or in-process with `SftpServerThread` (tests).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TypedDict

import asyncssh

logger = logging.getLogger("sandbox.sftp_server")  # not __main__ under -m

PARTNER_FOLDERS = ("inbound", "errors", "reports")
_WRITING = asyncssh.FXF_WRITE | asyncssh.FXF_APPEND


class _Uploads:
    """The files some session holds open for writing, shared by one server's sessions."""

    def __init__(self) -> None:
        self._writers: dict[bytes, set[int]] = {}

    def begin(self, local: bytes, session: int) -> None:
        self._writers.setdefault(local, set()).add(session)

    def end(self, local: bytes, session: int) -> None:
        writers = self._writers.get(local)
        if writers is not None:
            writers.discard(session)
            if not writers:
                del self._writers[local]

    def written_by_another(self, local: bytes, session: int) -> bool:
        return bool(self._writers.get(local, set()) - {session})


class _UploadAwareSftp(asyncssh.SFTPServer):
    """A file open for writing is not listed to the other sessions until it is closed.

    An inbox reader that saw a stalled upload (the same size across its two polls) imported
    half a file, then deleted it under the writer, whose remaining bytes went nowhere. Real
    inboxes do the same with a temporary name renamed on close; hiding the open file keeps
    the name the partner's client uses for everything else (stat, setstat, resume)."""

    def __init__(self, chan: asyncssh.SSHServerChannel, chroot: bytes, uploads: _Uploads):
        super().__init__(chan, chroot=chroot)
        self._uploads = uploads
        self._open_for_writing: dict[int, bytes] = {}  # id(file object) -> local path

    def _local(self, path: bytes) -> bytes:
        return os.path.normpath(self.map_path(path))

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> object:
        file_obj = super().open(path, pflags, attrs)
        if pflags & _WRITING:
            local = self._local(path)
            self._uploads.begin(local, id(self))
            self._open_for_writing[id(file_obj)] = local
        return file_obj

    def close(self, file_obj: object) -> None:
        try:
            super().close(file_obj)
        finally:  # also for the handles a vanished client left: the session closes them
            local = self._open_for_writing.pop(id(file_obj), None)
            if local is not None:
                self._uploads.end(local, id(self))

    async def scandir(self, path: bytes) -> AsyncIterator[asyncssh.SFTPName]:
        folder = self._local(path)
        async for entry in super().scandir(path):
            name = (
                entry.filename if isinstance(entry.filename, bytes) else os.fsencode(entry.filename)
            )
            if not self._uploads.written_by_another(os.path.join(folder, name), id(self)):
                yield entry


class SftpUser(TypedDict):
    password: str
    home: str  # relative to the server root; "" or "." is the whole root


class SftpConfigError(ValueError):
    """A users file or user entry the server cannot run with."""


def ensure_partner_home(root: Path, partner_id: str) -> Path:
    """Create `<root>/<partner_id>/{inbound,errors,reports}` and return the partner's home."""
    home = Path(root) / partner_id
    for folder in PARTNER_FOLDERS:
        (home / folder).mkdir(parents=True, exist_ok=True)
    return home


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """Read the ed25519 host key at `path`, creating it (mode 600) the first time.

    Keeping the key on disk lets clients that pinned it keep connecting across restarts.
    """
    path = Path(path)
    if path.exists():
        return asyncssh.read_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519", comment="mdp-sandbox-sftp")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return key


def load_users(path: Path) -> dict[str, SftpUser]:
    """Read `{username: {"password": ..., "home": ...}}` from a JSON file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise SftpConfigError(f"{path}: cannot read users: {exc}") from None
    if not isinstance(raw, dict):
        raise SftpConfigError(f"{path}: expected an object of username -> {{password, home}}")
    return {str(name): _checked_user(path, str(name), spec) for name, spec in raw.items()}


def _checked_user(source: object, name: str, spec: object) -> SftpUser:
    if not isinstance(spec, Mapping) or not isinstance(spec.get("password"), str):
        raise SftpConfigError(f"{source}: user {name!r} needs a string 'password'")
    home = spec.get("home", "")
    if not isinstance(home, str):
        raise SftpConfigError(f"{source}: user {name!r}: 'home' must be a string")
    return SftpUser(password=spec["password"], home=home)


def _home_dir(root: Path, name: str, home: str) -> Path:
    resolved_root = root.resolve()
    resolved = (resolved_root / home).resolve() if home not in ("", ".") else resolved_root
    if resolved != resolved_root and resolved_root not in resolved.parents:
        raise SftpConfigError(f"user {name!r}: home {home!r} is outside the server root {root}")
    return resolved


class _SshServer(asyncssh.SSHServer):
    """One instance per connection: password checks and connection logging."""

    def __init__(
        self, passwords: Mapping[str, str], connections: set[asyncssh.SSHServerConnection]
    ):
        self._passwords = passwords
        self._connections = connections
        self._conn: asyncssh.SSHServerConnection | None = None
        self._peer = "?"

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._connections.add(conn)
        peer = conn.get_extra_info("peername")
        self._peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        logger.info("connection from %s", self._peer)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._connections.discard(self._conn)
        if exc:
            logger.info("connection from %s closed: %s", self._peer, exc)
        else:
            logger.info("connection from %s closed", self._peer)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        expected = self._passwords.get(username)
        ok = expected is not None and hmac.compare_digest(
            expected.encode("utf-8"), password.encode("utf-8")
        )
        logger.info(
            "password auth for %r from %s %s", username, self._peer, "ok" if ok else "refused"
        )
        return ok


class SftpServer:
    """The asyncssh listener for one root and its users; runs on the caller's event loop."""

    def __init__(
        self,
        root: Path,
        users: Mapping[str, Mapping[str, str]],
        host: str = "127.0.0.1",
        port: int = 0,
        host_key_path: Path | None = None,
        users_file: Path | None = None,
    ):
        self.root = Path(root)
        self.host = host
        self.port = port
        self._passwords: dict[str, str] = {}  # shared with every connection's _SshServer
        self._homes: dict[str, Path] = {}
        self._use_users(users)
        # re-read when it changes: a partner added while the server runs can log in
        self._users_file = users_file
        self._users_mtime = users_file.stat().st_mtime_ns if users_file else None
        self._host_key_path = host_key_path
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._connections: set[asyncssh.SSHServerConnection] = set()
        self._uploads = _Uploads()

    def _use_users(self, users: Mapping[str, Mapping[str, str]]) -> None:
        checked = {name: _checked_user("users", name, spec) for name, spec in users.items()}
        homes = {name: _home_dir(self.root, name, spec["home"]) for name, spec in checked.items()}
        self._passwords.clear()
        self._passwords.update({name: spec["password"] for name, spec in checked.items()})
        self._homes.clear()
        self._homes.update(homes)

    def _reload_users(self) -> None:
        if self._users_file is None:
            return
        try:
            mtime = self._users_file.stat().st_mtime_ns
            if mtime == self._users_mtime:
                return
            self._use_users(load_users(self._users_file))
        except (OSError, SftpConfigError) as exc:
            logger.error("users file not reloaded, the previous users stay: %s", exc)
            return
        self._users_mtime = mtime
        for home in self._homes.values():
            home.mkdir(parents=True, exist_ok=True)
        logger.info("users reloaded from %s", self._users_file)

    async def start(self) -> int:
        """Start listening; returns the bound port."""
        self.root.mkdir(parents=True, exist_ok=True)
        for home in self._homes.values():
            home.mkdir(parents=True, exist_ok=True)
        if self._host_key_path is not None:
            host_key = load_or_create_host_key(self._host_key_path)
        else:
            host_key = asyncssh.generate_private_key("ssh-ed25519")
        self._acceptor = await asyncssh.listen(
            self.host,
            self.port,
            server_factory=self._new_connection,
            server_host_keys=[host_key],
            sftp_factory=self._sftp_session,
            allow_scp=False,
            reuse_address=True,
        )
        self.port = self._acceptor.get_port()
        return self.port

    def _new_connection(self) -> _SshServer:
        self._reload_users()
        return _SshServer(self._passwords, self._connections)

    def _sftp_session(self, chan: asyncssh.SSHServerChannel) -> asyncssh.SFTPServer:
        username = chan.get_extra_info("username")
        home = self._homes[username]
        logger.info("sftp session for %r chrooted to %s", username, home)
        return _UploadAwareSftp(chan, os.fsencode(home), self._uploads)

    async def stop(self) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        connections = list(self._connections)
        for conn in connections:
            conn.close()
        for conn in connections:
            await conn.wait_closed()


class SftpServerThread:
    """An `SftpServer` on its own event loop in a daemon thread, for synchronous callers.

    `start()` blocks until the server listens and returns its port; `stop()` closes the
    listener and any open sessions. Also a context manager.
    """

    def __init__(
        self,
        root: Path,
        users: Mapping[str, Mapping[str, str]],
        host: str = "127.0.0.1",
        port: int = 0,
        host_key_path: Path | None = None,
        users_file: Path | None = None,
    ):
        self.server = SftpServer(
            root, users, host=host, port=port, host_key_path=host_key_path, users_file=users_file
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._stop_requested: asyncio.Event | None = None

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    def start(self, timeout: float = 30.0) -> int:
        if self._thread is not None:
            raise RuntimeError("SftpServerThread already started")
        self._thread = threading.Thread(target=self._run, name="sandbox-sftp", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"SFTP server did not start listening within {timeout}s")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self.server.port

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop_requested = asyncio.Event()
        try:
            await self.server.start()
        except BaseException as exc:  # handed to the thread that called start()
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        await self._stop_requested.wait()
        await self.server.stop()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        if self._loop is not None and self._stop_requested is not None:
            self._loop.call_soon_threadsafe(self._stop_requested.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> SftpServerThread:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def _serve_until_signalled(server: SftpServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await server.start()
    print(f"listening on {server.host}:{server.port}", flush=True)
    await stop.wait()
    logger.info("stopping")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandbox.sftp_server", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="folder served to the users")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--users-file", type=Path, required=True, help="JSON: {user: {password, home}}"
    )
    parser.add_argument(
        "--host-key", type=Path, required=True, help="ed25519 key, created if absent"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # asyncssh's own INFO lines repeat ours at a much higher volume
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        server = SftpServer(
            args.root,
            load_users(args.users_file),
            args.host,
            args.port,
            args.host_key,
            users_file=args.users_file,
        )
        asyncio.run(_serve_until_signalled(server))
    except SftpConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
