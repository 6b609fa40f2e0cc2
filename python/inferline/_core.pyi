"""Type stub of the private native module inferline._core (pybind11)."""

from collections.abc import Callable, Sequence
from typing import Any, Literal, overload

import numpy as np

__version__: str

# Native kernels and the native model (numpy-facing kernel functions, enums, NativeModel,
# NativeModelConfig, NativeOp, TensorDesc, and cuda_* helpers in CUDA builds). The public,
# typed wrappers are inferline.kernels and inferline.native.
kernels: Any

def build_info() -> dict[str, Any]: ...
def cuda_compiled() -> bool: ...
def cuda_device_count() -> int: ...
def cuda_device_name(index: int = 0) -> str: ...
def set_error_types(
    queue_full: type[BaseException],
    deadline: type[BaseException],
    cancelled: type[BaseException],
    model_error: type[BaseException],
    stopped: type[BaseException],
    invalid: type[BaseException],
) -> None: ...

class LimitsTable:
    """The largest values a model configuration may ask for (read-only)."""

    @property
    def max_batch_size(self) -> int: ...
    @property
    def max_queue_size(self) -> int: ...
    @property
    def max_priority_levels(self) -> int: ...
    @property
    def max_instances(self) -> int: ...
    @property
    def max_ndim(self) -> int: ...
    @property
    def max_queue_memory_bytes(self) -> int: ...
    @property
    def max_batch_tokens(self) -> int: ...
    @property
    def max_execution_timeout_ms(self) -> float: ...

class DefaultsTable:
    """What a model gets for every setting it leaves out (read-only)."""

    @property
    def max_batch_size(self) -> int: ...
    @property
    def max_queue_delay_ms(self) -> float: ...
    @property
    def max_queue_size(self) -> int: ...
    @property
    def priority_levels(self) -> int: ...
    @property
    def instances(self) -> int: ...
    @property
    def idle_spin_us(self) -> float: ...
    @property
    def execution_timeout_ms(self) -> float: ...
    @property
    def shutdown_grace_ms(self) -> float: ...

limits: LimitsTable
defaults: DefaultsTable

class TensorSpec:
    """One declared input or output per item (immutable; ValueError when invalid).

    The float kind of the finite check comes from the dtype (float16/32/64); BF16 travels as
    uint16 bit patterns and is declared with ``bf16=True``.
    """

    def __init__(
        self,
        name: str,
        dtype: np.dtype[Any] | type | str,
        shape: Sequence[int] = (),
        finite: bool = False,
        *,
        bf16: bool = False,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def finite(self) -> bool: ...
    @property
    def bf16(self) -> bool: ...
    @property
    def item_bytes(self) -> int: ...

class SchedulerConfig:
    """Batching settings of one model version (immutable; ValueError outside ``limits``)."""

    def __init__(
        self,
        name: str = "",
        *,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 1.0,
        max_queue_size: int = 1024,
        priority_levels: int = 1,
        instances: int = 1,
        idle_spin_us: float = 0.0,
        policy: str = "work_conserving",
        max_latency_ms: float = 0.0,
        execution_timeout_ms: float = 0.0,
        max_batch_tokens: int = 0,
        cost_input: int = -1,
    ) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def max_batch_size(self) -> int: ...
    @property
    def max_batch_tokens(self) -> int: ...
    @property
    def cost_input(self) -> int: ...
    @property
    def max_queue_delay_ms(self) -> float: ...
    @property
    def max_queue_size(self) -> int: ...
    @property
    def priority_levels(self) -> int: ...
    @property
    def instances(self) -> int: ...
    @property
    def idle_spin_us(self) -> float: ...
    @property
    def policy(self) -> str: ...
    @property
    def max_latency_ms(self) -> float: ...
    @property
    def execution_timeout_ms(self) -> float: ...

class Backend:
    @property
    def platform(self) -> str: ...

class ProcessBackend(Backend):
    def __init__(
        self,
        model: str,
        argv: list[str],
        input_bytes: list[int],
        output_bytes: list[int],
        max_batch_size: int,
        instances: int,
        execution_timeout_ms: float,
        start_timeout_s: float,
        stop_grace_s: float,
    ) -> None: ...
    @property
    def pids(self) -> list[int]: ...
    @property
    def restarts(self) -> int: ...
    def shutdown(self) -> None: ...

class Core:
    def __init__(self) -> None: ...
    @property
    def fd(self) -> int: ...
    def drain(self) -> int: ...
    def reap(self) -> None: ...
    def set_trace(self, fn: Callable[..., None] | None) -> None: ...

class Stamps:
    """One traced request's stage stamps (time.monotonic_ns() clock; 0: stage not reached)."""

    def __init__(self) -> None: ...
    @property
    def t_enqueue(self) -> int: ...
    @property
    def t_dispatch(self) -> int: ...
    @property
    def t_compute_start(self) -> int: ...
    @property
    def t_compute_end(self) -> int: ...
    @property
    def t_answer(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def instance(self) -> int: ...
    @property
    def filled(self) -> bool: ...

class Scheduler:
    def __init__(
        self,
        core: Core,
        config: SchedulerConfig,
        inputs: list[TensorSpec],
        outputs: list[TensorSpec],
        model: Callable[..., Any] | Backend,
    ) -> None: ...
    def start(self) -> None: ...
    @overload
    def submit(
        self,
        x: Any,
        priority: int,
        timeout: float | None,
        future: Any,
        *,
        converted: Literal[False] = False,
    ) -> int | None: ...
    @overload
    def submit(
        self, x: Any, priority: int, timeout: float | None, future: Any, *, converted: Literal[True]
    ) -> int: ...
    @overload
    def submit_traced(
        self,
        x: Any,
        priority: int,
        timeout: float | None,
        future: Any,
        stamps: Stamps,
        *,
        converted: Literal[False] = False,
    ) -> int | None: ...
    @overload
    def submit_traced(
        self,
        x: Any,
        priority: int,
        timeout: float | None,
        future: Any,
        stamps: Stamps,
        *,
        converted: Literal[True],
    ) -> int: ...
    def submit_many(
        self, x: Any, priority: int, timeout: float | None, future: Any, *, converted: bool = False
    ) -> np.ndarray[Any, np.dtype[np.uint64]] | None: ...
    def cancel_many(
        self, handles: np.ndarray[Any, np.dtype[np.uint64]], expired: bool = False
    ) -> None: ...
    def cancel(self, handle: int, expired: bool = False) -> bool: ...
    def close(self) -> None: ...
    def shutdown(self) -> None: ...
    def warmup(self, batch_size: int, inputs: list[np.ndarray[Any, Any] | None]) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def histogram_buckets(
        self, which: str, bounds: list[float], unit: float
    ) -> tuple[list[int], int, float]: ...
    @property
    def queue_depth(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def platform(self) -> str: ...
    @property
    def name(self) -> str: ...
