"""POIs: normalise (``load``), classify (``taxonomy``), read (``readers``).

``aether.pois(place, ...)`` calls ``aether.api.pois`` (see ``aether._callable``).
"""

from aether._callable import make_callable

make_callable(__name__)
