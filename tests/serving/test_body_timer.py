"""serving.body_timeout.receive_within and BodyTimer, on a real event loop."""

from __future__ import annotations

import asyncio

import pytest

from serving.body_timeout import TIMED_OUT, BodyTimer, receive_within

BODY = {"type": "http.request", "body": b"{}", "more_body": False}


def queue_receive(queue: asyncio.Queue):
    async def receive():
        return await queue.get()

    return receive


def test_a_message_already_there_is_taken_without_a_timer():
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(BODY)
        # no time left: only a timer armed for it could time out
        return await receive_within(queue_receive(queue), 0)

    assert asyncio.run(scenario()) == BODY


def test_a_message_that_arrives_before_the_deadline_is_returned():
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        asyncio.get_running_loop().call_later(0.05, queue.put_nowait, BODY)
        return await receive_within(queue_receive(queue), 5)

    assert asyncio.run(scenario()) == BODY


def test_a_message_that_does_not_arrive_times_out_at_the_deadline():
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await receive_within(queue_receive(queue), 0.1)
        return loop.time() - started

    assert 0.09 < asyncio.run(scenario()) < 2


def test_cancelling_the_waiting_task_cancels_the_receive():
    finished: list[str] = []

    async def receive():
        try:
            await asyncio.sleep(10)
        finally:
            finished.append("receive cleaned up")
        return BODY

    async def scenario():
        task = asyncio.create_task(receive_within(receive, 10))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert finished == ["receive cleaned up"]


def test_an_error_in_receive_reaches_the_caller():
    async def receive():
        await asyncio.sleep(0.01)
        raise ConnectionResetError("gone")

    async def scenario():
        with pytest.raises(ConnectionResetError):
            await receive_within(receive, 5)

    asyncio.run(scenario())


def test_the_body_timer_says_which_limit_a_stalled_body_missed():
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait({"type": "http.request", "body": b"{", "more_body": True})
        timer = BodyTimer(queue_receive(queue), seconds=0.1, total_seconds=60)
        first = await timer.receive()
        second = await timer.receive()  # nothing more comes
        return first, second, timer.timed_out

    first, second, why = asyncio.run(scenario())
    assert first["body"] == b"{"
    assert second == {"type": "http.disconnect", TIMED_OUT: "nothing for 0.1 s"}
    assert why == "nothing for 0.1 s"


def test_the_body_timer_passes_receive_through_once_the_body_is_complete():
    async def scenario():
        queue: asyncio.Queue = asyncio.Queue()
        queue.put_nowait(BODY)
        timer = BodyTimer(queue_receive(queue), seconds=0.05, total_seconds=0.05)
        await timer.receive()
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, queue.put_nowait, {"type": "http.disconnect"})
        return await timer.receive()  # waits for the client as long as it takes

    assert asyncio.run(scenario()) == {"type": "http.disconnect"}
