"""``python -m pipeline.cli`` is the same as ``facepipe``."""

import sys

from pipeline.cli import main

sys.exit(main())
