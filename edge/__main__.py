"""`python -m edge` is `boxoffice edge`."""

import sys

from edge.cli import main

sys.exit(main(prog="python -m edge"))
