"""``python -m cli``: the ``digits`` command (tests run it this way in a subprocess)."""

import sys

from cli.main import main

sys.exit(main())
