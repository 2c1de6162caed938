"""What Batch and Storage said when they refused a call, in one line a user can act on.

Batch's error body carries a code, a message and ``values`` (``PropertyName``, ``Reason``...),
which the azure-batch SDK exposes as ``exc.error.details``; the message alone ("The value
provided for one of the properties in the request body is invalid.") does not say which
property or why, so the details are kept. ``PropertyValue`` is left out: it repeats what was
sent, which may be long."""

from __future__ import annotations

_SKIPPED_DETAILS = {"PropertyValue"}


def describe(exc: BaseException) -> str:
    """``"Code: first line of the message (PropertyName: x; Reason: y)"``, or the exception's
    first line when the service sent no error body (a connection that failed)."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = (getattr(error, "message", None) or str(exc) or type(exc).__name__).strip()
    message = message.splitlines()[0] if message else type(exc).__name__
    details = [f"{getattr(d, 'code', '')}: {str(getattr(d, 'message', '') or '').strip()}"
               for d in getattr(error, "details", None) or []
               if getattr(d, "code", None) and getattr(d, "code", None) not in _SKIPPED_DETAILS]
    text = f"{code}: {message}" if code else message
    return text + (f" ({'; '.join(details)})" if details else "")
