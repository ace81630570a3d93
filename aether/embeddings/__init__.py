"""AlphaEarth embedding sources: one module each, behind the protocol in ``base``."""

from aether.embeddings.base import EmbeddingSource, get_source

__all__ = ["EmbeddingSource", "get_source"]
