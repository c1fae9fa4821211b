"""``python -m medlearn``: the same as the ``medlearn`` command."""

from __future__ import annotations

import sys

from medlearn.cli import main

if __name__ == "__main__":
    sys.exit(main())
