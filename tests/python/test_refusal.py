"""The in-flight refusal built once: Admission.refusal gives the 503 that enter() raises and
its encoded body, reused while the count and the bound stay the same; the metrics label of a
refused request names only models the engine serves."""

from __future__ import annotations

import json

import numpy as np
import pytest

import inferline
from inferline import TensorSpec
from inferline.server.admission import Admission
from inferline.server.errors import HTTPError

X = [TensorSpec("x", "FP32", (2,))]


def double(batch: np.ndarray) -> np.ndarray:
    return batch * 2


def admission(engine: object, max_in_flight: int = 2) -> Admission:
    return Admission(
        engine,
        max_in_flight=max_in_flight,
        max_body_bytes_in_flight=1 << 20,
        max_rows_per_request=16,
    )


def test_the_refusal_is_the_503_enter_raises_built_once_per_count() -> None:
    a = admission(inferline.Engine())
    assert a.refusal() is None
    a.enter()
    assert a.refusal() is None
    a.enter()
    first = a.refusal()
    assert first is not None
    err, body = first
    with pytest.raises(HTTPError) as raised:
        a.enter()
    assert (
        (err.status, err.message, err.retry_after, err.outcome)
        == (
            raised.value.status,
            raised.value.message,
            raised.value.retry_after,
            raised.value.outcome,
        )
        == (
            503,
            "the server is handling 2 requests, its limit (max_in_flight = 2); retry later",
            True,
            "overloaded",
        )
    )
    assert json.loads(body) == {"error": err.message}
    assert a.refusal() is first  # the same count and bound: nothing built again
    a.fixed_max_in_flight = 1  # a lower bound while 2 are in: a new message
    lowered = a.refusal()
    assert lowered is not None and lowered is not first
    assert lowered[0].message == (
        "the server is handling 2 requests, its limit (max_in_flight = 1); retry later"
    )
    a.leave()
    a.leave()
    assert a.refusal() is None


def test_the_label_names_only_served_models() -> None:
    engine = inferline.Engine()
    engine.register("m", double, inputs=X, outputs=X)
    a = admission(engine)
    assert a.served_label("m") == "m"
    assert a.served_label("m") == "m"
    assert a.served_label("nope") == ""
    assert a.served_label("nope") == ""
