"""model.toml text for the tests' repository Python models (a ``model.py`` beside it)."""

from __future__ import annotations


def python_model_toml(
    *,
    top: str = "",
    batching: str = "",
    warmup: str = "[1]",
    extra: str = "",
) -> str:
    """A ``backend = "python"`` model with one FP32[4] input ``x`` and output ``y`` whose code
    may run (``[python] allow_code = true``; the operator's key is the caller's). ``top`` goes
    before the tables, ``batching`` is the ``[batching]`` body (no table when empty), ``warmup``
    the batch sizes, ``extra`` is appended."""
    text = f'backend = "python"\n{top}'
    if top and not top.endswith("\n"):
        text += "\n"
    for kind, name in (("inputs", "x"), ("outputs", "y")):
        text += f'[[{kind}]]\nname = "{name}"\ndatatype = "FP32"\nshape = [4]\n'
    if batching:
        text += f"[batching]\n{batching.strip()}\n"
    text += f"[warmup]\nbatch_sizes = {warmup}\n[python]\nallow_code = true\n"
    return text + extra
