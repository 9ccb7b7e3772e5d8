"""``python -m mitmlite``: the same as the ``mitmlite`` command."""

from mitmlite.cli import main

main()
