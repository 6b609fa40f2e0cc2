"""Ready-made models built on the engine's public pieces (stages, native cores).

- ``minilm.py``: sentence embeddings with a BERT text encoder (all-MiniLM-L6-v2): a tokenizer
  stage in front of the native ``TextEncoder``.
"""

from __future__ import annotations

from .minilm import installed_minilm, register_text_encoder

__all__ = ["installed_minilm", "register_text_encoder"]
