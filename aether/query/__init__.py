"""Text search over encoded grids (``search``) and its maps (``maps``).

``aether.query(queries, city=...)`` calls ``aether.api.query`` (see ``aether._callable``).
"""

from aether._callable import make_callable

make_callable(__name__)
