"""``python -m mooer``: the ``mooer`` command, run from the package it is in (a checkout's own)."""

import sys

from mooer.cli import main

if __name__ == "__main__":  # not in the processes that a spawning pool starts
    sys.exit(main())
