"""`python -m geodns` is `boxoffice geodns`."""

import sys

from geodns.cli import main

sys.exit(main(prog="python -m geodns"))
