"""Text embeddings: the real offline all-MiniLM-L6-v2, de-duplication and the Parquet cache."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import require

from aether.errors import ModelError
from aether.ml.text import DEFAULT_TEXT_MODEL, cache_vectors, encode_texts, text_hash

require("sentence_transformers")

TEXTS = [
    "A place of cafe, a type of amenity, named Kahvila.",
    "A place of coffee shop, a type of amenity.",
    "A place of parking, a type of amenity.",
    "A place of cafe, a type of amenity, named Kahvila.",
]


def test_real_model_dedup_and_cache(tmp_path):
    cache = tmp_path / "text_embeddings.parquet"
    v = encode_texts(TEXTS, cache_path=cache)
    assert v.shape == (4, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.array_equal(v[0], v[3])
    assert v[0] @ v[1] > v[0] @ v[2]  # cafe is nearer coffee shop than parking

    table = pq.read_table(cache)
    assert table.column_names == ["text_hash", "model", "dim", "vector"]
    assert table.num_rows == 3  # one row per distinct text
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert set(table.column("model").to_pylist()) == {DEFAULT_TEXT_MODEL}
    assert set(table.column("text_hash").to_pylist()) == {
        text_hash(t, DEFAULT_TEXT_MODEL) for t in TEXTS}
    # a second run reads the cache and gives the same bytes
    assert np.array_equal(encode_texts(TEXTS[::-1], cache_path=cache), v[::-1])


def test_cached_texts_never_reach_the_encoder(tmp_path):
    """Vectors cached under a model that cannot be loaded are served without loading it."""
    cache = tmp_path / "t.parquet"
    vec = np.eye(3, 8, dtype=np.float32)
    cache_vectors(["a", "b", "c"], vec, cache_path=cache, model_name="no/such-model")
    assert np.array_equal(encode_texts(["c", "a", "c"], cache_path=cache,
                                       model_name="no/such-model"), vec[[2, 0, 2]])
    with pytest.raises(ModelError, match="cannot load text model"):
        encode_texts(["c", "d"], cache_path=cache, model_name="no/such-model")
    # a new text for another model is added beside the old rows
    cache_vectors(["a"], vec[:1] * 2, cache_path=cache, model_name="other")
    assert pq.read_table(cache).num_rows == 4
    assert np.array_equal(encode_texts(["a"], cache_path=cache, model_name="other"), vec[:1] * 2)
