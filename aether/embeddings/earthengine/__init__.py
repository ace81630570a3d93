"""embeddings/earthengine."""
