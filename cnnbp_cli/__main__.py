"""``python -m cnnbp`` and the ``cnnbp`` command (the console script runs :func:`main` of this module).

The command's modules take about half a second to load.  This module imports nothing heavy before
them, and a Ctrl-C in that time is held until they are loaded, then ends the command with
``interrupted`` and exit 130: raised inside the import machinery, a KeyboardInterrupt can surface as
a traceback that no ``except`` catches (Python's "Exception ignored in ... _get_module_lock").
"""

import signal
import sys


def main() -> None:
    """Load the command line and run it (:func:`cnnbp.app.main`)."""
    held: list[int] = []
    try:
        before = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    except ValueError:  # not the main thread: nothing to hold
        before = None
    try:
        from cnnbp.app import main as run
    except KeyboardInterrupt:  # a Ctrl-C that arrived before the handler above was in place
        held.append(signal.SIGINT)
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)
    if held:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130)
    run()


if __name__ == "__main__":
    main()
