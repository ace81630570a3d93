"""AlphaEarth embedding sources: one module each, behind the protocol in ``base``."""

from aether.embeddings.base import EmbeddingSource, get_source, write_point_means

__all__ = ["EmbeddingSource", "get_source", "write_point_means"]
