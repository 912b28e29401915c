"""`python -m origin` is `boxoffice origin`."""

import sys

from origin.cli import main

sys.exit(main(prog="python -m origin"))
