"""The ``roomd`` command line (click). The core package never imports this one.

``main()`` is the console script: it runs the click group :data:`cli` and
turns every RoomdError into one line ``roomd: <message>`` on stderr with exit
status 1 (78 for a bad configuration given to ``roomd serve``), never a
traceback.
"""

from __future__ import annotations

import os
import sys

from ._cli import cli

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> None:
    """Run the CLI and exit with its status."""
    try:
        cli.main(args=argv, prog_name="roomd")
    except BrokenPipeError:
        # The reader of our stdout went away (``roomd tail | head``): not an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        sys.exit(0)
