"""``python -m quantlens``: the command line."""

import sys

from quantlens.cli import main

sys.exit(main())
