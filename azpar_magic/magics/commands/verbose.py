"""``%azpar verbose [on|info|http|off]``: what azpar (and at ``http`` the Azure SDK) says about its work on the
notebook's stderr, as a log; alone, which level is in effect. The switch itself is ``verbosity.py``."""

from __future__ import annotations

from IPython.core.error import UsageError

from ... import verbosity
from ..context import MagicContext

_SAID = {
    "off": "azpar: verbose off (only results, progress and errors are shown)",
    "info": "azpar: verbose info: what azpar does (jobs submitted, tasks added, pool changes, retries, files moved) "
    "goes to stderr",
    "debug": "azpar: verbose on: what azpar does and decides, in detail, goes to stderr",
    "http": "azpar: verbose http: azpar's log and each HTTP request and response of the Azure SDK go to stderr "
    "(signatures, keys and authorization headers redacted)",
}


def verbose(context: MagicContext, words: list[str], usage: str) -> None:
    """Say the level, or set it."""
    if not words:
        print(_SAID[verbosity.level()])
        return
    if len(words) != 1:
        raise UsageError(usage)
    try:
        level = verbosity.set_level(words[0])
    except ValueError:
        raise UsageError(usage) from None
    print(_SAID[level])
