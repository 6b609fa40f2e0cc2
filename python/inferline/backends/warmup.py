"""Warm-up data: one batch per ``[warmup] inputs`` (zeros, seeded random, or a sample file).

Used before a version is marked ready, so the first real request does not pay for lazy
initialisation (ONNX sessions, BLAS threads, CUDA contexts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..repository import ModelConfig, RepositoryError, WarmupConfig, resolve_inside
from ..types import TensorSpec

__all__ = ["make_warmup_inputs"]


def make_warmup_inputs(
    warmup: WarmupConfig,
    inputs: Sequence[TensorSpec],
    batch_size: int,
    *,
    config: ModelConfig | None = None,
    version: int | None = None,
) -> list[np.ndarray]:
    """One warm-up batch: an array of ``[batch_size, *spec.shape]`` per input, in order.

    ``zeros``: zeros (empty bytes for BYTES); ``random``: seeded standard normal values for
    floats, small non-negative integers, random booleans; ``sample``: the rows of the version
    folder's .npz (one array per input name, either one item or ``[N, *shape]`` rows, cycled
    to fill the batch; read without pickle). ``config`` and ``version`` are needed for
    ``sample``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if warmup.inputs == "sample":
        if config is None or version is None or warmup.sample is None:
            raise ValueError('warm-up inputs = "sample" needs the model config and version')
        return _sample_batch(warmup.sample, inputs, batch_size, config, version)
    rng = np.random.default_rng(warmup.seed)
    out = []
    for spec in inputs:
        shape = (batch_size, *spec.shape)
        if spec.datatype == "BYTES":
            a = np.full(shape, b"", dtype=object)
        elif warmup.inputs == "zeros":
            a = np.zeros(shape, dtype=spec.dtype)
        elif spec.datatype == "BOOL":
            a = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif spec.datatype == "BF16":  # bit patterns: the upper half of float32 values
            f32 = rng.standard_normal(size=shape).astype(np.float32)
            a = (f32.view(np.uint32) >> 16).astype(np.uint16)
        elif spec.dtype.kind in "iu":
            a = rng.integers(0, 10, size=shape).astype(spec.dtype)
        else:
            a = rng.standard_normal(size=shape).astype(spec.dtype)
        out.append(a)
    return out


def _sample_batch(
    sample: str,
    inputs: Sequence[TensorSpec],
    batch_size: int,
    config: ModelConfig,
    version: int,
) -> list[np.ndarray]:
    va = config.version(version)
    path = va.directory / sample
    if not path.exists():
        raise RepositoryError(path, None, "missing (the warm-up sample)")
    real = resolve_inside(config.root, path)
    try:
        with np.load(real, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise RepositoryError(path, None, f"not a readable .npz file: {e}") from None
    out = []
    for spec in inputs:
        if spec.name not in arrays:
            wanted = ", ".join(repr(s.name) for s in inputs)
            raise RepositoryError(
                path,
                spec.name,
                f"missing; the sample needs one array per input ({wanted}), "
                f"found {', '.join(map(repr, arrays))}",
            )
        a = arrays[spec.name]
        if a.shape == spec.shape:
            a = a[None]
        if a.shape[1:] != spec.shape or a.shape[0] == 0:
            raise RepositoryError(
                path,
                spec.name,
                f"expected shape {list(spec.shape)} or [N, "
                f"{', '.join(map(str, spec.shape))}], got {list(a.shape)}",
            )
        if not np.can_cast(a.dtype, spec.dtype, casting="same_kind"):
            raise RepositoryError(
                path, spec.name, f"expected dtype {spec.dtype} ({spec.datatype}), got {a.dtype}"
            )
        idx = np.arange(batch_size) % a.shape[0]
        out.append(np.ascontiguousarray(a[idx].astype(spec.dtype, copy=False)))
    return out
