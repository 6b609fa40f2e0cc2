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

from ..errors import HTTPError
from . import kserve_v2_pb2 as pb

if TYPE_CHECKING:
    from .service import InferenceService

__all__ = ["STREAM_IN_FLIGHT", "model_stream_infer"]

#: The most requests of one stream held at once (read and not yet answered).
STREAM_IN_FLIGHT = 128

_DONE = None  # the end of the answers, after the last request's


async def model_stream_infer(
    service: InferenceService, requests: AsyncIterator[pb.ModelInferRequest], context: Any
) -> None:
    """Serves one ModelStreamInfer stream of ``service``: reads ``requests`` while fewer
    than :data:`STREAM_IN_FLIGHT` are held, computes them concurrently and writes each
    answer to ``context`` as it is ready (writes are one at a time, as gRPC requires)."""
    answers: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
    slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
    running: set[asyncio.Task[None]] = set()

    async def answer(request: pb.ModelInferRequest) -> None:
        try:
            response = await service.infer_one(request, context)
        except HTTPError as e:  # counted by infer_one; the stream goes on
            answers.put_nowait(
                pb.ModelStreamInferResponse(
                    error_message=e.message,
                    infer_response=pb.ModelInferResponse(
                        model_name=request.model_name,
                        model_version=request.model_version,
                        id=request.id,
                    ),
                )
            )
        else:
            answers.put_nowait(pb.ModelStreamInferResponse(infer_response=response))

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()  # released once its answer is written
                task = asyncio.ensure_future(answer(request))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:  # half-closed: answer what is in flight, then end
                await asyncio.wait(set(running))
        finally:
            answers.put_nowait(_DONE)

    reading = asyncio.ensure_future(read())
    try:
        while (message := await answers.get()) is not _DONE:
            await context.write(message)
            slots.release()
        await reading  # its error, if the request stream failed
    finally:
        # Cancelled (the client cancelled the stream) or failed: drop the work in flight.
        tasks = [reading, *running]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
