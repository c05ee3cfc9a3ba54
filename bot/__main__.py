"""`python -m bot ...` and the `imagine-bot` console script."""

from __future__ import annotations

import sys

from bot.cli import leave_if_signalled, main

if __name__ == "__main__":
    code = main()
    leave_if_signalled(code)
    sys.exit(code)
