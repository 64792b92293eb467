"""Command-line mistakes caught by Typer itself, worded as cnnbp's own: one ``error:`` line, exit 2.

Typer (and the click inside it) reports a bad option value, an unknown option or command, or a missing
argument with a usage line and a boxed panel.  :func:`usage_message` turns such an exception into the
one-line message every other cnnbp error has, naming the option and what was wrong with the value as
typed (``--show: 'delta' is not one of summary, deltas, grads, weights, metrics (did you mean
'deltas'?)``).  :func:`plain_flags` keeps Typer's help from printing a ``<bool>`` type after flags.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from enum import Enum
from typing import Any

try:  # Typer ≥ 0.20 carries its own click (the click package need not be installed); its Exit and
    # Abort are typer.Exit and typer.Abort
    from typer._click.exceptions import (
        BadOptionUsage,
        BadParameter,
        ClickException,
        MissingParameter,
        NoSuchOption,
        UsageError,
    )

    _CLICK_EXITS: tuple[type[BaseException], ...] = ()
except ImportError:  # pragma: no cover - Typer on the click package
    from click.exceptions import (
        Abort,
        BadOptionUsage,
        BadParameter,
        ClickException,
        Exit,
        MissingParameter,
        NoSuchOption,
        UsageError,
    )

    _CLICK_EXITS = (Exit, Abort)

#: how Typer and its click end a command on purpose (exit codes, aborts, their own messages)
DELIBERATE_EXITS = (*_CLICK_EXITS, ClickException)

__all__ = ["DELIBERATE_EXITS", "UsageError", "is_help_request", "plain_flags", "usage_message"]


def is_help_request(e: Exception) -> bool:
    """The 'error' that prints the help of a command given no arguments (shown as Typer shows it)."""
    return type(e).__name__ == "NoArgsIsHelpError"


def _name(param: Any) -> str:
    """The option as typed (its long form), or an argument's metavar."""
    opts = list(getattr(param, "opts", []) or [])
    if getattr(param, "param_type_name", "") == "argument":
        return str(getattr(param, "metavar", None) or param.name).upper()
    longs = [o for o in opts if o.startswith("--")]
    return (longs or opts or [str(param.name)])[0]


def _typed(param: Any, argv: Sequence[str]) -> str | None:
    """The value the user gave ``param`` on the command line (the last one), if it can be found."""
    opts = set(getattr(param, "opts", []) or [])
    value = None
    for i, word in enumerate(argv):
        if word in opts and i + 1 < len(argv):
            value = argv[i + 1]
        elif "=" in word and word.split("=", 1)[0] in opts:
            value = word.split("=", 1)[1]
    return value


def _choices(param: Any) -> list[str]:
    desc = getattr(param, "type_descriptor", None)
    found = getattr(desc, "choices", None) or getattr(getattr(param, "type", None), "choices", None) or ()
    return [c.value if isinstance(c, Enum) else str(c) for c in found]


def _kind(param: Any) -> Any:
    desc = getattr(param, "type_descriptor", None)
    return getattr(desc, "annotation", None)


def _sentence(text: str) -> str:
    """A click message as the tail of one line: no final period, a lower-case start."""
    text = " ".join(str(text).split()).rstrip(".")
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def usage_message(e: UsageError, argv: Sequence[str] = ()) -> str:
    """One line (without ``error:``) for a usage error, ``argv`` being the words of the command line."""
    param = getattr(e, "param", None)
    if isinstance(e, MissingParameter) and param is not None:
        what = "argument" if getattr(param, "param_type_name", "") == "argument" else "option"
        return f"{_name(param)}: missing {what} (see --help)"
    if isinstance(e, BadParameter) and param is not None:
        name, value = _name(param), _typed(param, argv)
        choices = _choices(param)
        if choices and value is not None and value not in choices:
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{name}: {value!r} is not one of {', '.join(choices)}{hint}"
        kind = _kind(param)
        if value is not None and kind in (int, float) and not _parses(value, kind):
            return f"{name}: expected {'an integer' if kind is int else 'a number'}, got {value!r}"
        got = f", got {value!r}" if value is not None and value not in e.message else ""
        return f"{name}: {_sentence(e.message)}{got}"
    if isinstance(e, NoSuchOption):
        near = list(getattr(e, "possibilities", None) or [])
        hint = f" (did you mean {', '.join(near)}?)" if near else " (see --help)"
        return f"{e.option_name}: no such option{hint}"
    if isinstance(e, BadOptionUsage):
        needs = "requires an argument" in e.message  # "Option '--epochs' requires an argument."
        return f"{e.option_name}: " + ("needs a value" if needs else _sentence(e.message))
    text = _sentence(e.format_message())
    # "No such command 'x'. Did you mean 'y'?"
    guess = re.fullmatch(r"(.*?)\. [Dd]id you mean (.*?)\??", text)
    return f"{guess.group(1)} (did you mean {guess.group(2)}?)" if guess else text


def _parses(value: str, kind: type) -> bool:
    try:
        kind(value)
    except ValueError:
        return False
    return True


def plain_flags(params: Sequence[Any]) -> None:
    """Give every boolean flag an empty metavar, so Typer's help shows no ``<bool>`` type after it."""
    for param in params:
        if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
            param.metavar = ""
