"""How the package's errors reach the user of a magic: as IPython's ``UsageError``, one line without a traceback.

Every command catches the error kinds it expects around the call that raises them and says them through
``usage_errors``, so the wording rule lives here once: a ``KeyError`` (a job id or name that names nothing) says
its argument without the quotes ``str()`` adds, everything else says ``str(exc)``. A command adds its own frame
around that message (``"{}. Nothing was deleted."``) with ``say``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from IPython.core.error import UsageError

from ..errors import ConfigError, IterationError, StoreError

Say = str | Callable[[BaseException], str]
Kinds = type[BaseException] | tuple[type[BaseException], ...]

LOOKUP: tuple[type[BaseException], ...] = (KeyError, StoreError)
"""A job that cannot be found: no such id or name (KeyError), or a job store that cannot be read."""

PASSING: tuple[type[BaseException], ...] = (UsageError, IterationError)
"""Raised as they are: a UsageError already says itself, and a failed iteration shows its remote traceback."""

SETTINGS: tuple[type[BaseException], ...] = (ConfigError, ValueError)
"""A profile or setting that cannot be used as given (a ``ConfigError`` is a ``ValueError`` too)."""


def message(exc: BaseException) -> str:
    """What the user reads for ``exc``: a KeyError's own text (its ``str()`` would quote it), else ``str(exc)``."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    return str(exc)


def usage_error(exc: BaseException, say: Say = "{}") -> UsageError:
    """``exc`` as a UsageError: ``say`` is a format string for ``message(exc)`` or a function of ``exc``.
    A message that already ends with the sentence ``say`` closes with (``"{} Nothing was submitted."``)
    does not get it twice: `--name 'a b'` said "Nothing was submitted. Nothing was submitted."."""
    if callable(say):
        return UsageError(say(exc))
    said = message(exc)
    before, _, after = say.partition("{}")
    closing = after.lstrip(". ")
    if closing and said.endswith(closing):
        return UsageError(before + said)
    return UsageError(say.format(said))


@contextmanager
def usage_errors(kinds: Kinds, say: Say = "{}") -> Iterator[None]:
    """Raise the errors of ``kinds`` raised inside as UsageError (``from None``: the user's input is the cause,
    not the stack). The ``PASSING`` ones pass unchanged, so these nest: the inner block's kinds are tried first,
    even when an outer one catches ``Exception``."""
    try:
        yield
    except PASSING:
        raise
    except kinds as exc:
        raise usage_error(exc, say) from None
