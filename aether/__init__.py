"""aether: human-centred place embeddings from AlphaEarth and Points of Interest."""

__version__ = "0.1.0"
