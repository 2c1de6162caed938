"""Small shared helpers: the service's timestamp and ISO 8601 duration formats, ETags, ids."""
from __future__ import annotations

import datetime as _dt
import itertools
import re
import threading

_UTC = _dt.timezone.utc
_etag_counter = itertools.count(0x8D3D623CE295629)
_etag_lock = threading.Lock()


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(_UTC)


def fmt_time(t: _dt.datetime | None) -> str | None:
    """The service writes UTC times with 7 fractional digits and a Z suffix."""
    if t is None:
        return None
    t = t.astimezone(_UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond:06d}0Z"


def http_date(t: _dt.datetime) -> str:
    return t.astimezone(_UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


def new_etag() -> str:
    with _etag_lock:
        return "0x%X" % next(_etag_counter)


_DURATION = re.compile(
    r"^P(?:(?P<d>\d+(?:\.\d+)?)D)?(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$")


def parse_duration(text: str) -> float:
    """Seconds in an ISO 8601 duration such as P1D, PT1H30M or PT0.5S (ValueError otherwise)."""
    m = _DURATION.match(text or "")
    if not m or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    parts = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def fmt_duration(seconds: float) -> str:
    days, rem = divmod(seconds, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    out = "P"
    if days:
        out += f"{int(days)}D"
    out += "T"
    if hours:
        out += f"{int(hours)}H"
    if minutes:
        out += f"{int(minutes)}M"
    if secs or out.endswith("T"):
        out += (f"{secs:.3f}".rstrip("0").rstrip(".") if secs != int(secs) else str(int(secs))) + "S"
    return out.rstrip("T") if out != "PT" else "PT0S"


#: TimeSpan.MaxValue as the service writes it for "unlimited" constraints.
MAX_DURATION = "P10675199DT2H48M5.4775807S"

ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
