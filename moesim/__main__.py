"""``python -m moesim``: the same command line as ``moesim``."""

from moesim.cli import main

main()
