"""Backends that turn a repository version into a batch callable plus its signature.

:func:`load_version` is the one call the engine needs per ``(model, version)``: it verifies
the folder, loads the ONNX graph or the ``model.py``, settles the signature (declared in
model.toml, read from the graph, or both, checked against each other) and the effective
batching (an ONNX graph without a dynamic batch dimension forces ``max_batch_size = 1``), and
returns a :class:`LoadedModel` whose ``fn`` is already in the engine's batch form. Any
failure is a RepositoryError naming the file and, where it applies, the model.toml field, so
the engine can mark that version failed and go on.

One module per backend: :mod:`.onnx`, :mod:`.python_file`, :mod:`.native` (kernel graphs
from ``[native]``); :mod:`.checks` wraps a batch function with output checks and
:mod:`.warmup` makes warm-up batches.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..repository import (
    BatchingConfig,
    ModelConfig,
    RepositoryError,
    read_artifact,
    resolve_inside,
    verify_version,
)
from ..types import DEFAULTS, FLOAT_DATATYPES, TensorSpec
from .checks import with_output_checks
from .native import native_model
from .onnx import OnnxModel
from .python_file import CODE_KEYS, PythonModel, load_python_model
from .text_encoder import load_text_encoder_version
from .warmup import make_warmup_inputs

__all__ = ["LoadedModel", "OnnxModel", "PythonModel", "load_python_model", "load_version"]


@dataclass(frozen=True)
class LoadedModel:
    """One loaded version, ready for ``engine.register``.

    ``fn`` is in the engine's batch form: it takes the batched array of a one-input model,
    or a dict of batched arrays by input name, and returns one array (one output) or a tuple
    in ``outputs`` order; ``[output_checks] probabilities`` are already applied to it.
    ``outputs`` carry ``finite=True`` where model.toml asks for it (per output or
    ``[output_checks] finite``). ``batching`` is the effective batching (``max_batch_size``
    forced to 1 when the backend cannot batch); ``notes`` says why, for logs and
    ``engine.models()``. ``backend`` is the OnnxModel, the entry function or the NativeModel.
    """

    config: ModelConfig
    version: int
    fn: Callable[..., Any]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchingConfig
    notes: tuple[str, ...] = ()
    backend: Any = None
    pre: Any = None  # a pipeline Stage in front of fn (text_encoder: the tokenizer)
    batching_extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    make_warmup: Callable[[int], list[np.ndarray]] | None = None  # the backend's own batches

    @property
    def max_batch_size(self) -> int | None:
        return self.batching.max_batch_size

    @property
    def platform(self) -> str:
        """The protocol's platform: ``onnxruntime_onnx``, ``python``, ``inferline_native`` or
        ``inferline_text_encoder``."""
        return {
            "onnx": "onnxruntime_onnx",
            "native": "inferline_native",
            "text_encoder": "inferline_text_encoder",
        }.get(self.config.backend, self.config.backend)

    def warmup_sizes(self, default_max_batch_size: int) -> tuple[int, ...]:
        """Warm-up batch sizes; ``default_max_batch_size`` is the engine's default when
        model.toml leaves ``batching.max_batch_size`` out."""
        mbs = self.batching.max_batch_size or default_max_batch_size
        return self.config.warmup.sizes_for(mbs)

    def warmup_inputs(self, batch_size: int) -> list[np.ndarray]:
        """One warm-up batch per ``[warmup] inputs`` (zeros, seeded random or the version's
        sample file), arrays in input order: fits ``engine.register(warmup_inputs=...)``.
        ``[warmup] repeats`` says how many times to run each size."""
        if self.make_warmup is not None:
            return self.make_warmup(batch_size)
        return make_warmup_inputs(
            self.config.warmup, self.inputs, batch_size, config=self.config, version=self.version
        )


def _runs_in_children(config: ModelConfig, version: int) -> Callable[..., Any]:
    """Stands in the parent for a model.py that only its child processes import."""

    def in_children(*_: Any) -> Any:
        raise RuntimeError(
            f"model {config.name!r} version {version} runs in its child processes "
            '(isolation = "process"); the server process never imports its model.py'
        )

    return in_children


def load_version(
    config: ModelConfig,
    version: int,
    *,
    verify: bool = True,
    allow_code: bool = False,
    in_child: bool = False,
) -> LoadedModel:
    """Load one version of a model from its repository folder (onnx, python or native).

    With ``verify`` the folder is checked first (:func:`inferline.repository.verify_version`:
    files present, sha256, no escaping symlinks); the main file's digest is checked again on
    the bytes actually loaded either way. ``allow_code`` is the operator's key to run a
    ``model.py``; the repository's ``[python] allow_code`` is the other, and both are needed.
    A python model with ``isolation = "process"`` is imported only where ``in_child`` is true
    (its child processes): elsewhere ``fn`` raises if called. Raises RepositoryError.
    """
    va = verify_version(config, version) if verify else config.version(version)
    notes: list[str] = []
    batching = config.batching
    if config.backend == "onnx":
        assert config.onnx is not None and va.artifact is not None
        data = read_artifact(config, version)
        model = OnnxModel(
            data,
            intra_op_threads=config.onnx.intra_op_threads,
            inter_op_threads=config.onnx.inter_op_threads,
            external_data_dir=resolve_inside(config.root, va.directory),
            source=va.artifact,
            # Process instances build their sessions; the server process needs the signature.
            session=config.isolation != "process" or in_child,
        )
        inputs, outputs = model.check_against_config(
            config.inputs, config.outputs, source=config.config_file
        )
        if not model.batch_dynamic:
            assert model.batching_note is not None
            notes.append(model.batching_note)
            batching = dataclasses.replace(batching, max_batch_size=1)
            if config.batching.max_batch_size not in (None, 1):
                notes.append(
                    f"batching.max_batch_size = {config.batching.max_batch_size} in "
                    f"{config.config_file} is overridden to 1"
                )
        fn: Callable[..., Any] = model
        backend: Any = model
    elif config.backend == "python":
        assert config.python is not None and va.artifact is not None
        if not allow_code:
            raise RepositoryError(
                va.artifact,
                "python.allow_code",
                f"refusing to run model.py: {CODE_KEYS}; the operator's opt-in was not given",
            )
        if config.isolation == "process" and not in_child:
            # Its child processes import it by path (RepositoryTarget); the server process
            # checks both keys and the file's digest, and never runs the code itself.
            if config.python.allow_code is not True:
                raise RepositoryError(
                    va.artifact, "python.allow_code", f"refusing to run model.py: {CODE_KEYS}"
                )
            read_artifact(config, version)
            fn = _runs_in_children(config, version)
            backend = None
        else:
            fn = load_python_model(
                va.artifact,
                allow_code=config.python.allow_code,
                entry=config.python.entry,
                root=config.root,
                source=read_artifact(config, version),
                module_name=f"{config.name}_v{version}",
            )
            backend = fn
        inputs, outputs = config.inputs, config.outputs
    elif config.backend == "native":
        assert config.native is not None
        if config.output_checks.probabilities:
            raise RepositoryError(
                config.config_file,
                "output_checks.probabilities",
                "probability checks run on Python outputs; a native model's last op "
                "(softmax) guarantees them instead",
            )
        inputs, outputs = config.inputs, config.outputs
        try:
            fn = native_model(
                config.native,
                inputs=inputs,
                outputs=outputs,
                folder=va.directory,
                max_batch_size=batching.max_batch_size or DEFAULTS.max_batch_size,
            )
        except (ValueError, RuntimeError) as exc:
            raise RepositoryError(config.config_file, "native", str(exc)) from None
        backend = fn
    elif config.backend == "text_encoder":
        te = load_text_encoder_version(config, va.directory)
        return LoadedModel(
            config=config,
            version=version,
            fn=te.core,  # a native backend: the scheduler calls it without Python
            inputs=te.inputs,
            outputs=te.outputs,
            batching=batching,
            backend=te.core,
            pre=te.pre,
            batching_extra=te.batching_extra,
            make_warmup=te.warmup_inputs,
        )
    else:
        raise RepositoryError(
            config.config_file,
            "backend",
            f"unknown backend {config.backend!r}; expected one of 'onnx', 'python', 'native', "
            "'text_encoder'",
        )

    if config.output_checks.finite:
        outputs = tuple(dataclasses.replace(s, finite=True) for s in outputs)
    by_name = {s.name: s for s in outputs}
    for name in config.output_checks.probabilities:
        if name not in by_name:
            raise RepositoryError(
                config.config_file,
                "output_checks.probabilities",
                f"no output named {name!r}; outputs: {', '.join(map(repr, by_name))}",
            )
        if by_name[name].datatype not in FLOAT_DATATYPES:
            raise RepositoryError(
                config.config_file,
                "output_checks.probabilities",
                f"output {name!r} is {by_name[name].datatype}; expected a floating-point output",
            )
    return LoadedModel(
        config=config,
        version=version,
        fn=_batch_form(fn, config, inputs, outputs),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        batching=batching,
        notes=tuple(notes),
        backend=backend,
    )


def _batch_form(
    fn: Callable[..., Any],
    config: ModelConfig,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
) -> Callable[..., Any]:
    """``fn`` as the engine calls it: one dict of arrays for several inputs (the backends
    take them as positional arguments in input order), with the probability checks."""
    if len(inputs) > 1:
        names = [s.name for s in inputs]
        raw = fn

        def by_name(batch: Mapping[str, Any]) -> Any:
            return raw(*[batch[n] for n in names])

        fn = by_name

    checks = config.output_checks
    if checks.probabilities:
        fn = with_output_checks(
            fn,
            outputs,
            probabilities=checks.probabilities,
            tolerance=checks.probabilities_tolerance,
        )
    return fn
