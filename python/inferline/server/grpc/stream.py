"""ModelStreamInfer: Triton's bidirectional inference stream, over the unary call's parts.

Each request on a stream is admitted, checked, computed and counted exactly as a ModelInfer
call (:meth:`.service.InferenceService.infer_one`), and several run at once: each is answered
as it completes (Triton's order), carrying the request's ``id`` so that the client can match
them. A refused request (a bad one, an unknown model, overload, a model's failure) is answered
with the message its ModelInfer call would end with, in ``error_message``, beside an
``infer_response`` holding only the request's model, version and ``id``; the stream goes on.

At most :data:`STREAM_IN_FLIGHT` requests of one stream are held at once, counted from when
the request is read until its answer is written: past it the server stops reading the stream,
and HTTP/2 flow control holds the client back. When the client half-closes, the requests in
flight are answered and the stream ends OK; when it cancels the stream, the requests in flight
are cancelled and the engine drops their queued work (counted ``disconnected``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from ..errors import HTTPError
from . import kserve_v2_pb2 as pb

if TYPE_CHECKING:
    from .service import InferenceService

__all__ = ["STREAM_IN_FLIGHT", "model_stream_infer"]

#: The most requests of one stream held at once (read and not yet answered).
STREAM_IN_FLIGHT = 128


async def model_stream_infer(
    service: InferenceService, requests: AsyncIterator[pb.ModelInferRequest], context: Any
) -> None:
    """Serves one ModelStreamInfer stream of ``service``: reads the stream while fewer than
    :data:`STREAM_IN_FLIGHT` of its requests are held, and answers each in a task of its
    own, which writes its answer to ``context`` when it is ready (one write at a time, as
    gRPC requires: a lock, uncontended while answers do not complete together).

    The requests are read with ``context.read()`` rather than through ``requests``, gRPC's
    async generator over the same reads: one generator step fewer per message."""
    del requests  # context.read() gives the same messages
    loop = asyncio.get_running_loop()
    read = context.read
    write = context.write
    writing = asyncio.Lock()
    running: set[asyncio.Task[None]] = set()
    failed: list[BaseException] = []  # a write that failed: the stream is broken
    held = 0  # requests read and not yet answered
    room: asyncio.Future[None] | None = None  # the reader's wait for one to be answered

    async def answer(request: pb.ModelInferRequest) -> None:
        nonlocal held
        try:
            message = pb.ModelStreamInferResponse()
            try:
                await service.infer_one(request, context, message.infer_response)
            except HTTPError as e:  # counted by infer_one; the stream goes on
                message.Clear()
                message.error_message = e.message
                refused = message.infer_response
                refused.SetInParent()  # present even when the fields below are all empty
                refused.model_name = request.model_name
                refused.model_version = request.model_version
                refused.id = request.id
            async with writing:
                await write(message)
        except Exception as e:  # the write failed: the stream is broken; the reader raises it
            failed.append(e)
        finally:
            held -= 1
            if room is not None and not room.done():
                room.set_result(None)

    try:
        while True:
            request = await read()
            if request is grpc.aio.EOF:
                break
            while held >= STREAM_IN_FLIGHT:  # wait until an answer is written
                room = loop.create_future()
                await room
                room = None
            held += 1
            task = loop.create_task(answer(request))
            running.add(task)
            task.add_done_callback(running.discard)
            if failed:
                raise failed[0]
        if running:  # half-closed: answer what is in flight, then end
            await asyncio.wait(set(running))
        if failed:
            raise failed[0]
    finally:
        # Cancelled (the client cancelled the stream) or failed: drop the work in flight.
        if running:
            tasks = list(running)
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
