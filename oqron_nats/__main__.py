"""``python -m oqron_nats``: see :mod:`oqron_nats.ops.cli`."""

import sys

from .ops.cli import main

sys.exit(main())
