"""Reading an inference request's body off the ASGI channel within the server's bounds, and
inflating a compressed one: no further than asked, with every byte reserved against the bound
on body bytes in flight before it is kept."""

from __future__ import annotations

import zlib

from starlette.types import Receive

from .admission import Admission
from .errors import ClientGone, HTTPError

__all__ = ["RequestBody", "decompress"]

# First bytes of a zlib stream (CMF: deflate with a window of 2**8..2**15); anything else
# sent as "deflate" is taken as a raw deflate stream, as browsers and curl may send.
_ZLIB_HEADERS = (b"\x08", b"\x18", b"\x28", b"\x38", b"\x48", b"\x58", b"\x68", b"\x78")


class RequestBody:
    """A request body read in pieces, no further than asked, within ``limit`` bytes.

    A declared size (``Content-Length``) is reserved against the server's bound on body
    bytes before anything is read; without one, each piece is reserved as it arrives.
    :meth:`release` gives back what was reserved. A body of declared size is gathered into
    one buffer of that size (no second copy when it comes in many pieces).
    """

    __slots__ = ("admission", "chunks", "declared", "done", "limit", "receive", "reserved", "size")

    def __init__(self, receive: Receive, limit: int, admission: Admission) -> None:
        self.receive = receive
        self.limit = limit
        self.admission = admission
        self.declared: int | None = None
        self.reserved = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.done = False

    def declare(self, length: int) -> None:
        self.hold(length)
        self.declared = length

    def hold(self, nbytes: int) -> None:
        """Reserves ``nbytes`` more (503 past the server's bound)."""
        self.admission.reserve_body(nbytes)
        self.reserved += nbytes

    def release(self) -> None:
        self.admission.release_body(self.reserved)
        self.reserved = 0

    async def _next(self) -> bytes:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk: bytes = message.get("body", b"")
        self.done = not message.get("more_body", False)
        if chunk:
            self.size += len(chunk)
            if self.size > self.limit:
                raise HTTPError(413, f"request body is larger than the limit of {self.limit} bytes")
            if self.declared is None:
                self.hold(len(chunk))
        return chunk

    async def read_prefix(self, n: int) -> bytes:
        """The first ``n`` bytes (400 when the body is shorter)."""
        while self.size < n and not self.done:
            self.chunks.append(await self._next())
        if self.size < n:
            raise HTTPError(400, f"the body ends after {self.size} bytes, inside its JSON header")
        if len(self.chunks) > 1:
            self.chunks = [b"".join(self.chunks)]
        return self.chunks[0][:n]

    async def read_all(self) -> bytes | bytearray:
        """The whole body."""
        if self.declared is not None and not self.done:
            if not self.chunks:
                first = await self._next()
                if len(first) > self.declared:
                    raise HTTPError(400, "the body is longer than its Content-Length")
                if self.done and len(first) == self.declared:
                    return first  # the whole body in one piece, as is usual: no copy
                self.chunks.append(first)
            buf = bytearray(self.declared)
            pos = 0
            for c in self.chunks:
                buf[pos : pos + len(c)] = c
                pos += len(c)
            self.chunks = []
            while not self.done:
                c = await self._next()
                if pos + len(c) > self.declared:
                    raise HTTPError(400, "the body is longer than its Content-Length")
                buf[pos : pos + len(c)] = c
                pos += len(c)
            if pos != self.declared:
                raise HTTPError(400, "the body is shorter than its Content-Length")
            return buf
        while not self.done:
            self.chunks.append(await self._next())
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


def decompress(body: bytes | bytearray, encoding: bytes, limit: int) -> bytes:
    """``body`` inflated (gzip or deflate), at most ``limit`` bytes of it."""
    if encoding == b"gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == b"deflate":
        wbits = zlib.MAX_WBITS if body[:1] in _ZLIB_HEADERS else -zlib.MAX_WBITS
    else:
        raise HTTPError(
            415,
            f"Content-Encoding {encoding.decode('latin-1')[:40]!r} is not supported; "
            "use gzip, deflate or none",
        )
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise HTTPError(400, f"request body is not valid {encoding.decode()} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise HTTPError(413, f"decompressed request body exceeds the limit of {limit} bytes")
    if not d.eof:
        raise HTTPError(400, f"request body is truncated {encoding.decode()} data")
    return out
