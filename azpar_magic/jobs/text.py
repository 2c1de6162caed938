"""Short human-readable forms shared by the views and by messages from lower layers.

An item in an error message and a duration in a timeout message read the same whether the panel, the
text line or a backend writes them; the forms live here, below all of those.
"""

from __future__ import annotations

__all__ = ["format_duration", "parse_duration", "short_repr", "DURATION_FORMS"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_FORMS = "90s, 10m, 1.5h, 2d"  # what parse_duration takes, as messages name it


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
    """Seconds from ``90``, ``90s``, ``10m``, ``1.5h`` or ``2d`` (ValueError otherwise): the magic's ``--timeout``
    and the Python API's ``timeout="10m"`` read the same forms."""
    word = text.strip().lower()
    scale = _UNITS.get(word[-1:], None) if word else None
    return float(word[:-1] if scale else word) * (scale or 1)
