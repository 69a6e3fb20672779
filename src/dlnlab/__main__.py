"""``python -m dlnlab``: the ``dlnlab`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
