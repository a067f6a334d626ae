"""``python -m adamlab``: the ``adamlab`` command."""

from adamlab.lab.cli import main

main()
