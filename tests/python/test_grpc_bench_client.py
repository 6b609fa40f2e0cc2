"""The benchmark's raw HTTP/2 gRPC load generator (``_H2Conn`` in bench/python/http_bench.py)
against the real server: an answer counts 200 only when the server answered OK, a refusal is
never counted as one, and a stream that carries more than the server's first flow-control
window goes on (its WINDOW_UPDATEs are honoured). Also ``--grpc-ceiling``'s echo server.

The server is test_grpc's (``serve(..., grpc_port=0)`` in a thread); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import test_grpc as base

from inferline.server.grpc import kserve_v2_pb2 as pb

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "python"))
http_bench = pytest.importorskip("http_bench")


@pytest.fixture(scope="module")
def served() -> Iterator[base.Served]:
    with base.Served(base.build_engine()) as s:
        yield s


def request(model: str, i: int) -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 4])
    x = np.full((1, 4), i, dtype=np.float32)
    return pb.ModelInferRequest(
        model_name=model, inputs=[tensor], raw_input_contents=[x.tobytes()]
    ).SerializeToString()


def test_stream_counts_answers_and_refusals(served: base.Served) -> None:
    # 2,000 requests of about 60 bytes on one stream: past the 64 KiB window it starts with.
    count = 2000

    async def run() -> list[int]:
        senders, close = await http_bench._raw_grpc_stream_clients(served.server.grpc_port, 2)
        statuses = []
        for i in range(count):
            statuses.append(await asyncio.wait_for(senders[0](request("mlp", i)), 10))
        statuses.append(await asyncio.wait_for(senders[1](request("nope", 0)), 10))
        statuses.append(await asyncio.wait_for(senders[1](request("mlp", 1)), 10))
        await asyncio.wait_for(close(), 10)
        return statuses

    statuses = asyncio.run(run())
    assert statuses[:count] == [200] * count
    assert statuses[count:] == [503, 200]  # the refusal is an error_message; the stream goes on


def test_unary_counts_answers_and_refusals(served: base.Served) -> None:
    async def run() -> list[int]:
        senders, close = await http_bench._raw_grpc_clients(served.server.grpc_port, 4)
        sends = [senders[0](request(m, i)) for i, m in enumerate(["mlp", "nope", "mlp", "mlp"])]
        statuses = list(await asyncio.wait_for(asyncio.gather(*sends), 10))
        close()
        return statuses

    no_answer = http_bench._H2_NO_ANSWER
    assert asyncio.run(run()) == [200, no_answer, 200, 200]


def test_the_echo_ceiling_server_answers_every_message_with_its_answer_bytes(
    tmp_path: Path,
) -> None:
    # --grpc-ceiling's server (its own process, stopped by its PID): every message on every
    # stream is answered with the file's bytes, which the stream client counts as OK.
    answer = pb.ModelStreamInferResponse()
    answer.infer_response.model_name = "mlp"
    answer.infer_response.raw_output_contents.append(b"\0" * 16)
    answer_file = tmp_path / "answer.bin"
    answer_file.write_bytes(answer.SerializeToString())
    echo = http_bench.Server("--serve", "grpc-echo", "--answer-file", str(answer_file))
    try:
        assert (
            http_bench._check_grpc_stream(echo.port, request("mlp", 0)) == answer_file.read_bytes()
        )

        async def run() -> list[int]:
            senders, close = await http_bench._raw_grpc_stream_clients(echo.port, 3)
            sends = [send(request("mlp", i)) for i, send in enumerate(senders)]
            statuses = list(await asyncio.wait_for(asyncio.gather(*sends), 10))
            statuses.append(await asyncio.wait_for(senders[0](request("mlp", 9)), 10))
            await asyncio.wait_for(close(), 10)
            return statuses

        assert asyncio.run(run()) == [200, 200, 200, 200]
    finally:
        echo.stop()
    assert echo.proc.returncode is not None
