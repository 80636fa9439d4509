"""``python -m switch``: the softswitch command line (see :mod:`switch.cli`)."""

import sys

from switch.cli import main

if __name__ == "__main__":
    sys.exit(main())
