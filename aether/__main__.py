"""``python -m aether`` runs the command line."""

from aether.cli import main

main()
