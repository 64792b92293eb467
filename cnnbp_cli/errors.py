"""The one error type for user mistakes: a bad config, a bad file, a bad option."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix; the CLI prints it on one line and exits 2.

    The message starts with the place (``model.layers[2].kernel``, a file path)
    followed by a colon and the problem.
    """

    exit_code = 2
