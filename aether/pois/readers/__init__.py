"""POI sources, one module each (``pbf``, ``vector``, ``overpass``), all returning raw frames.

A raw frame has the columns ``RAW_COLUMNS`` (see ``base``) with any geometry type;
``aether.pois.load`` turns it into the pois table (points, clipping, de-duplication, text).
"""
