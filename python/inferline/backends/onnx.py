"""ONNX Runtime backend: an ONNX graph as a batch callable, its signature read from the graph."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..repository import RepositoryError
from ..types import TensorSpec
from .onnx_external import ProtobufError, escaping_location
from .onnx_signature import graph_signature

__all__ = ["ONNX_DATATYPES", "OnnxModel"]

# onnxruntime's type strings -> Open Inference Protocol datatypes. bfloat16 is left out:
# onnxruntime's Python API cannot feed or return it as a numpy array.
ONNX_DATATYPES: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

Dims = tuple[int | None, ...]


class _Port:
    """One graph input or output: name, datatype and dims (None where symbolic/unknown; dims
    None: an output whose shape onnxruntime would infer, read without a session)."""

    __slots__ = ("datatype", "dims", "name")

    def __init__(self, name: str, datatype: str, dims: Dims | None) -> None:
        self.name = name
        self.datatype = datatype
        self.dims = dims


def _dims(shape: Sequence[Any] | None) -> Dims | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)


def _show(dims: Sequence[int | None] | None) -> str:
    if dims is None:
        return "[...]"
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


class OnnxModel:
    """An ONNX graph served through an ``onnxruntime.InferenceSession`` on the CPU provider.

    ``model`` is a path to a ``.onnx`` file or the file's bytes. The session always loads from
    bytes, so it reads nothing but what it was given, plus external-data files from
    ``external_data_dir`` (default: the model file's folder; with bytes and no folder,
    external data is refused). External-data paths that are absolute or contain ``..`` are
    refused before onnxruntime reads the graph (:mod:`.onnx_external`, as onnxruntime before
    1.24 reads them); the repository refuses symlinks that leave it.

    The signature comes from the graph: ``inputs``/``outputs`` are per-item
    :class:`TensorSpec` lists (batch dimension stripped). When every input's first dimension
    is symbolic, the model batches (``batch_dynamic``). When it is fixed at 1, or the inputs
    have no batch dimension at all (a first dimension other than 1, or scalars), the model is
    served one item per call: ``batch_dynamic`` is False and ``batching_note`` says why, and
    the engine must force ``max_batch_size = 1``. If a batch of several rows arrives anyway,
    it is run row by row.

    Calling the model runs one batch: ``model(*arrays)`` takes batched arrays in input order
    (or ``model(feeds)`` one dict by input name) and returns the output array (one output)
    or a tuple of arrays in output order, the shape of a Python-callable backend.
    ``run(feeds)`` takes and returns dicts by name.

    ``session=False`` reads only the signature, from the graph's protobuf bytes
    (:mod:`.onnx_signature`), without importing onnxruntime or building a session: what the
    server process of a model run in child processes (``isolation = "process"``) needs. Such a
    model cannot run (``has_session`` is False).

    Thread safety: ``InferenceSession.run`` may be called from several threads at once, and
    it releases the GIL for the whole computation (onnxruntime's binding drops it around
    ``Run``), so engine instances compute in parallel and the event loop keeps running.
    ``intra_op_threads`` sizes onnxruntime's own pool per call (default: one per physical
    core); with several instances, set it so instances x threads fits the cores.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | bytes,
        *,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        external_data_dir: str | os.PathLike[str] | None = None,
        source: str | os.PathLike[str] | None = None,
        session: bool = True,
    ) -> None:
        if isinstance(model, bytes | bytearray | memoryview):
            data = bytes(model)
            self.source = os.fspath(source) if source is not None else "<onnx bytes>"
        else:
            path = Path(model)
            self.source = os.fspath(source) if source is not None else os.fspath(path)
            try:
                data = path.read_bytes()
            except OSError as e:
                raise RepositoryError(self.source, None, f"cannot be read: {e.strerror}") from None
            if external_data_dir is None:
                external_data_dir = path.resolve().parent
        for key, v in (
            ("intra_op_threads", intra_op_threads),
            ("inter_op_threads", inter_op_threads),
        ):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{key} must be a positive integer or None, got {v!r}")

        try:
            outside = escaping_location(data)
            # The signature from the bytes (no session) only where no session is built.
            graph = None if session else graph_signature(data)
        except ProtobufError as e:
            msg = f"not a loadable ONNX model: protobuf {e}"
            raise RepositoryError(self.source, None, msg) from None
        if outside is not None:
            raise RepositoryError(
                self.source,
                None,
                f"not a loadable ONNX model: external data location {outside!r} is absolute "
                "or outside the model's folder",
            )
        self._session: Any = None
        if graph is None:
            self._session = self._build_session(
                data, intra_op_threads, inter_op_threads, external_data_dir
            )
            ins, outs = self._session.get_inputs(), self._session.get_outputs()
        else:
            ins, outs = graph
        self._in = [self._port(p, "input") for p in ins]
        self._out = [self._port(p, "output") for p in outs]
        self.input_names = tuple(p.name for p in self._in)
        self.output_names = tuple(p.name for p in self._out)
        self._has_batch_axis, self.batch_dynamic, self.batching_note = self._batch_mode()

    def _build_session(
        self,
        data: bytes,
        intra_op_threads: int | None,
        inter_op_threads: int | None,
        external_data_dir: str | os.PathLike[str] | None,
    ) -> Any:
        import onnxruntime as ort  # heavy import: only when a session is built

        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: failures reach the caller as exceptions
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        if inter_op_threads is not None:
            opts.inter_op_num_threads = inter_op_threads
        if external_data_dir is not None:
            opts.add_session_config_entry(
                "session.model_external_initializers_file_folder_path",
                os.fspath(external_data_dir),
            )
        try:
            return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own classes for protobuf/graph errors
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RepositoryError(
                self.source, None, f"not a loadable ONNX model: {first}"
            ) from None

    @property
    def has_session(self) -> bool:
        """False for a signature-only model (``session=False``), which cannot run."""
        return self._session is not None

    # -- graph signature ---------------------------------------------------------------------

    def _port(self, arg: Any, kind: str) -> _Port:
        datatype = ONNX_DATATYPES.get(arg.type)
        if datatype is None:
            raise RepositoryError(
                self.source,
                None,
                f"{kind} {arg.name!r} has type {arg.type}, which inferline cannot serve; "
                f"supported: {', '.join(ONNX_DATATYPES)}",
            )
        dims = _dims(arg.shape)
        if dims is None and kind == "input":
            raise RepositoryError(
                self.source, None, f"{kind} {arg.name!r} has no known rank; inferline needs one"
            )
        return _Port(arg.name, datatype, dims)

    def _batch_mode(self) -> tuple[bool, bool, str | None]:
        kinds = {}
        for p in self._in:
            first = p.dims[0] if p.dims else "scalar"
            kinds[p.name] = "dynamic" if first is None else "one" if first == 1 else "none"
        distinct = set(kinds.values())
        if len(distinct) > 1:
            detail = ", ".join(f"{n} {_show(p.dims)}" for n, p in zip(kinds, self._in, strict=True))
            raise RepositoryError(
                self.source,
                None,
                f"the inputs disagree on the batch dimension ({detail}); expected every "
                "input's first dimension to be symbolic (batched) or none to be",
            )
        kind = distinct.pop() if distinct else "none"
        if kind == "dynamic":
            return True, True, None
        p = self._in[0]
        if kind == "one":
            return (
                True,
                False,
                f"input {p.name!r} has a fixed batch dimension of 1 (shape {_show(p.dims)}); "
                "batching is off (max_batch_size = 1)",
            )
        return (
            False,
            False,
            f"input {p.name!r} (shape {_show(p.dims)}) has no symbolic batch dimension; "
            "each item is one call and batching is off (max_batch_size = 1)",
        )

    def _item_dims(self, port: _Port) -> Dims | None:
        if port.dims is None:
            return None
        return port.dims[1:] if self._has_batch_axis else port.dims

    def _specs(self, ports: Sequence[_Port], kind: str) -> tuple[TensorSpec, ...]:
        specs = []
        for p in ports:
            dims = self._item_dims(p)
            if dims is None:
                raise RepositoryError(
                    self.source,
                    None,
                    f"{kind} {p.name!r} has no shape in the graph (onnxruntime infers it in "
                    f"the model's child processes); declare its shape in model.toml [[{kind}s]]",
                )
            if any(d is None or d < 1 for d in dims):
                raise RepositoryError(
                    self.source,
                    None,
                    f"{kind} {p.name!r} has per-item shape {_show(dims)} with a dynamic "
                    f"dimension; declare its shape in model.toml [[{kind}s]]",
                )
            specs.append(TensorSpec(p.name, p.datatype, tuple(d for d in dims if d is not None)))
        return tuple(specs)

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        """Per-item input specs from the graph (RepositoryError if a dimension is dynamic)."""
        return self._specs(self._in, "input")

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        """Per-item output specs from the graph (RepositoryError if a dimension is dynamic)."""
        return self._specs(self._out, "output")

    def check_against_config(
        self,
        config_inputs: Sequence[TensorSpec],
        config_outputs: Sequence[TensorSpec],
        *,
        source: str | os.PathLike[str] = "model.toml",
    ) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Check model.toml's declared specs against the graph; return the specs to serve.

        An empty declaration takes the graph's specs. A declaration must name the graph's
        tensors in the graph's order, with the same datatype and per-item rank; a declared
        dimension must equal the graph's, or pins it where the graph's is dynamic. The
        declared ``finite`` flags are kept. RepositoryError names ``source`` and the field.
        """
        return (
            self._merge(config_inputs, self._in, "inputs", source),
            self._merge(config_outputs, self._out, "outputs", source),
        )

    def _merge(
        self,
        declared: Sequence[TensorSpec],
        ports: Sequence[_Port],
        key: str,
        source: str | os.PathLike[str],
    ) -> tuple[TensorSpec, ...]:
        if not declared:
            return self._specs(ports, key[:-1])
        names = [s.name for s in declared]
        graph_names = [p.name for p in ports]
        if names != graph_names:
            raise RepositoryError(
                source,
                key,
                f"declared {names} but the ONNX graph's {key} are {graph_names} "
                "(expected the same names in the same order)",
            )
        for i, (spec, port) in enumerate(zip(declared, ports, strict=True)):
            if spec.datatype != port.datatype:
                raise RepositoryError(
                    source,
                    f"{key}[{i}].datatype",
                    f"declared {spec.datatype} but the ONNX graph's {key[:-1]} {port.name!r} "
                    f"is {port.datatype}",
                )
            dims = self._item_dims(port)
            if dims is None:
                continue  # no shape read without a session: the children's sessions check it
            if len(dims) != len(spec.shape) or any(
                g is not None and g != d for g, d in zip(dims, spec.shape, strict=True)
            ):
                raise RepositoryError(
                    source,
                    f"{key}[{i}].shape",
                    f"declared {list(spec.shape)} but the ONNX graph's {key[:-1]} "
                    f"{port.name!r} has per-item shape {_show(dims)}",
                )
        return tuple(declared)

    # -- running -----------------------------------------------------------------------------

    def __call__(
        self, *arrays: np.ndarray | Mapping[str, np.ndarray]
    ) -> np.ndarray | tuple[np.ndarray, ...]:
        """Run one batch: arrays in input order, each ``[B, *item_shape]``, or one dict of
        them by input name (the engine passes a dict when a model has several inputs).
        Returns the output array, or a tuple in output order when there are several."""
        if len(arrays) == 1 and isinstance(arrays[0], Mapping):
            outs = self._run(self._feeds(arrays[0]))
        elif len(arrays) != len(self._in) or any(isinstance(a, Mapping) for a in arrays):
            raise TypeError(
                f"expected {len(self._in)} arrays ({', '.join(self.input_names)}) or one dict "
                f"of them, got {len(arrays)} arguments"
            )
        else:
            outs = self._run(dict(zip(self.input_names, arrays, strict=True)))  # type: ignore[arg-type]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch by name: ``{input: [B, ...]}`` -> ``{output: [B, ...]}``."""
        return dict(zip(self.output_names, self._run(self._feeds(feeds)), strict=True))

    def _feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if set(feeds) != set(self.input_names):
            raise ValueError(f"expected inputs {list(self.input_names)}, got {sorted(feeds)}")
        return {n: feeds[n] for n in self.input_names}

    def _run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        if self._session is None:
            raise RuntimeError(
                f"{self.source}: this OnnxModel was loaded with session=False (the signature "
                "only; its child processes run the graph) and cannot run"
            )
        names = list(self.output_names)
        if self.batch_dynamic:
            # onnxruntime releases the GIL for the whole Run (see the class docstring).
            return list(self._session.run(names, dict(feeds)))
        batch = next(iter(feeds.values())).shape[0] if feeds else 1
        if batch < 1:
            raise ValueError("expected a batch of at least one row, got 0")
        rows: list[list[np.ndarray]] = []
        for i in range(batch):
            if self._has_batch_axis:  # fixed batch of 1: feed [1, ...] slices
                feed = {n: a[i : i + 1] for n, a in feeds.items()}
                rows.append(list(self._session.run(names, feed)))
            else:  # no batch axis: feed single items, add the axis back
                feed = {n: np.asarray(a[i]) for n, a in feeds.items()}
                rows.append([np.asarray(o)[None] for o in self._session.run(names, feed)])
        if batch == 1:
            return rows[0]
        return [np.concatenate([r[j] for r in rows]) for j in range(len(names))]

    def __repr__(self) -> str:
        ins = ", ".join(f"{p.name}:{p.datatype}{_show(p.dims)}" for p in self._in)
        outs = ", ".join(f"{p.name}:{p.datatype}{_show(p.dims)}" for p in self._out)
        return f"OnnxModel({self.source!r}, inputs=[{ins}], outputs=[{outs}])"
