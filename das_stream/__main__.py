"""``python -m das_stream``: the same as the ``das-stream`` command."""

import sys

from .cli import main

sys.exit(main())
