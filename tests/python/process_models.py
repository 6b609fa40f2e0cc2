"""Models for the process-instance tests: importable by ``module:qualname`` from a child."""

from __future__ import annotations

import time

import numpy as np

HANG = -1.0  # a batch whose first column holds this sleeps (until killed)


def double(batch: np.ndarray) -> np.ndarray:
    """Doubles its input; a HANG row holds the batch for a minute."""
    if (batch[:, 0] == HANG).any():
        time.sleep(60)
    return batch * np.float32(2.0)


def two_in_two_out(batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Sum of ``a`` and ``b`` (float32) and the row index of each row's max of ``a`` (int64)."""
    return batch["a"] + batch["b"], batch["a"].argmax(axis=1).astype(np.int64)


def fail_negative(batch: np.ndarray) -> np.ndarray:
    """Raises for a batch holding a negative value, else returns its input."""
    if (batch < 0).any():
        raise ValueError("negative input")
    return batch.copy()


def wrong_dtype(batch: np.ndarray) -> np.ndarray:
    """Returns float64 where float32 is declared."""
    return batch.astype(np.float64)
