"""``python -m nightlab.cli``: the same entry point as the ``nightlab`` command."""

from nightlab.cli.entry import main

main()
