"""`python -m gradpath_lib ...` runs the command line (for machines without an install)."""

import sys

from .cli import main

if __name__ == "__main__":  # not in worker processes that multiprocessing spawns
    sys.exit(main())
