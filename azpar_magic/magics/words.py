"""The one reader of the words after ``%azpar COMMAND``: the shared grammar ``[JOB ...] [-o NAME] [--OPTION VALUE]
[flags]``, and the small checks every command's words share (a variable name, a value without its quotes)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from IPython.core.error import UsageError

from ..errors import did_you_mean
from ..run.parsing import is_variable_name


@dataclass
class Words:
    """A command's words, read: the plain words in order (job ids, iteration numbers, actions), the ``-o`` name,
    each ``--OPTION VALUE`` given, and the flags given."""

    rest: list[str]
    output: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)

    def option(self, name: str) -> str | None:
        return self.options.get(name)


def read_words(
    words: list[str], usage: str, *, flags: Iterable[str] = (), options: Iterable[str] = (), output: bool = False
) -> Words:
    """Read ``words`` by the shared grammar; ``usage`` is the command's usage line, shown with every refusal.

    ``options`` take the next word as their value (the first occurrence; a missing value is refused with the
    usage line); with ``output``, ``-o`` takes a variable name. A word starting with ``-`` that is none of these
    nor one of ``flags`` is refused by name (``unknown option '--x'; usage: ...``), except a negative number,
    which is a plain word (``%azpar logs JOB -1``, ``%azpar pool resize -1 2`` reach their own checks)."""
    options = tuple(options)
    values, words = _take_options(words, usage, options)
    known = set(flags)
    read = Words([], options=values)
    i = 0
    while i < len(words):
        word = words[i]
        if output and word == "-o":
            if i + 1 >= len(words):
                raise UsageError(f"-o needs a variable name; {usage}")
            variable(words[i + 1], f" {usage[:1].upper()}{usage[1:]}")  # naming what was given ('xs[0]', 'for')
            read.output = words[i + 1]
            i += 2
            continue
        if word.startswith("-") and not _is_number(word):
            if word not in known:
                raise UsageError(f"unknown option {word!r}{did_you_mean(word, [*known, *options])}; {usage}")
            read.flags.add(word)
        else:
            read.rest.append(word)
        i += 1
    return read


def _is_number(word: str) -> bool:
    return re.fullmatch(r"-\d+(\.\d+)?", word) is not None


def _take_options(words: list[str], usage: str, names: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """Each ``NAME VALUE`` of ``names`` in ``words`` (the first occurrence, anywhere; the value is the next word
    whatever it is), and the words without them; a name without a value is refused with ``usage``."""
    values: dict[str, str] = {}
    for name in names:
        if name in words:
            at = words.index(name)
            if at + 1 >= len(words):
                raise UsageError(usage)
            values[name] = words[at + 1]
            words = words[:at] + words[at + 2 :]
    return values, words


def variable(name: str, after: str = "") -> str:
    """The -o name a result is bound to; ``class`` or ``None`` would pass ``str.isidentifier``."""
    if not is_variable_name(name):
        raise UsageError(
            f"-o needs a variable name, got {name!r}"
            + (" (a Python keyword)" if name.isidentifier() else "")
            + "."
            + after
        )
    return name


def unquote(text: str) -> str:
    """IPython's option splitter keeps the quotes around a value (``'data/{i}.csv'``),
    which are needed to protect globs, braces, spaces and commas; the value is what is
    inside them."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text
