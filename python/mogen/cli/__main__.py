"""``python -m mogen.cli``: the ``mogen`` command line."""

import sys

from . import main

sys.exit(main())
