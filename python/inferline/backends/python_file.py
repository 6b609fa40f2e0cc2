"""A ``model.py`` in a version folder as a batch callable, run only with two keys.

Running a repository's ``model.py`` executes its code inside the server, so it needs both
the repository's ``[python] allow_code = true`` and the operator's opt-in (``inferline serve
--allow-code``, ``Engine.from_repository(..., allow_code=True)``): a repository alone cannot
make the server run its code.
"""

from __future__ import annotations

import functools
import importlib.util
import itertools
import os
import re
import sys
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..repository import RepositoryError, resolve_inside

__all__ = ["CODE_KEYS", "PythonModel", "load_python_model"]

#: What running a repository ``model.py`` needs, for error messages.
CODE_KEYS = (
    "running model.py executes code in the server, so it needs two keys: "
    "[python] allow_code = true in model.toml, and the operator's opt-in "
    "(`inferline serve --allow-code`, or Engine.from_repository(..., allow_code=True))"
)

_counter = itertools.count(1)
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class PythonModel:
    """A ``model.py``'s entry function, called as it is. Its module stays in ``sys.modules``
    while this object lives: once the engine lets go of the model (unload), the module is
    removed; :meth:`unload` removes it at once."""

    def __init__(self, fn: Callable[..., Any], module_name: str) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.module_name = module_name
        self._finalizer = weakref.finalize(self, sys.modules.pop, module_name, None)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)

    def unload(self) -> None:
        """Removes the module from ``sys.modules`` now."""
        self._finalizer()


def load_python_model(
    path: str | os.PathLike[str],
    *,
    allow_code: bool,
    entry: str = "predict",
    root: str | os.PathLike[str] | None = None,
    source: bytes | None = None,
    module_name: str | None = None,
) -> PythonModel:
    """Run ``path`` (a model.py) as a fresh module and return its ``entry`` batch function.

    This runs the file's code inside the server, so it refuses unless ``allow_code`` is true:
    both keys given (``[python] allow_code = true`` in model.toml and the operator's opt-in;
    :func:`inferline.backends.load_version` combines them). With ``root``, the file must
    resolve inside that folder. ``source`` gives the bytes to run (the repository passes the
    bytes it checked against ``[artifacts] sha256``); by default the file is read. Each call
    makes a new module under a unique name (``inferline_model_<name>_<n>``, registered in
    ``sys.modules`` for as long as the returned :class:`PythonModel` lives), so loading a new
    version, or the same one again, never sees the previous module's state. No bytecode is
    written into the repository and ``sys.path`` is not changed: the module finds its own
    files through ``Path(__file__).parent``.

    The entry function receives batched numpy arrays in input order and returns the output(s)
    in output order, like any Python-callable backend. Errors (refused, missing, failing to
    import, no such function) are RepositoryError naming the file.
    """
    display = os.fspath(path)
    if allow_code is not True:
        raise RepositoryError(
            display, "python.allow_code", f"refusing to run model.py: {CODE_KEYS}"
        )
    if not isinstance(entry, str) or not entry.isidentifier():
        raise RepositoryError(
            display, "python.entry", f"expected a Python function name, got {entry!r}"
        )
    p = Path(path)
    if not p.exists():
        raise RepositoryError(display, None, "missing (the python backend's model.py)")
    real = resolve_inside(root, p) if root is not None else p.resolve()
    if source is None:
        try:
            source = real.read_bytes()
        except OSError as e:
            raise RepositoryError(display, None, f"cannot be read: {e.strerror}") from None

    if module_name is None:
        module_name = p.parent.parent.name + "_" + p.parent.name
    name = f"inferline_model_{_UNSAFE.sub('_', module_name)}_{next(_counter)}"
    spec = importlib.util.spec_from_loader(name, loader=None, origin=os.fspath(real))
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    module.__file__ = os.fspath(real)
    sys.modules[name] = module  # dataclasses, pickling and typing look modules up by name
    try:
        code = compile(source, os.fspath(real), "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except BaseException as e:
        sys.modules.pop(name, None)
        if not isinstance(e, Exception):
            raise
        raise RepositoryError(display, None, f"failed to import: {type(e).__name__}: {e}") from e

    fn = getattr(module, entry, None)
    if fn is None or not callable(fn):
        sys.modules.pop(name, None)
        what = "defines no" if fn is None else "has a non-callable"
        raise RepositoryError(
            display,
            "python.entry",
            f"model.py {what} {entry!r}; expected a function taking batched arrays "
            "(set [python] entry to its name)",
        )
    return PythonModel(fn, name)
