"""``python -m qsnap.cli``."""

import sys

from qsnap.cli.app import main

sys.exit(main())
