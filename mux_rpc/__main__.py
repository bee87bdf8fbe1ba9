"""``python -m mux_rpc`` is the ``mux-rpc`` command."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
