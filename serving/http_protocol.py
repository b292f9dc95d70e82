"""uvicorn's HTTP protocol with a deadline on the request head (slowloris).

uvicorn waits for ever for a request line and headers: a connection that sends nothing, or a
few header bytes now and then, holds a socket and a file descriptor until the client gives
up, and a few thousand such clients use up the server's descriptors. Here a request head (its
line and headers) must be complete within HEAD_SECONDS of its first byte, and a new
connection must send its first byte within HEAD_SECONDS; past that the connection is closed,
with a 408 if part of a head had come (as Apache and nginx do). The body has its own limits
(`serving.body_timeout`), and an idle keep-alive connection uvicorn's.

One sweep a second checks every connection's pending head: a timer armed and cancelled for
each request would cost the event loop on every request, the sweep costs it once a second.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD_SECONDS = 10.0
SWEEP_SECONDS = 1.0
_BODY = json.dumps(
    {
        "error": "request_timeout",
        "detail": f"the request line and headers did not arrive within {HEAD_SECONDS:g} s",
    }
).encode()
HEAD_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_BODY), _BODY)
)


class HeadDeadlineProtocol(HttpToolsProtocol):
    """`uvicorn --http serving.http_protocol:HeadDeadlineProtocol`."""

    head_seconds = HEAD_SECONDS
    sweep_seconds = SWEEP_SECONDS
    # when the pending head began (loop time); None while no head is pending
    head_since: float | None = None
    head_started = False  # a byte of the pending head has come

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_since, self.head_started = self.loop.time(), False
        _start_sweeping(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_since, self.head_started = self.loop.time(), True

    def on_headers_complete(self) -> None:
        self.head_since = None
        super().on_headers_complete()

    def head_timed_out(self) -> None:
        self.head_since = None
        if self.transport.is_closing():
            return
        if self.head_started:
            self.transport.write(HEAD_TIMEOUT_RESPONSE)
        self.transport.close()


def _start_sweeping(protocol: HeadDeadlineProtocol) -> None:
    """One sweep per server (its connections are one set, shared by its protocols)."""
    state = protocol.server_state
    if not getattr(state, "head_sweep_started", False):
        state.head_sweep_started = True  # type: ignore[attr-defined]
        kind = type(protocol)
        protocol.loop.call_later(kind.sweep_seconds, _sweep, kind, protocol.loop, state.connections)


def _sweep(
    kind: type[HeadDeadlineProtocol],
    loop: asyncio.AbstractEventLoop,
    connections: set[asyncio.Protocol],
) -> None:
    deadline = loop.time() - kind.head_seconds
    for protocol in list(connections):
        since = getattr(protocol, "head_since", None)
        if since is not None and since < deadline:
            protocol.head_timed_out()  # type: ignore[attr-defined]
    loop.call_later(kind.sweep_seconds, _sweep, kind, loop, connections)
