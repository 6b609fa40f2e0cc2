"""The model.toml schema: every table, validated with pydantic.

Layout::

    repo/
      classifier/
        model.toml          # this module's schema, below
        1/model.onnx        # one folder per version: positive integers, no leading zeros
        2/model.onnx
      scaler/
        model.toml
        1/model.py          # runs code: loaded only with [python] allow_code = true

Every key of ``model.toml``, with its type, default, allowed values and meaning, is listed in
``docs/model-toml.md``, which :mod:`.reference` generates from the classes below (a test fails
when it is stale); every key but ``backend`` is optional, and an unknown key is an error, so a
typo never silently falls back to a default. ``[native]`` lives in :mod:`.native_schema`.

Every failure is a :class:`RepositoryError` naming the file, the dotted field and what was
expected, e.g. ``models/resnet/model.toml: batching.max_batch_size: expected a positive
integer, got -3``. Types are strict (``"8"`` is not 8, ``true`` is not 1). Pydantic's own
messages are replaced: each field type carries the words for what it expects, and checks that
span tables (a warm-up size above the batch size, an alias naming a missing version folder)
raise the same kind of error at the field they blame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from .. import _core
from ..types import DATATYPES, DEFAULTS, FLOAT_DATATYPES, LIMITS, TensorSpec
from .code_schema import OnnxTable, PythonTable
from .config import (
    BACKENDS,
    ISOLATIONS,
    Backend,
    BatchingConfig,
    CacheConfig,
    Isolation,
    OnnxConfig,
    OutputChecks,
    PythonConfig,
    TextEncoderConfig,
    VersionPolicy,
    WarmupConfig,
)
from .errors import RepositoryError
from .fields import (
    AliasName,
    ArtifactPath,
    BatchSize,
    Bool,
    Datatype,
    Instances,
    Microseconds,
    Milliseconds,
    NonEmptyStr,
    NonNegativeInt,
    PositiveInt,
    PositiveInts,
    PositiveNumber,
    PriorityLevels,
    QueueSize,
    RelativePath,
    Shape,
    Table,
    VersionNumber,
    describe,
    expect,
    fail,
    missing_version,
    one_of,
    quoted,
)
from .native_schema import OPS, NativeTable, parse_native
from .text_encoder_schema import TextEncoderTable

__all__ = ["OPS", "ModelToml", "NativeTable", "parse_model_toml", "parse_native"]


class InputTable(Table):
    name: NonEmptyStr = Field(description="the tensor's name")
    datatype: Datatype = Field(description=f"one of {', '.join(DATATYPES)}")
    shape: Shape = Field(description="a list of positive integers (per item, [] for one scalar)")
    finite: Bool = Field(
        default=False,
        description="inputs: refuse a request holding NaN or Inf (InvalidInput, HTTP 400); "
        "outputs: fail the batch that produces one (ModelError)",
    )

    def spec(self, *, finite: bool = False) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, tuple(self.shape), self.finite or finite)


class OutputTable(InputTable):
    probabilities: Bool = Field(
        default=False,
        description="each row (last axis) must sum to 1 within "
        "[output_checks] probabilities_tolerance, else the batch fails (ModelError)",
    )

    @model_validator(mode="after")
    def check_float(self) -> OutputTable:
        if self.probabilities and self.datatype not in FLOAT_DATATYPES:
            raise fail(
                f"needs a floating-point datatype, but datatype is {self.datatype!r}",
                "probabilities",
            )
        return self


ExecutionTimeout = Annotated[
    float,
    Field(strict=True, ge=0, le=LIMITS.max_execution_timeout_ms, allow_inf_nan=False),
    expect("a number of milliseconds >= 0 (0: no bound)"),
]


class BatchingTable(Table):
    """Upper bounds are the engine's (LIMITS), checked here so errors name the file."""

    max_batch_size: BatchSize | None = Field(
        default=None, description="the most items in one batch, that is in one model call"
    )
    max_queue_delay_ms: Milliseconds | None = Field(
        default=None,
        description="fixed_window only: how long the oldest item of a batch waits for company "
        "before the batch leaves",
    )
    max_queue_size: QueueSize | None = Field(
        default=None,
        description="the most items waiting, all priority lanes together; one more is refused "
        "at once (QueueFullError, HTTP 503 with Retry-After)",
    )
    priority_levels: PriorityLevels | None = Field(
        default=None,
        description="priority lanes, served in order: in Python priority=0 is served first; "
        "over HTTP the priority parameter follows Triton (1 is the highest, 0 the default)",
    )
    idle_spin_us: Microseconds | None = Field(
        default=None,
        description="how long an idle worker spins before it sleeps: CPU traded for the "
        "latency of a lone request",
    )
    max_queue_bytes: PositiveInt | None = Field(
        default=None,
        description="bytes of input that may wait, checked at admission as a tighter "
        "max_queue_size; left out: no byte bound",
    )
    max_item_bytes: PositiveInt | None = Field(
        default=None,
        description="bytes of one request's input; a larger request is refused at admission; "
        "left out: no bound",
    )
    policy: NonEmptyStr | None = Field(
        default=None,
        description='when a batch leaves: "work_conserving" (an idle instance takes what is '
        'queued at once), "fixed_window" (a batch waits up to max_queue_delay_ms to fill) or '
        '"latency_target" (a batch is held open only while its oldest request can still '
        'meet max_latency_ms); left out: "latency_target" when max_latency_ms is set, else '
        '"work_conserving"',
    )
    max_latency_ms: PositiveNumber | None = Field(
        default=None,
        description="latency_target: the target from arrival to computed, per request; a "
        "request that could not make it is refused at once (QueueFullError); left out: no target",
    )
    execution_timeout_ms: ExecutionTimeout | None = Field(
        default=None,
        description="the longest one model call may take: a batch that overruns it is answered "
        "ModelError on time and its instance is abandoned and replaced; 0 or left out: no bound",
    )

    @model_validator(mode="after")
    def check_item_fits_queue(self) -> BatchingTable:
        item, queue = self.max_item_bytes, self.max_queue_bytes
        if item and queue and item > queue:
            raise fail(f"expected at most max_queue_bytes ({queue}), got {item}", "max_item_bytes")
        return self

    @model_validator(mode="after")
    def check_policy(self) -> BatchingTable:
        # The core knows its policies; its own check words the error (no list of names here).
        if self.policy is None:
            return self
        try:
            _core.SchedulerConfig(policy=self.policy, max_latency_ms=self.max_latency_ms or 0.0)
        except ValueError as exc:
            raise fail(f"{exc}", "policy") from None
        return self

    def config(self) -> BatchingConfig:
        return BatchingConfig(**self.model_dump())


class WarmupTable(Table):
    batch_sizes: Annotated[PositiveInts, expect("a list of positive integers")] | None = Field(
        default=None,
        description="batch sizes run before the version is ready, each at most max_batch_size; "
        "left out: the powers of two below max_batch_size, and max_batch_size itself",
    )
    inputs: Annotated[
        Literal["zeros", "random", "sample"], one_of(("zeros", "random", "sample"))
    ] = Field(
        default="zeros",
        description="what the warm-up batches hold: zeros, seeded random values, or the rows of "
        "a sample file",
    )
    sample: RelativePath | None = Field(
        default=None,
        description='with inputs = "sample": a .npz in each version folder holding one array '
        "per input name (one item, or [N, *shape] rows, cycled)",
    )
    seed: NonNegativeInt = Field(default=0, description='seed of the values when inputs = "random"')
    repeats: PositiveInt = Field(default=1, description="model calls per warm-up batch size")

    @model_validator(mode="after")
    def check_sample(self) -> WarmupTable:
        if self.sample is None:
            if self.inputs == "sample":
                raise fail(
                    'required with inputs = "sample"; expected a .npz file name in each '
                    "version folder",
                    "sample",
                )
        elif not self.sample.endswith(".npz"):
            raise fail(f"expected a .npz file, got {self.sample!r}", "sample")
        elif self.inputs != "sample":
            raise fail(f'only used with inputs = "sample", but inputs = {self.inputs!r}', "sample")
        return self

    def config(self) -> WarmupConfig:
        sizes = tuple(sorted(set(self.batch_sizes))) if self.batch_sizes is not None else None
        return WarmupConfig(
            batch_sizes=sizes,
            inputs=self.inputs,
            sample=self.sample,
            seed=self.seed,
            repeats=self.repeats,
        )


class VersionsTable(Table):
    """Version numbers are checked against the folders found (the validation context)."""

    default: Annotated[
        Annotated[int, Field(ge=1)] | Literal["latest"],
        expect('"latest" or a version number'),
    ] = Field(
        default="latest",
        description='the version a request that names none gets: "latest" (the highest '
        "version folder) or a version number",
    )
    aliases: Annotated[
        dict[AliasName, VersionNumber],
        expect("a table of alias = version"),
    ] = Field(
        default_factory=dict,
        description="names for versions, usable wherever a version number is (HTTP "
        "model_version too), e.g. { stable = 1, canary = 2 }",
    )
    load: (
        Annotated[Literal["all"] | PositiveInts, expect('"all" or a list of version numbers')]
        | None
    ) = Field(
        default=None,
        description='versions to load: "all" or a list of numbers; left out: the default '
        "version and every alias target",
    )

    @model_validator(mode="after")
    def check_versions_exist(self, info: ValidationInfo) -> VersionsTable:
        found: Sequence[int] = (info.context or {}).get("versions", ())
        if not found:
            return self
        if self.default != "latest" and self.default not in found:
            raise fail(missing_version(self.default, found), "default")
        for name, v in self.aliases.items():
            if v not in found:
                raise fail(missing_version(v, found), "aliases", name)
        if isinstance(self.load, list):
            for v in self.load:
                if v not in found:
                    raise fail(missing_version(v, found), "load")
        return self

    def config(self) -> VersionPolicy:
        load: tuple[int, ...] | Literal["all"] | None = None
        if self.load == "all":
            load = "all"
        elif isinstance(self.load, list):
            load = tuple(sorted(set(self.load)))
        return VersionPolicy(default=self.default, aliases=dict(self.aliases), load=load)


class ArtifactsTable(Table):
    sha256: Annotated[
        dict[
            ArtifactPath,
            Annotated[str, Field(pattern="^[0-9a-fA-F]{64}$"), expect("64 hexadecimal digits")],
        ],
        expect('a table of "<version>/<file>" = "<hex digest>"'),
    ] = Field(
        default_factory=dict,
        description="sha256 of files in version folders, checked before the version loads; a "
        "version whose file is missing or differs fails to load, naming the file",
    )

    @model_validator(mode="after")
    def check_versions_exist(self, info: ValidationInfo) -> ArtifactsTable:
        found: Sequence[int] = (info.context or {}).get("versions", ())
        for rel in self.sha256:
            first = int(PurePosixPath(rel).parts[0])
            if found and first not in found:
                raise fail(missing_version(first, found), "sha256", rel)
        return self

    def per_version(self) -> dict[int, dict[str, str]]:
        """{version: {path inside the version folder: lower-case digest}}."""
        out: dict[int, dict[str, str]] = {}
        for rel, digest in self.sha256.items():
            first, *rest = PurePosixPath(rel).parts
            out.setdefault(int(first), {})[str(PurePosixPath(*rest))] = digest.lower()
        return out


class CacheTable(Table):
    enabled: Bool = Field(
        default=True, description="false turns the cache off; the table's presence turns it on"
    )
    max_entries: PositiveInt = Field(
        default=CacheConfig.max_entries,
        description="results kept; the least recently used goes first",
    )
    max_bytes: PositiveInt = Field(
        default=CacheConfig.max_bytes,
        description="bytes of results kept (outputs and keys together)",
    )

    def config(self) -> CacheConfig:
        return CacheConfig(**self.model_dump())


class OutputChecksTable(Table):
    finite: Bool = Field(
        default=False, description="every output must be finite (as finite = true on each output)"
    )
    probabilities: Annotated[
        list[Annotated[str, Field(min_length=1)]], expect("a list of output names")
    ] = Field(
        default_factory=list,
        description="outputs whose rows must sum to 1 (as probabilities = true on them)",
    )
    probabilities_tolerance: PositiveNumber = Field(
        default=OutputChecks.probabilities_tolerance,
        description="how far from 1 a row's sum may be before the batch fails",
    )


# ---------------------------------------------------------------------------------------------
# The whole file

_BACKEND_TABLES = ("onnx", "python", "native", "text_encoder")


class ModelToml(Table):
    """One model.toml. Fields are in the order errors are looked for."""

    backend: Annotated[Backend, one_of(BACKENDS)] = Field(description=f"one of {quoted(BACKENDS)}")
    inputs: Annotated[list[InputTable], expect("an array of tables ([[inputs]])")] = Field(
        default_factory=list,
        description="the model's inputs, per item (no batch dimension); required for the "
        "python and native backends; for onnx read from the graph and checked against it",
    )
    outputs: Annotated[list[OutputTable], expect("an array of tables ([[outputs]])")] = Field(
        default_factory=list,
        description="the model's outputs, per item; required and checked as for inputs",
    )
    batching: BatchingTable = Field(
        default_factory=BatchingTable,
        description="when a batch leaves, how large it grows and how much work may wait",
    )
    instances: Instances = Field(
        default=DEFAULTS.instances,
        description="model instances serving each loaded version, each computing one batch "
        'at a time (worker threads, or child processes with isolation = "process")',
    )
    isolation: Annotated[Isolation, one_of(ISOLATIONS)] = Field(
        default="thread",
        description='where each instance runs: "thread" (a worker thread sharing the '
        'server\'s GIL), "process" (a child process with its own GIL that loads the version '
        "by path and gets batches through shared memory; a crash fails only its batch and the "
        'instance restarts; needs declared outputs) or "loop" (on the server\'s event loop '
        "thread: no hand-over between threads, the fastest for a cheap model that holds the "
        "GIL, but a batch that hangs stalls the whole server; one instance, no "
        "execution_timeout)",
    )
    warmup: WarmupTable = Field(
        default_factory=WarmupTable,
        description="batches run before a version is ready, so that no request pays for "
        "first-call costs",
    )
    versions: VersionsTable = Field(
        default_factory=VersionsTable,
        description="which version folders load, which one serves by default, and aliases",
    )
    artifacts: ArtifactsTable = Field(
        default_factory=ArtifactsTable,
        description="checksums of the files in the version folders",
    )
    onnx: OnnxTable | None = Field(
        default=None, description='ONNX Runtime options, only with backend = "onnx"'
    )
    python: PythonTable | None = Field(
        default=None,
        description='the model.py of each version folder, only with backend = "python", '
        "which requires this table with allow_code = true",
    )
    native: NativeTable | None = Field(
        default=None,
        description='the kernel graph, only with backend = "native", which requires this table',
    )
    text_encoder: TextEncoderTable | None = Field(
        default=None,
        description="a sentence-embedding model (tokenizer + native BERT encoder), only with "
        'backend = "text_encoder"; its signature is fixed: text (BYTES) -> embedding (FP32)',
    )
    cache: CacheTable | None = Field(
        default=None,
        description="an LRU of results keyed by model, version and input bytes; left out: no cache",
    )
    output_checks: OutputChecksTable = Field(
        default_factory=OutputChecksTable,
        description="checks on every batch's outputs; a failed check fails that batch only "
        "(ModelError)",
    )

    @classmethod
    def check_raw(cls, data: dict[str, Any]) -> None:
        backend = data["backend"]
        for name in _BACKEND_TABLES:
            if name in data and backend in BACKENDS and backend != name:
                raise fail(
                    f"[{name}] is only for backend = {name!r}, but backend = {backend!r}", name
                )
        if backend == "native" and "native" not in data:
            raise fail("required; expected a non-empty array of op tables", "native", "ops")

    @field_validator("inputs", "outputs")
    @classmethod
    def check_unique_names(cls, tables: list[InputTable], info: ValidationInfo) -> Any:
        seen: set[str] = set()
        what = (info.field_name or "tensors")[:-1]
        for i, t in enumerate(tables):
            if t.name in seen:
                raise fail(f"duplicate name {t.name!r}; each {what} needs its own", i, "name")
            seen.add(t.name)
        return tables

    @model_validator(mode="after")
    def check_across_tables(self) -> ModelToml:
        if self.backend == "text_encoder" and (self.inputs or self.outputs):
            raise fail(
                "not allowed for backend = 'text_encoder': its signature is fixed, "
                "text (BYTES) -> embedding (FP32 [hidden])",
                "inputs" if self.inputs else "outputs",
            )
        if self.backend not in ("onnx", "text_encoder") and (not self.inputs or not self.outputs):
            missing = "inputs" if not self.inputs else "outputs"
            raise fail(
                f"required for backend = {self.backend!r}; expected [[{missing}]] "
                "tables with name, datatype and shape",
                missing,
            )
        self._check_item_bytes()
        mbs, sizes = self.batching.max_batch_size, self.warmup.batch_sizes
        if mbs is not None and sizes is not None and any(b > mbs for b in sizes):
            raise fail(
                f"expected sizes up to batching.max_batch_size ({mbs}), got {sizes!r}",
                "warmup",
                "batch_sizes",
            )
        if self.backend == "python" and (self.python is None or not self.python.allow_code):
            raise fail(
                "backend = 'python' runs the version folder's model.py inside the server; "
                "expected allow_code = true in [python] to opt in",
                "python",
                "allow_code",
            )
        self._check_probabilities()
        return self

    def _check_item_bytes(self) -> None:
        limit = self.batching.max_item_bytes
        if limit and self.inputs and all(t.datatype != "BYTES" for t in self.inputs):
            need = sum(t.spec().item_nbytes for t in self.inputs)
            if need > limit:
                raise fail(
                    f"one item of the declared inputs takes {need} bytes, more than "
                    f"max_item_bytes = {limit}: every request would be refused",
                    "batching",
                    "max_item_bytes",
                )

    def _check_probabilities(self) -> None:
        by_name = {t.name: t for t in self.outputs}
        for n in self.output_checks.probabilities:
            if self.outputs and n not in by_name:
                raise fail(
                    f"no output named {n!r}; outputs: {quoted(by_name)}",
                    "output_checks",
                    "probabilities",
                )
            if n in by_name and by_name[n].datatype not in FLOAT_DATATYPES:
                raise fail(
                    f"output {n!r} has datatype {by_name[n].datatype}; expected a "
                    "floating-point output",
                    "output_checks",
                    "probabilities",
                )

    # ---- the validated file as config values

    def specs(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """(inputs, outputs); ``[output_checks] finite`` marks every output finite."""
        finite = self.output_checks.finite
        return (
            tuple(t.spec() for t in self.inputs),
            tuple(t.spec(finite=finite) for t in self.outputs),
        )

    def output_checks_config(self) -> OutputChecks:
        """Per-output ``probabilities = true`` first, then ``[output_checks] probabilities``."""
        names = [t.name for t in self.outputs if t.probabilities]
        names += [n for n in self.output_checks.probabilities if n not in names]
        return OutputChecks(
            finite=self.output_checks.finite,
            probabilities=tuple(dict.fromkeys(names)),
            probabilities_tolerance=self.output_checks.probabilities_tolerance,
        )

    def onnx_config(self) -> OnnxConfig | None:
        if self.backend != "onnx":
            return None
        return self.onnx.config() if self.onnx is not None else OnnxConfig()

    def python_config(self) -> PythonConfig | None:
        return self.python.config() if self.python is not None else None

    def native_table(self) -> dict[str, Any] | None:
        """The ``[native]`` table as given (validated), a fresh dict for the native backend."""
        return self.native.model_dump(exclude_unset=True) if self.native is not None else None

    def text_encoder_config(self) -> TextEncoderConfig | None:
        if self.backend != "text_encoder":
            return None
        t = self.text_encoder or TextEncoderTable()
        return TextEncoderConfig(
            weights=t.weights,
            config=t.config,
            tokenizer=t.tokenizer,
            max_seq_len=t.max_seq_len,
            package=t.package,
            sha256={k: v.lower() for k, v in t.sha256.items()},
            device=t.device,
            blas_threads=t.blas_threads,
            max_batch_tokens=t.max_batch_tokens,
            tokenizer_threads=t.tokenizer_threads,
        )

    def cache_config(self) -> CacheConfig:
        return self.cache.config() if self.cache is not None else CacheConfig()


def parse_model_toml(data: object, file: Path, versions: Sequence[int]) -> ModelToml:
    """Validate a parsed model.toml; ``versions`` are the version folders found beside it.

    Raises RepositoryError naming ``file``, the first failing field and what it expected.
    """
    try:
        return ModelToml.model_validate(data, context={"versions": tuple(versions)})
    except ValidationError as e:
        field, message = describe(e)
        raise RepositoryError(file, field or None, message) from None
