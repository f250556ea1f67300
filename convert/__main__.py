"""python -m starflow_convert: see cli.py."""

import sys

from .cli import main

sys.exit(main())
