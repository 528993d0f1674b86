"""``python -m trainer``: the `trainer` command line."""
import sys

from .cli import main

sys.exit(main())
