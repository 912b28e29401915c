"""`python -m ops` is the `boxoffice` command."""

import sys

from ops.cli import main

sys.exit(main())
