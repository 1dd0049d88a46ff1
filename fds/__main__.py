"""``python -m fds``: the ``fds`` command line."""

import sys

from fds.cli import main

sys.exit(main())
