"""``python -m oqron_nats``: see :mod:`oqron_nats.cli`."""

import sys

from .cli import main

sys.exit(main())
