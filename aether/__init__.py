"""aether: human-centred place embeddings from AlphaEarth and Points of Interest."""

__version__ = "0.1.0"

OSM_ATTRIBUTION = "© OpenStreetMap contributors (ODbL)"
AEF_ATTRIBUTION = (
    "The AlphaEarth Foundations Satellite Embedding dataset is produced by Google and "
    "Google DeepMind. (CC-BY 4.0)"
)
