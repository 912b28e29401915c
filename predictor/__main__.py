"""`python -m predictor` is `boxoffice predictor`."""

import sys

from predictor.cli import main

sys.exit(main(prog="python -m predictor"))
