"""ModelStreamInfer, Triton's bidirectional inference stream, driven by tritonclient.grpc
(sync ``start_stream``/``async_stream_infer`` and aio ``stream_infer``) and, where a test needs
what tritonclient hides (the ``id`` of an error answer, cancelling mid-stream), by a raw channel
with the package's generated messages.

The servers are test_grpc's (``serve(..., grpc_port=0)`` on 127.0.0.1 in a thread, stopped by
the test); every wait is bounded and waits on a condition.
"""

from __future__ import annotations

import asyncio
import queue
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import test_grpc as base

import inferline
from inferline import Batching, TensorSpec
from inferline.server.grpc import SERVICE_NAME, stream
from inferline.server.grpc import kserve_v2_pb2 as pb

tc = pytest.importorskip("tritonclient.grpc")
tc_aio = pytest.importorskip("tritonclient.grpc.aio")
from tritonclient.utils import InferenceServerException  # noqa: E402

Served = base.Served
f32 = base.f32
wait_for = base.wait_for


@pytest.fixture(scope="module")
def served() -> Iterator[base.Served]:
    with Served(base.build_engine(), max_body_bytes=1 << 20) as s:
        yield s


@pytest.fixture
def client(served: base.Served) -> Iterator[Any]:
    c = tc.InferenceServerClient(served.url)
    yield c
    c.close()


def inputs(count: int) -> list[np.ndarray]:
    return [np.arange(4 * (i % 3 + 1), dtype=np.float32).reshape(-1, 4) + i for i in range(count)]


class Collected:
    """A tritonclient stream callback's answers, in arrival order."""

    def __init__(self) -> None:
        self.answers: queue.Queue[tuple[Any, Any]] = queue.Queue()

    def __call__(self, result: Any, error: Any) -> None:
        self.answers.put((result, error))

    def take(self, count: int) -> list[tuple[Any, Any]]:
        return [self.answers.get(timeout=20) for _ in range(count)]


def raw_stream(channel: grpc.Channel) -> Any:
    return channel.stream_stream(
        f"/{SERVICE_NAME}/ModelStreamInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )


def model_infer(channel: grpc.Channel) -> Any:
    return channel.unary_unary(
        f"/{SERVICE_NAME}/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )


def mlp_request(x: np.ndarray, rid: str) -> Any:
    return pb.ModelInferRequest(
        model_name="mlp",
        id=rid,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=list(x.shape))
        ],
        raw_input_contents=[x.tobytes()],
    )


# ------------------------------------------------------------------------------ answers


def test_sync_stream_answers_equal_model_infer_and_carry_the_ids(client: Any) -> None:
    xs = inputs(24)
    expected = [client.infer("mlp", [f32(x)]).as_numpy("y") for x in xs]
    got = Collected()
    client.start_stream(callback=got)
    try:
        for i, x in enumerate(xs):  # all sent before any is awaited: many in flight at once
            client.async_stream_infer("mlp", [f32(x)], request_id=f"r{i}")
        answers = got.take(len(xs))
    finally:
        client.stop_stream()
    by_id = {}
    for result, error in answers:
        assert error is None, error
        by_id[result.get_response().id] = result.as_numpy("y")
    assert sorted(by_id) == sorted(f"r{i}" for i in range(len(xs)))
    for i, y in enumerate(expected):
        np.testing.assert_array_equal(by_id[f"r{i}"], y)
        np.testing.assert_array_equal(y, base.double(xs[i]))


def test_half_close_answers_what_is_in_flight_then_ends(client: Any) -> None:
    got = Collected()
    client.start_stream(callback=got)
    for i in range(10):
        client.async_stream_infer("mlp", [f32(np.full((1, 4), i, np.float32))], request_id=str(i))
    client.stop_stream()  # half-closes and waits for the stream's end
    answers = [got.answers.get_nowait() for _ in range(got.answers.qsize())]
    assert sorted(r.get_response().id for r, e in answers if e is None) == [
        str(i) for i in range(10)
    ]


def test_aio_stream_infer(served: base.Served) -> None:
    xs = inputs(16)

    async def main() -> dict[str, np.ndarray]:
        c = tc_aio.InferenceServerClient(served.url)

        async def requests() -> AsyncIterator[dict[str, Any]]:
            for i, x in enumerate(xs):
                yield {"model_name": "mlp", "inputs": [f32(x)], "request_id": f"a{i}"}

        got = {}
        try:
            async for result, error in c.stream_infer(requests()):
                assert error is None, error
                got[result.get_response().id] = result.as_numpy("y")
                if len(got) == len(xs):
                    break
        finally:
            await c.close()
        return got

    got = asyncio.run(asyncio.wait_for(main(), 60))
    assert sorted(got) == sorted(f"a{i}" for i in range(len(xs)))
    for i, x in enumerate(xs):
        np.testing.assert_array_equal(got[f"a{i}"], base.double(x))


def test_an_invalid_request_is_answered_with_its_error_and_the_stream_goes_on(
    client: Any,
) -> None:
    # The message each refusal ends a ModelInfer call with.
    bad_shape = base.status_of(lambda: client.infer("mlp", [f32(np.ones((1, 3), np.float32))]))
    unknown = base.status_of(lambda: client.infer("nope", [f32(np.ones((1, 4), np.float32))]))
    assert bad_shape[0] == "StatusCode.INVALID_ARGUMENT" and unknown[0] == "StatusCode.NOT_FOUND"
    got = Collected()
    client.start_stream(callback=got)
    try:
        client.async_stream_infer("mlp", [f32(np.ones((1, 4), np.float32))], request_id="0")
        answers = got.take(1)
        client.async_stream_infer("mlp", [f32(np.ones((1, 3), np.float32))], request_id="1")
        answers += got.take(1)
        client.async_stream_infer("nope", [f32(np.ones((1, 4), np.float32))], request_id="2")
        answers += got.take(1)
        client.async_stream_infer("mlp", [f32(np.full((2, 4), 3, np.float32))], request_id="3")
        answers += got.take(1)
    finally:
        client.stop_stream()
    (ok0, e0), (r1, e1), (r2, e2), (ok3, e3) = answers
    assert e0 is None and ok0.get_response().id == "0"
    assert r1 is None and isinstance(e1, InferenceServerException)
    assert e1.message() == bad_shape[1]
    assert r2 is None and isinstance(e2, InferenceServerException)
    assert e2.message() == unknown[1]
    assert e3 is None and ok3.get_response().id == "3"
    np.testing.assert_array_equal(ok3.as_numpy("y"), np.full((2, 4), 7, np.float32))


def test_an_error_answer_names_the_request_it_answers(served: base.Served) -> None:
    with grpc.insecure_channel(served.url) as ch:
        bad = mlp_request(np.ones((1, 4), np.float32), "bad")
        bad.model_name = "nope"
        ok = mlp_request(np.ones((1, 4), np.float32), "ok")
        answers = list(raw_stream(ch)(iter([bad, ok]), timeout=20))
    with pytest.raises(grpc.RpcError) as unary:  # the same request as a ModelInfer call
        base.raw_call(served.url, "ModelInfer", bad, pb.ModelInferResponse)
    assert unary.value.code() == grpc.StatusCode.NOT_FOUND
    assert unary.value.details().startswith("no model named 'nope'")
    by_id = {a.infer_response.id: a for a in answers}
    assert sorted(by_id) == ["bad", "ok"]
    assert by_id["bad"].error_message == unary.value.details()
    assert by_id["bad"].infer_response.model_name == "nope"
    assert not by_id["bad"].infer_response.outputs
    assert by_id["ok"].error_message == "" and by_id["ok"].infer_response.outputs[0].name == "y"


def test_requests_on_a_stream_run_concurrently_answered_as_they_complete(
    served: base.Served, client: Any
) -> None:
    base.wait_for(lambda: served.stats("slow")["in_flight"] == 0, "earlier slow work to finish")
    base.HOLD.clear()
    try:
        rows = base.SLOW_ROWS[0]
        sent: queue.Queue[Any] = queue.Queue()
        with grpc.insecure_channel(served.url) as ch:
            call = raw_stream(ch)(iter(sent.get, None), timeout=30)
            slow = base.slow_request()
            slow.id = "slow"
            sent.put(slow)
            wait_for(lambda: base.SLOW_ROWS[0] == rows + 1, "the slow request to be computing")
            sent.put(mlp_request(np.ones((1, 4), np.float32), "fast"))
            first = next(call)  # answered while the slow one still computes
            assert first.infer_response.id == "fast" and first.error_message == ""
            base.HOLD.set()
            second = next(call)
            assert second.infer_response.id == "slow" and second.error_message == ""
            sent.put(None)  # half-close: the stream ends OK
            assert list(call) == [] and call.code() == grpc.StatusCode.OK
    finally:
        base.HOLD.set()


# ------------------------------------------------------------------------------ bounds


def test_a_cancelled_stream_frees_its_queued_slots(served: base.Served, client: Any) -> None:
    before = served.stats("slow")["requests"]
    counted = base.outcome_counts(served)
    with base.slow_model_busy(served, client) as rows:
        with grpc.insecure_channel(served.url) as ch:
            sent: queue.Queue[Any] = queue.Queue()
            call = raw_stream(ch)(iter(sent.get, None), timeout=30)
            for _ in range(3):
                sent.put(base.slow_request())
            wait_for(lambda: served.stats("slow")["queue_depth"] == 3, "3 requests queued")
            assert call.cancel()
            wait_for(lambda: served.stats("slow")["queue_depth"] == 0, "the slots to be freed")
            # The freed slots take new work while the blocker still computes.
            again = model_infer(ch).future(base.slow_request(), timeout=30)
            wait_for(lambda: served.stats("slow")["queue_depth"] == 1, "a new request queued")
            base.HOLD.set()
            assert again.result(30).outputs[0].name == "y"
            sent.put(None)
    stats = served.stats("slow")
    assert stats["requests"]["cancelled"] - before.get("cancelled", 0) == 3
    assert base.SLOW_ROWS[0] - rows == 2  # the blocker and the late request
    changed = base.counts_since(served, counted)
    assert changed == {
        ("inferline_grpc_requests_total", "slow", "disconnected"): 3,
        ("inferline_grpc_requests_total", "slow", "success"): 2,
    }, changed


def test_a_stream_holds_at_most_its_bound_of_requests(
    served: base.Served, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "STREAM_IN_FLIGHT", 2)  # read when a stream starts
    with base.slow_model_busy(served, client):
        with grpc.insecure_channel(served.url) as ch:
            call = raw_stream(ch)(iter([base.slow_request() for _ in range(3)]), timeout=30)
            wait_for(lambda: served.stats("slow")["queue_depth"] == 2, "2 requests queued")
            # The stream's third is not read: the queue (of 3) still has room for this one.
            other = model_infer(ch).future(base.slow_request(), timeout=30)
            wait_for(lambda: served.stats("slow")["queue_depth"] == 3, "the unary call queued")
            base.HOLD.set()
            assert other.result(30).outputs[0].name == "y"
            answers = list(call)
    assert [a.error_message for a in answers] == ["", "", ""]
    assert call.code() == grpc.StatusCode.OK


def test_overload_answers_only_ok_or_the_overload_error() -> None:
    e = inferline.Engine()  # a model that takes a while, with a short queue
    e.register(
        "m",
        base.sleepy,
        inputs=[TensorSpec("x", "FP32", (4,))],
        outputs=[TensorSpec("y", "FP32", (4,))],
        batching=Batching(max_batch_size=4, max_queue_delay_ms=1, max_queue_size=8),
    )
    xs = [np.full((1, 4), i, dtype=np.float32) for i in range(200)]

    async def main(url: str) -> list[tuple[Any, Any]]:
        c = tc_aio.InferenceServerClient(url)

        async def requests() -> AsyncIterator[dict[str, Any]]:
            for i, x in enumerate(xs):
                yield {"model_name": "m", "inputs": [f32(x)], "request_id": str(i)}

        answers = []
        try:
            async for answer in c.stream_infer(requests()):
                answers.append(answer)
                if len(answers) == len(xs):
                    break
        finally:
            await c.close()
        return answers

    with Served(e) as s:
        # The message a ModelInfer call refused for a full queue ends with (UNAVAILABLE).
        full = r"model 'm': queue is full \(\d+ requests waiting\); retry later"
        answers = asyncio.run(asyncio.wait_for(main(s.url), 60))
        ok = 0
        for result, error in answers:
            if error is None:
                i = int(result.get_response().id)
                np.testing.assert_array_equal(result.as_numpy("y"), xs[i])
                ok += 1
            else:
                assert isinstance(error, InferenceServerException)
                assert re.fullmatch(full, error.message()), error.message()
        assert len(answers) == 200 and 0 < ok < 200
        stats = s.stats("m")
        assert stats["requests"]["success"] >= ok
        counted = base.outcome_counts(s)
        assert counted[("inferline_grpc_requests_total", "m", "success")] == ok
        assert counted[("inferline_grpc_requests_total", "m", "queue_full")] == 200 - ok
