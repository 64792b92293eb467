"""``python -m cnnbp`` and the ``cnnbp`` command (the console script runs :func:`main` of this module).

The command's modules take about half a second to load.  This module imports nothing before them, so
a Ctrl-C in that time ends the command with ``interrupted`` and exit 130, not with a traceback.
"""

import sys


def main() -> None:
    """Load the command line and run it (:func:`cnnbp.app.main`)."""
    try:
        from cnnbp.app import main as run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    run()


if __name__ == "__main__":
    main()
