"""408 for a request whose body stops arriving.

uvicorn waits for a declared body for ever: a client that sends `Content-Length: 100` and 14
bytes held its connection, a handler and (for the eligibility check) an authenticated slot
until it gave up. Each body message must arrive within `seconds` of the previous one, and past
`total_seconds` the body must keep up MIN_BYTES_PER_SECOND on average (a byte every few seconds
is no upload; a phone's 5 MiB batch on a weak signal is); past either, the app
is told the client left (`http.disconnect`, which every handler already handles, marked
TIMED_OUT for one that answers the 408 itself), any other answer is replaced by a 408, and
the connection is closed. Once the body is complete, `receive` is passed through untouched.

`BodyTimeout` does this for every route as middleware; the eligibility check, which skips
the middleware stack (see `serving.app.EligibilityService`), reads its body through a
`BodyTimer` itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import types
from collections.abc import Coroutine, Generator
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_IDLE_SECONDS = 10.0
BODY_TOTAL_SECONDS = 60.0  # then the average rate must be at least:
MIN_BYTES_PER_SECOND = 1024
TIMED_OUT = "mdp.body_timed_out"  # set on the disconnect message a timeout makes
BODY_TIMER = "mdp.body_timer"  # the request's BodyTimer, in the scope the middleware passes on


class BodyTimedOut(Exception):
    """Raised by a handler reading the body itself on a TIMED_OUT disconnect."""


class BodyTimer:
    """One request's body clock: `receive` passes each body message through, or answers the
    TIMED_OUT disconnect once the body missed a limit (`timed_out` says which)."""

    def __init__(
        self,
        receive: Receive,
        seconds: float = BODY_IDLE_SECONDS,
        total_seconds: float = BODY_TOTAL_SECONDS,
    ) -> None:
        self._receive = receive
        self.seconds = seconds
        self.total_seconds = total_seconds
        self.timed_out: str | None = None
        self._done = False
        self._received = 0
        self._started = time.monotonic()

    async def receive(self) -> Message:
        if self._done:
            return await self._receive()
        idle = self.seconds
        rate = self._started + max(self.total_seconds, self._received / MIN_BYTES_PER_SECOND)
        rate -= time.monotonic()  # seconds left before the body falls under the rate
        try:
            message = await receive_within(self._receive, min(idle, rate))
        except TimeoutError:
            self.timed_out = (
                f"nothing for {self.seconds:g} s"
                if idle <= rate
                else f"under {MIN_BYTES_PER_SECOND} bytes a second after {self.total_seconds:g} s"
            )
            return {"type": "http.disconnect", TIMED_OUT: self.timed_out}
        self._received += len(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body", False):
            self._done = True
        return message


async def receive_within(receive: Receive, seconds: float) -> Message:
    """`await receive()`, or TimeoutError after `seconds`. A message that is there already (a
    small body comes with its headers) is taken without arming a timer: `asyncio.timeout`
    cost ~5 µs a request, a tenth of the eligibility check's own work."""
    awaitable = receive()
    if not isinstance(awaitable, types.CoroutineType):
        async with asyncio.timeout(seconds):
            return await awaitable
    try:
        waiting_on = awaitable.send(None)  # the coroutine's first step, as `await` takes it
    except StopIteration as finished:
        return finished.value
    async with asyncio.timeout(seconds):
        return await _resumed(awaitable, waiting_on)


@types.coroutine
def _resumed(
    coroutine: Coroutine[Any, Any, Message], waiting_on: Any
) -> Generator[Any, Any, Message]:
    """Await the rest of a coroutine already stepped once (`waiting_on`: what it yielded), as
    `await` would have: the task's sends and throws (a timeout's cancellation) go through."""
    while True:
        try:
            sent = yield waiting_on
        except GeneratorExit:
            coroutine.close()
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the coroutine, as await does
            try:
                waiting_on = coroutine.throw(exc)
            except StopIteration as finished:
                return finished.value
        else:
            try:
                waiting_on = coroutine.send(sent)
            except StopIteration as finished:
                return finished.value


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
        timer = BodyTimer(receive, self.seconds, self.total_seconds)
        scope = {**scope, BODY_TIMER: timer}  # for handlers that answer (and audit) the 408
        answered_408 = False

        async def guarded_send(message: Message) -> None:
            nonlocal answered_408
            if message["type"] == "http.response.start" and message["status"] == 408:
                answered_408 = True  # the app's own 408
            if not timer.timed_out or answered_408:
                await send(message)
            elif message["type"] == "http.response.start":
                await send_timeout(send, timer.timed_out)

        await self.app(scope, timer.receive, guarded_send)


def body_timed_out(scope: Scope) -> str | None:
    """Which limit the request's body missed (after Starlette's `ClientDisconnect`, which
    drops the disconnect message's TIMED_OUT), or None."""
    timer = scope.get(BODY_TIMER)
    return timer.timed_out if timer is not None else None


def timeout_detail(why: str) -> str:
    return f"the request body stopped arriving ({why})"


async def send_timeout(send: Send, why: str) -> None:
    body = json.dumps({"error": "request_timeout", "detail": timeout_detail(why)}).encode()
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
