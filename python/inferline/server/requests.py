"""What every route reads from a request: its id (``X-Request-ID``) and the version path
parameter."""

from __future__ import annotations

import itertools
import os
import re

__all__ = ["RequestIds", "version_arg"]

# X-Request-ID values we echo: printable ASCII without separators that could break a log line.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class RequestIds:
    """Request ids: the client's ``X-Request-ID`` when it sent a sane one, else ``PREFIX-N``
    with a random per-app prefix and a counter. Only the event loop's thread calls it."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()

    def __call__(self, headers: list[tuple[bytes, bytes]]) -> str:
        for k, v in headers:
            if k == b"x-request-id":
                try:
                    text = v.decode("ascii")
                except UnicodeDecodeError:
                    break
                if _REQUEST_ID_RE.fullmatch(text):
                    return text
                break
        return f"{self._prefix}-{next(self._ids)}"


def version_arg(raw: str | None) -> int | str | None:
    """The ``{version}`` path parameter as the engine takes it: a number, an alias, or None."""
    if raw is None or raw == "":
        return None
    if raw.isdigit() and raw.isascii() and len(raw) < 19:
        return int(raw)
    return raw
