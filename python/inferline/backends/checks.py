"""Opt-in output sanity checks, run on each batch's outputs inside the worker's model call."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ..types import TensorSpec

__all__ = ["OutputCheckError", "with_output_checks"]


class OutputCheckError(ValueError):
    """An output broke a declared check; the engine answers the batch with ModelError."""


def with_output_checks(
    fn: Callable[[Any], Any],
    outputs: Sequence[TensorSpec],
    *,
    probabilities: Sequence[str] = (),
    tolerance: float = 1e-3,
    finite: bool = False,
) -> Callable[[Any], Any]:
    """Wraps a batch function so its outputs are checked after every call.

    ``probabilities`` names outputs whose rows (last axis) must sum to 1 within ``tolerance``
    and lie in [0, 1]; ``finite`` requires every floating output to be free of NaN and Inf.
    A violation raises ``OutputCheckError`` naming the check, the output and the row.
    """
    names = [s.name for s in outputs]
    unknown = [p for p in probabilities if p not in names]
    if unknown:
        raise ValueError(f"probability checks name unknown outputs {unknown}; outputs are {names}")
    if not probabilities and not finite:
        return fn

    def as_dict(out: Any) -> dict[str, np.ndarray]:
        if isinstance(out, Mapping):
            return {k: np.asarray(v) for k, v in out.items()}
        if isinstance(out, tuple | list):
            return {n: np.asarray(v) for n, v in zip(names, out, strict=False)}
        return {names[0] if names else "output": np.asarray(out)}

    def checked(batch: Any) -> Any:
        out = fn(batch)
        arrays = as_dict(out)
        if finite:
            for name, values in arrays.items():
                if values.dtype.kind == "f" and not np.isfinite(values).all():
                    row = int(np.argwhere(~np.isfinite(values))[0][0])
                    raise OutputCheckError(
                        f"output check 'finite' failed: output {name!r} has NaN or Inf in row {row}"
                    )
        for name in probabilities:
            a = arrays.get(name)
            if a is None:
                continue
            sums = a.astype(np.float64).sum(axis=-1).reshape(len(a), -1)
            err = np.abs(sums - 1.0).max(axis=1)
            bad = np.flatnonzero(err > tolerance)
            if bad.size:
                r = int(bad[0])
                raise OutputCheckError(
                    f"output check 'probabilities' failed: output {name!r} row {r} sums to "
                    f"{float(sums[r].flat[0]):.6g}; expected 1 within {tolerance:g}"
                )
            if (a < -tolerance).any() or (a > 1 + tolerance).any():
                raise OutputCheckError(
                    f"output check 'probabilities' failed: output {name!r} has values "
                    "outside [0, 1]"
                )
        return out

    checked.__wrapped__ = fn  # type: ignore[attr-defined]
    return checked
