"""The child side of a process instance: ``python -m inferline.backends.process_worker SPEC``.

The parent (``_core.ProcessBackend``, cpp/src/process_backend.cpp) starts this module with
the instance's shared region open as fd 3 and a SOCK_SEQPACKET socket as fd 4, and ``SPEC``
a JSON object (see :func:`inferline.backends.process.child_spec`). The region starts with a
header of uint64 words (``process_protocol`` in cpp/include/inferline/process_backend.hpp; named
below) that gives the offset of the error area and of every input and output area. The loop:

1. receive one uint64, the batch size ``n`` (EOF: the parent is gone or stops us; exit 0);
2. call the model on zero-copy views ``[n, *shape]`` of the input areas;
3. check each output's dtype and shape against the declared outputs, copy it into its area;
4. send ``OK``, or ``FAILED`` with ``"Type: message"`` in the error area.

Loading failures are sent as ``LOAD_FAILED`` with the message, before ``READY`` would be.
"""

from __future__ import annotations

import json
import mmap
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .process import resolve_target

# Mirrors inferline::process_protocol (process_backend.hpp); MAGIC guards a mismatch.
MAGIC = 0x314C4E49464E4950
W_MAGIC, W_INPUTS, W_OUTPUTS, W_MAX_BATCH, W_ERR_OFF, W_ERR_CAP, W_ERR_LEN, W_OFFSETS = range(8)
HEADER_WORDS = 7 + 2 * 64
OK, FAILED, READY, LOAD_FAILED = 0, 1, 2, 3
REGION_FD, SOCKET_FD = 3, 4

__all__ = ["check_outputs", "load_model", "main"]


def load_model(spec: dict[str, Any]) -> Callable[..., Any]:
    """The batch callable that ``spec`` names: an importable callable, or a repository
    version loaded through the same loaders as a thread instance."""
    if spec.get("target"):
        fn = resolve_target(str(spec["target"]))
        if not callable(fn):
            raise TypeError(f"{spec['target']} is not callable")
        return fn  # type: ignore[no-any-return]
    repo = spec["repository"]
    # A function-local import: the repository loaders pull in optional backends (onnxruntime)
    # that a child running an importable callable never needs.
    from ..repository import load_model_config
    from . import load_version

    config = load_model_config(repo["path"], root=repo["root"])
    loaded = load_version(
        config, int(repo["version"]), allow_code=bool(repo["allow_code"]), in_child=True
    )
    return loaded.fn


def check_outputs(
    out: object,
    n: int,
    names: Sequence[str],
    dtypes: Sequence[np.dtype[Any]],
    shapes: Sequence[tuple[int, ...]],
) -> list[np.ndarray]:
    """The model's outputs in declared order, each checked: ``(n, *shape)`` and the dtype."""
    if len(names) == 1:
        if isinstance(out, dict):
            if set(out) != {names[0]}:
                raise ValueError(
                    f"model returned a dict with keys {sorted(out)}; expected the single "
                    f"output {names[0]!r}"
                )
            out = out[names[0]]
        arrays = [out]
    elif isinstance(out, dict):
        missing = [k for k in names if k not in out]
        if missing:
            raise ValueError(f"model output is missing {missing[0]!r} (got keys {sorted(out)})")
        arrays = [out[k] for k in names]
    elif isinstance(out, tuple | list):
        if len(out) != len(names):
            raise ValueError(f"model returned {len(out)} outputs; expected {len(names)}")
        arrays = list(out)
    else:
        raise ValueError(
            f"model returned {type(out).__name__}; expected a dict of {len(names)} outputs"
        )
    checked = []
    for name, dtype, shape, a in zip(names, dtypes, shapes, arrays, strict=True):
        if not isinstance(a, np.ndarray):
            raise ValueError(
                f"model returned {type(a).__name__} for output {name!r}; expected a numpy array"
            )
        if a.shape != (n, *shape):
            raise ValueError(f"output {name!r} has shape {a.shape}; expected {(n, *shape)}")
        if a.dtype != dtype:
            raise ValueError(f"output {name!r} has dtype {a.dtype}; expected {dtype}")
        checked.append(a)
    return checked


def _views(
    region: mmap.mmap, offsets: Sequence[int], specs: Sequence[dict[str, Any]], rows: int
) -> list[np.ndarray]:
    views = []
    for off, s in zip(offsets, specs, strict=True):
        shape = (rows, *s["shape"])
        dtype = np.dtype(s["dtype"])
        count = int(np.prod(shape))
        views.append(np.frombuffer(region, dtype, count, int(off)).reshape(shape))
    return views


def main(argv: Sequence[str]) -> int:
    """Runs the loop described in the module docstring; returns the exit code."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    spec = json.loads(argv[0])
    sys.path[:0] = [p for p in spec.get("sys_path", []) if p not in sys.path]
    sock = socket.socket(fileno=SOCKET_FD)
    region = mmap.mmap(REGION_FD, 0)
    header = np.frombuffer(region, np.uint64, HEADER_WORDS)
    err_off, err_cap = int(header[W_ERR_OFF]), int(header[W_ERR_CAP])

    def reply(code: int, message: str = "") -> None:
        data = message.encode("utf-8", "replace")[:err_cap]
        region[err_off : err_off + len(data)] = data
        header[W_ERR_LEN] = len(data)
        sock.send(code.to_bytes(8, "little"))

    if int(header[W_MAGIC]) != MAGIC:
        reply(LOAD_FAILED, "shared region has the wrong magic (module and core out of step)")
        return 2
    try:
        fn = load_model(spec)
    except BaseException as exc:  # any load failure goes back as the message
        reply(LOAD_FAILED, f"{type(exc).__name__}: {exc}")
        return 1
    n_in, n_out = int(header[W_INPUTS]), int(header[W_OUTPUTS])
    rows = int(header[W_MAX_BATCH])
    offsets = [int(x) for x in header[W_OFFSETS : W_OFFSETS + n_in + n_out]]
    inputs = _views(region, offsets[:n_in], spec["inputs"], rows)
    outputs = _views(region, offsets[n_in:], spec["outputs"], rows)
    in_names = [s["name"] for s in spec["inputs"]]
    out_names = [s["name"] for s in spec["outputs"]]
    out_dtypes = [np.dtype(s["dtype"]) for s in spec["outputs"]]
    out_shapes = [tuple(s["shape"]) for s in spec["outputs"]]
    reply(READY)
    while True:
        msg = sock.recv(8)
        if len(msg) != 8:
            return 0
        n = int.from_bytes(msg, "little")
        try:
            arg: object
            if n_in == 1:
                arg = inputs[0][:n]
            else:
                arg = {name: v[:n] for name, v in zip(in_names, inputs, strict=True)}
            arrays = check_outputs(fn(arg), n, out_names, out_dtypes, out_shapes)
            for view, a in zip(outputs, arrays, strict=True):
                np.copyto(view[:n], a, casting="no")
        except Exception as exc:  # the model's error fails its batch only
            reply(FAILED, f"{type(exc).__name__}: {exc}")
            continue
        reply(OK)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
