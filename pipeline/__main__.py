"""``python -m pipeline`` is the ``groqbatch`` command."""

from .cli import main

main()
