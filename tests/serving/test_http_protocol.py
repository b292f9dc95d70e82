"""The request-head deadline, on a real uvicorn (httptools) over real sockets."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from serving.http_protocol import HeadDeadlineProtocol
from tests.serving.conftest import wait_for


class QuickDeadline(HeadDeadlineProtocol):
    head_seconds = 0.5
    sweep_seconds = 0.1


async def slow(request):
    await asyncio.sleep(1.5)  # longer than the head deadline: answering is not the head
    return JSONResponse({"ok": True})


async def echo(request):
    return JSONResponse({"got": (await request.body()).decode()})


@pytest.fixture
def server_port() -> Iterator[int]:
    app = Starlette(routes=[Route("/slow", slow), Route("/echo", echo, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(
        app, http=QuickDeadline, log_level="warning", access_log=False, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    assert wait_for(lambda: server.started, timeout=10)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(5)


def _read_all(conn: socket.socket) -> bytes:
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def test_a_head_that_stops_arriving_gets_a_408_and_the_connection_closes(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
        response = _read_all(conn)  # returns once the server closes
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"] == "request_timeout"


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as conn:
        assert _read_all(conn) == b""


def test_many_stalled_connections_are_all_closed(server_port):
    conns = [socket.create_connection(("127.0.0.1", server_port), timeout=10) for _ in range(50)]
    try:
        for index, conn in enumerate(conns):
            conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n" if index % 2 else b"GE")
        answers = [_read_all(conn) for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers)


def test_a_slow_answer_and_a_head_sent_in_pieces_are_served(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as conn:
        conn.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _read_all(conn).startswith(b"HTTP/1.1 200 ")
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")
        conn.sendall(b"Content-Length: 2\r\nConnection: close\r\n\r\nhi")
        response = _read_all(conn)
    assert response.startswith(b"HTTP/1.1 200 ")
    assert response.endswith(b'{"got":"hi"}')


def test_a_keep_alive_connection_gets_the_deadline_for_each_request(server_port):
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as conn:
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na")
        first = conn.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        conn.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\n")  # the second head stalls
        assert _read_all(conn).startswith(b"HTTP/1.1 408 ")
