"""What Batch and Storage said when they refused a call: in one line a user can act on
(``describe``), and as the package's own error at the backend's boundary (``translate``).

Batch's error body carries a code, a message and ``values`` (``PropertyName``, ``Reason``...),
which the azure-batch SDK exposes as ``exc.error.details``; the message alone ("The value
provided for one of the properties in the request body is invalid.") does not say which
property or why, so the details are kept. ``PropertyValue`` is left out: it repeats what was
sent, which may be long."""

from __future__ import annotations

from typing import Any

from ...errors import AzureServiceError

_SKIPPED_DETAILS = {"PropertyValue"}


def describe(exc: BaseException) -> str:
    """``"Code: first line of the message (PropertyName: x; Reason: y)"``, or the exception's
    first line when the service sent no error body (a connection that failed)."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = (getattr(error, "message", None) or str(exc) or type(exc).__name__).strip()
    message = message.splitlines()[0] if message else type(exc).__name__
    details = [
        f"{getattr(d, 'code', '')}: {str(getattr(d, 'message', '') or '').strip()}"
        for d in _details(error)
        if getattr(d, "code", None) not in _SKIPPED_DETAILS
    ]
    text = f"{code}: {message}" if code else message
    return text + (f" ({'; '.join(details)})" if details else "")


def translate(exc: BaseException, what: str = "", *, message: str | None = None) -> AzureServiceError:
    """The package's error for an Azure SDK exception, to raise (``from None``) where the
    backend hands control back: ``"WHAT: describe(exc)"`` (or ``message`` when the caller
    says it better, e.g. naming the role a 403 needs), carrying the service's error code, the
    HTTP status and Batch's PropertyName and Reason details for code that wants them."""
    text = message if message is not None else (f"{what}: {describe(exc)}" if what else describe(exc))
    out = AzureServiceError(text)
    error = getattr(exc, "error", None)
    out.code = getattr(error, "code", None) or getattr(exc, "error_code", None)
    out.status = getattr(exc, "status_code", None)
    values = {getattr(d, "code", None): str(getattr(d, "message", "") or "").strip() for d in _details(error)}
    out.property_name, out.reason = values.get("PropertyName"), values.get("Reason")
    return out


def _details(error: Any) -> list[Any]:
    return [d for d in getattr(error, "details", None) or [] if getattr(d, "code", None)]
