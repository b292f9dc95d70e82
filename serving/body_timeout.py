"""408 for a request whose body stops arriving.

uvicorn waits for a declared body for ever: a client that sends `Content-Length: 100` and 14
bytes held its connection, a handler and (for the eligibility check) an authenticated slot
until it gave up. Each body message must arrive within `seconds` of the previous one, and the
whole body within `total_seconds` (a byte every few seconds is no upload); past that, the app
is told the client left (`http.disconnect`, which every handler already handles, marked
TIMED_OUT for one that answers the 408 itself), any other answer is replaced by a 408, and
the connection is closed. Once the body is complete, `receive` is passed through untouched.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_IDLE_SECONDS = 10.0
BODY_TOTAL_SECONDS = 60.0  # a 16 MiB Garmin push, at a slow partner's pace
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
        timed_out = False
        answered_408 = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_seconds

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if body_done:
                return await receive()
            try:
                async with asyncio.timeout_at(min(loop.time() + self.seconds, deadline)):
                    message = await receive()
            except TimeoutError:
                timed_out = True
                return {"type": "http.disconnect", TIMED_OUT: True}
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
                await _send_timeout(send, self.seconds)

        await self.app(scope, timed_receive, guarded_send)


async def _send_timeout(send: Send, seconds: float) -> None:
    body = json.dumps(
        {
            "error": "request_timeout",
            "detail": f"the request body stopped arriving (nothing for {seconds:g} s)",
        }
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
