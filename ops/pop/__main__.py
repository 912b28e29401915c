"""`python -m ops.pop …`: the same command as `boxoffice pop …`."""

import sys

from ops.pop.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
