"""408 for a request whose body stops arriving.

uvicorn waits for a declared body for ever: a client that sends `Content-Length: 100` and 14
bytes held its connection, a handler and (for the eligibility check) an authenticated slot
until it gave up. Each body message must arrive within `seconds` of the previous one, and past
`total_seconds` the body must keep up MIN_BYTES_PER_SECOND on average (a byte every few seconds
is no upload; a phone's 5 MiB batch on a weak signal is); past either, the app
is told the client left (`http.disconnect`, which every handler already handles, marked
TIMED_OUT for one that answers the 408 itself), any other answer is replaced by a 408, and
the connection is closed. Once the body is complete, `receive` is passed through untouched.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_IDLE_SECONDS = 10.0
BODY_TOTAL_SECONDS = 60.0  # then the average rate must be at least:
MIN_BYTES_PER_SECOND = 1024
TIMED_OUT = "mdp.body_timed_out"  # set on the disconnect message a timeout makes


class BodyTimedOut(Exception):
    """Raised by a handler reading the body itself on a TIMED_OUT disconnect."""


class BodyTimeout:
    def __init__(
        self,
        app: ASGIApp,
        seconds: float = BODY_IDLE_SECONDS,
        total_seconds: float = BODY_TOTAL_SECONDS,
    ) -> None:
        self.app = app
        self.seconds = seconds
        self.total_seconds = total_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body_done = False
        timed_out: str | None = None  # which limit the body ran into
        answered_408 = False
        received = 0
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out, received
            if body_done:
                return await receive()
            idle_until = loop.time() + self.seconds
            rate_until = started + max(self.total_seconds, received / MIN_BYTES_PER_SECOND)
            try:
                async with asyncio.timeout_at(min(idle_until, rate_until)):
                    message = await receive()
            except TimeoutError:
                timed_out = (
                    f"nothing for {self.seconds:g} s"
                    if idle_until <= rate_until
                    else f"under {MIN_BYTES_PER_SECOND} bytes a second after"
                    f" {self.total_seconds:g} s"
                )
                return {"type": "http.disconnect", TIMED_OUT: timed_out}
            received += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal answered_408
            if message["type"] == "http.response.start" and message["status"] == 408:
                answered_408 = True  # the app's own 408
            if not timed_out or answered_408:
                await send(message)
            elif message["type"] == "http.response.start":
                await _send_timeout(send, timed_out)

        await self.app(scope, timed_receive, guarded_send)


async def _send_timeout(send: Send, why: str) -> None:
    body = json.dumps(
        {"error": "request_timeout", "detail": f"the request body stopped arriving ({why})"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 408,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
