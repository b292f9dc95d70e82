"""Reading request bodies with a size limit, before anything parses them."""

from __future__ import annotations

from starlette.requests import Request


def declared_too_large(content_length: str | None, limit: int) -> bool:
    """Whether a Content-Length header announces more than `limit` bytes. Only ASCII digits
    count ("²".isdigit() holds, but int() refuses it); anything else is left to the server
    and to counting the bytes as they come."""
    return (
        content_length is not None
        and content_length.isascii()
        and content_length.isdigit()
        and int(content_length) > limit
    )


async def read_limited_body(request: Request, limit: int) -> bytes | None:
    """The raw body, or None once it is known to exceed `limit` bytes."""
    length = request.headers.get("content-length")
    if declared_too_large(length, limit):
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
