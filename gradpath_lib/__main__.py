"""`python -m gradpath_lib ...` runs the command line (for machines without an install)."""

import sys

from .cli import main

sys.exit(main())
