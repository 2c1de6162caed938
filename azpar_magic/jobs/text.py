"""Short human-readable forms shared by the views and by messages from lower layers.

An item in an error message and a duration in a timeout message read the same whether the panel, the
text line or a backend writes them; the forms live here, below all of those.
"""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration", "short_repr", "DURATION_FORMS"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_FORMS = "90s, 10m, 1.5h, 2d, 1h30m, 1:30:00"  # what parse_duration takes, as messages name it
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_COMPOUND = re.compile(rf"(?:\s*{_NUMBER}\s*[dhms])+\s*")
_COMPOUND_PART = re.compile(rf"({_NUMBER})\s*([dhms])")
_CLOCK = re.compile(rf"(?:(\d+):)?(\d+):({_NUMBER})")


def short_repr(obj: object, limit: int = 80) -> str:
    """``repr(obj)``, cut to ``limit`` characters with an ellipsis."""
    text = repr(obj)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_duration(seconds: float | None) -> str:
    """Seconds as "4.2 s", "3 min 07 s" or "2 h 05 min" ("?" when unknown)."""
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds + 0.5), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``1.5h`` or ``2d``, units together from the largest (``1h30m``,
    ``2m 30s``), or a clock's ``1:30:00`` or ``30:00`` (hours, minutes and seconds, as Slurm's ``--time`` writes
    them) (ValueError otherwise): the magic's ``--timeout`` and the Python API's ``timeout="10m"`` read the
    same forms. (``1h30m`` was refused, though a user writing durations by hand writes it so.)"""
    word = text.strip().lower()
    sign, unsigned = (
        (-1, word[1:]) if word[:1] == "-" else (1, word[1:] if word[:1] == "+" else word)
    )  # -5s: out of range
    clock = _CLOCK.fullmatch(unsigned)
    if clock:
        hours, minutes, seconds = clock.groups()
        if (hours is not None and int(minutes) >= 60) or float(seconds) >= 60:
            raise ValueError(f"{text!r} is not a clock's hours:minutes:seconds")
        return sign * (int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds))
    if _COMPOUND.fullmatch(unsigned):
        parts = _COMPOUND_PART.findall(unsigned)
        units = [unit for _, unit in parts]
        if units != sorted(set(units), key=lambda unit: -_UNITS[unit]):  # 30m1h, 1h1h: not what was meant
            raise ValueError(f"{text!r} gives its units twice or out of order (days, hours, minutes, seconds)")
        return sign * sum(float(number) * _UNITS[unit] for number, unit in parts)
    return float(word)
