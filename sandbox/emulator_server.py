"""What the provider emulators share: a uvicorn server in a thread, injected faults, a request log.

`EmulatorServer(app).start()` serves a Starlette app on a free port of 127.0.0.1 from a daemon
thread and returns its base URL; `stop()` shuts it down (also a context manager). `Faults` holds
the failures an emulator injects on demand; the owning state mutates it under its own lock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from types import FrameType, TracebackType
from typing import Any, NamedTuple

import uvicorn
from starlette.applications import Starlette


class RequestRecord(NamedTuple):
    """One request an emulator answered (`user_id` is None when it could not tell whose)."""

    at: float  # the state's clock, Unix seconds
    method: str
    path: str
    query: str
    user_id: str | None
    status: int


class FaultSettingsError(ValueError):
    """A fault payload with an unknown key or a value of the wrong type."""


@dataclass
class Faults:
    """Failures to inject into the provider API (not into /_sandbox admin routes).

    - error burst: the next `error_burst` requests answer `error_status` (default 503);
    - timeouts: the next `delay_count` requests are held `delay_seconds` before answering;
    - outage: every request answers 503 until `outage_until` (Unix seconds; inf = until cleared).
    """

    error_burst: int = 0
    error_status: int = 503
    delay_count: int = 0
    delay_seconds: float = 0.0
    outage_until: float | None = None

    def take(self, now: float) -> tuple[float, int | None]:
        """Consume one request's share: (seconds to hold it, status to fail it with or None)."""
        delay = 0.0
        if self.delay_count > 0:
            self.delay_count -= 1
            delay = self.delay_seconds
        if self.outage_until is not None:
            if now < self.outage_until:
                return delay, 503
            self.outage_until = None
        if self.error_burst > 0:
            self.error_burst -= 1
            return delay, self.error_status
        return delay, None

    def update(self, settings: Mapping[str, Any], now: float) -> None:
        """Apply an admin payload; keys as in `as_dict` plus `outage`, `outage_seconds`, `clear`."""
        unknown = set(settings) - FAULT_KEYS
        if unknown:
            raise FaultSettingsError(f"unknown fault settings: {sorted(unknown)}")
        new = Faults() if settings.get("clear") else replace(self)
        if "error_burst" in settings:
            new.error_burst = _int(settings, "error_burst")
        if "error_status" in settings:
            new.error_status = _int(settings, "error_status")
        if "delay_count" in settings:
            new.delay_count = _int(settings, "delay_count")
        if "delay_seconds" in settings:
            new.delay_seconds = _float(settings, "delay_seconds")
        if "outage" in settings:
            new.outage_until = math.inf if settings["outage"] else None
        if settings.get("outage_seconds") is not None:
            new.outage_until = now + _float(settings, "outage_seconds")
        if settings.get("outage_until") is not None:
            new.outage_until = _float(settings, "outage_until")
        # assigned only once everything validated: a bad payload changes nothing
        self.__dict__.update(new.__dict__)

    def as_dict(self) -> dict[str, Any]:
        until = self.outage_until
        return {
            "error_burst": self.error_burst,
            "error_status": self.error_status,
            "delay_count": self.delay_count,
            "delay_seconds": self.delay_seconds,
            "outage": until is not None,
            "outage_until": None if until is None or math.isinf(until) else until,
        }


FAULT_KEYS = frozenset(
    {
        "error_burst",
        "error_status",
        "delay_count",
        "delay_seconds",
        "outage",
        "outage_seconds",
        "outage_until",
        "clear",
    }
)


def _int(settings: Mapping[str, Any], key: str) -> int:
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultSettingsError(f"{key} must be a non-negative integer, got {value!r}")
    return value


def _float(settings: Mapping[str, Any], key: str) -> float:
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise FaultSettingsError(f"{key} must be a non-negative number, got {value!r}")
    return float(value)


def string_list(settings: Mapping[str, Any], key: str) -> list[str]:
    """`settings[key]` as a list of user ids (empty when absent)."""
    values = settings.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise FaultSettingsError(f"{key} must be a list of user ids")
    return values


def user_days(settings: Mapping[str, Any], key: str) -> list[tuple[str, dt.date]]:
    """`settings[key]` as (user id, day) pairs from [{"user_id": ..., "date": "YYYY-MM-DD"}]."""
    values = settings.get(key, [])
    if not isinstance(values, list):
        raise FaultSettingsError(f'{key} must be a list of {{"user_id", "date"}}')
    pairs = []
    for entry in values:
        try:
            pairs.append((str(entry["user_id"]), dt.date.fromisoformat(entry["date"])))
        except (KeyError, TypeError, ValueError):
            raise FaultSettingsError(
                f'{key} entries need "user_id" and an ISO "date", got {entry!r}'
            ) from None
    return pairs


class EmulatorServer:
    """Serve `app` with uvicorn from a daemon thread; `start()` returns the base URL."""

    def __init__(self, app: Starlette, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self.host = host
        self.port = port
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        if self._thread is not None:
            raise RuntimeError("EmulatorServer already started")
        # binding here resolves port 0 before the thread starts and queues early connections
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name="sandbox-emulator",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"emulator on {self.base_url} exited during startup")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"emulator did not start on {self.base_url} within {timeout}s")
            time.sleep(0.01)
        return self.base_url

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(timeout)
        self._server = None
        self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_cli(
    name: str,
    build: Callable[[argparse.Namespace], Starlette],
    argv: list[str] | None,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    on_listen: Callable[[Starlette, str], None] | None = None,
) -> None:
    """`python -m sandbox.<name> --port N`: serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(prog=f"python -m sandbox.{name}")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    add_arguments(parser)
    args = parser.parse_args(argv)
    app = build(args)
    server = EmulatorServer(app, host=args.host, port=args.port)
    base_url = server.start()
    if on_listen is not None:
        on_listen(app, base_url)
    print(f"listening on {server.host}:{server.port}", flush=True)
    stopped = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopped.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stopped.wait(0.5):
            pass
    finally:
        server.stop()
